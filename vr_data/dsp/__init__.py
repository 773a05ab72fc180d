"""Signal processing: the store's STFT and its inverse (`stft`), their streaming versions and a
streaming resampler (`streaming`: imported on its own, so the mixer's workers skip scipy.fft and
soxr), and signal metrics (`metrics`)."""

from vr_data.dsp.metrics import snr_db
from vr_data.dsp.stft import StftConfig, istft, stft

__all__ = ["StftConfig", "istft", "snr_db", "stft"]
