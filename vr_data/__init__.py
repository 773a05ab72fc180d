"""vr_data: audio libraries -> manifests -> spectrogram stores -> training streams.

No torch import at module import time, except in the PyTorch dataset adapter (`vr_data.mixer`).
"""

__version__ = "0.1.0"

from vr_data.errors import VRDataError  # noqa: E402

__all__ = ["VRDataError", "__version__"]
