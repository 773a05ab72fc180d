"""Signal processing: the store's STFT and its inverse (`stft`), and signal metrics (`metrics`)."""

from vr_data.dsp.metrics import snr_db
from vr_data.dsp.stft import StftConfig, istft, stft

__all__ = ["StftConfig", "istft", "snr_db", "stft"]
