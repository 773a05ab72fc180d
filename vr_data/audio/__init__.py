"""Audio: decoding and resampling of every library's files (`decode`: soundfile + soxr) and level
measures of decoded audio (`loudness`: BS.1770-4 integrated loudness, peak, clipping, silence).
"""

from vr_data.audio.decode import AUDIO_EXTENSIONS, DEFAULT_SAMPLE_RATE, AudioInfo, load_audio, probe, write_audio

__all__ = ["AUDIO_EXTENSIONS", "DEFAULT_SAMPLE_RATE", "AudioInfo", "load_audio", "probe", "write_audio"]
