"""A small deterministic synthetic corpus, so every command can run without downloaded data.

Instrumentals: chord progressions of harmonic tones, a bass line, kick/snare/hi-hat percussion,
panned in stereo. Vocals: a voiced source (harmonics of a melodic f0 with vibrato) shaped by
vowel formants, phrased with rests and breaths. Mixtures are instrumental + vocal, sample-exact.
All functions return float32 `(2, samples)` in [-1, 1] and depend only on their seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vr_data.audio import write_audio

# Vowel formants (Hz) and bandwidths, after Peterson & Barney averages.
_VOWELS = {
    "a": ((730, 1090, 2440), (90, 110, 170)),
    "e": ((530, 1840, 2480), (70, 100, 160)),
    "i": ((270, 2290, 3010), (60, 90, 150)),
    "o": ((570, 840, 2410), (80, 100, 160)),
    "u": ((300, 870, 2240), (60, 90, 150)),
}
_SCALE = np.array([0, 2, 4, 5, 7, 9, 11])  # major scale, semitones


def _midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12.0)


def instrumental_track(seconds: float, sample_rate: int = 44100, seed: int = 0) -> np.ndarray:
    """Chords + bass + drums, stereo float32 `(2, samples)`, peak about -3 dBFS."""
    rng = np.random.default_rng(seed)
    samples = int(seconds * sample_rate)
    t = np.arange(samples) / sample_rate
    out = np.zeros((2, samples), dtype=np.float64)
    bpm = rng.uniform(90, 140)
    beat = 60.0 / bpm
    key = 48 + int(rng.integers(0, 12))
    degrees = rng.choice([0, 3, 4, 5], size=4, replace=True)
    degrees[0] = 0
    bar = 4 * beat
    n_bars = int(np.ceil(seconds / bar))
    brightness = rng.uniform(0.5, 0.9)
    for b in range(n_bars):
        degree = int(degrees[b % 4])
        root = key + _SCALE[degree % 7]
        chord = [root, key + _SCALE[(degree + 2) % 7] + 12 * ((degree + 2) // 7),
                 key + _SCALE[(degree + 4) % 7] + 12 * ((degree + 4) // 7)]
        start = b * bar
        # Sustained chord (pad) panned left-ish, re-struck every half bar.
        for strike in range(2):
            s0 = start + strike * 2 * beat
            seg = (t >= s0) & (t < s0 + 2 * beat)
            if not seg.any():
                continue
            local = t[seg] - s0
            envelope = np.minimum(local / 0.02, 1.0) * np.exp(-local * 1.2)
            tone = np.zeros(seg.sum())
            for note in chord:
                f0 = _midi_hz(note + 12)
                for k in range(1, 9):
                    if f0 * k > sample_rate / 2.2:
                        break
                    tone += (brightness ** (k - 1)) / k * np.sin(2 * np.pi * f0 * k * local + k)
            out[0, seg] += 0.10 * envelope * tone
            out[1, seg] += 0.06 * envelope * tone
        # Bass: root on every beat, centred.
        for beat_index in range(4):
            s0 = start + beat_index * beat
            seg = (t >= s0) & (t < s0 + beat)
            if not seg.any():
                continue
            local = t[seg] - s0
            f0 = _midi_hz(root - 12)
            envelope = np.minimum(local / 0.01, 1.0) * np.exp(-local * 3.0)
            bass = np.sin(2 * np.pi * f0 * local) + 0.3 * np.sin(4 * np.pi * f0 * local)
            out[:, seg] += 0.18 * envelope * bass
    # Drums on a grid: kick on 1 and 3, snare on 2 and 4, hats on eighths.
    n_eighths = int(seconds / (beat / 2)) + 1
    for e in range(n_eighths):
        s0 = e * beat / 2
        i0 = int(s0 * sample_rate)
        if i0 >= samples:
            break
        length = min(int(0.25 * sample_rate), samples - i0)
        local = np.arange(length) / sample_rate
        if e % 4 == 0:
            sweep = 2 * np.pi * (45 * local + (120 - 45) * (1 - np.exp(-local * 30)) / 30)
            out[:, i0:i0 + length] += 0.45 * np.sin(sweep) * np.exp(-local * 12)
        elif e % 4 == 2:
            noise = rng.standard_normal(length)
            body = np.sin(2 * np.pi * 190 * local)
            out[:, i0:i0 + length] += 0.18 * (noise * np.exp(-local * 18) + body * np.exp(-local * 25))
        hat_length = min(int(0.05 * sample_rate), samples - i0)
        hat = np.diff(rng.standard_normal(hat_length + 1)) * np.exp(-np.arange(hat_length) / sample_rate * 80)
        out[1, i0:i0 + hat_length] += 0.05 * hat
        out[0, i0:i0 + hat_length] += 0.03 * hat
    return _normalise(out, rng.uniform(-6, -2))


def vocal_track(seconds: float, sample_rate: int = 44100, seed: int = 0, rest_fraction: float = 0.25) -> np.ndarray:
    """A sung melody: voiced harmonics with vibrato through vowel formants; stereo `(2, samples)`."""
    rng = np.random.default_rng(seed + 10_000)
    samples = int(seconds * sample_rate)
    t = np.arange(samples) / sample_rate
    base = 57 + int(rng.integers(0, 10))
    f0 = np.zeros(samples)
    amplitude = np.zeros(samples)
    vowel_index = np.zeros(samples, dtype=int)
    position = 0.0
    vowels = list(_VOWELS)
    while position < seconds:
        length = rng.uniform(0.25, 0.9)
        seg = (t >= position) & (t < position + length)
        if rng.random() > rest_fraction:
            note = base + _SCALE[int(rng.integers(0, 7))] + 12 * int(rng.integers(-1, 1))
            local = t[seg] - position
            vibrato = 0.4 * np.sin(2 * np.pi * rng.uniform(4.5, 6.5) * local) * np.minimum(local / 0.3, 1)
            f0[seg] = _midi_hz(note + vibrato) if np.ndim(vibrato) == 0 else 440 * 2 ** ((note + vibrato - 69) / 12)
            attack = np.minimum(local / 0.04, 1.0)
            release = np.minimum((length - local) / 0.06, 1.0)
            amplitude[seg] = attack * release * rng.uniform(0.6, 1.0)
            vowel_index[seg] = int(rng.integers(0, len(vowels)))
        position += length
    # Glide between notes so f0 is continuous where voiced.
    voiced = amplitude > 0
    f0 = np.where(voiced, f0, np.interp(t, t[voiced], f0[voiced]) if voiced.any() else 200.0)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = np.zeros(samples)
    centres = np.array([_VOWELS[name][0] for name in vowels], dtype=float)[vowel_index].T  # (3, samples)
    widths = np.array([_VOWELS[name][1] for name in vowels], dtype=float)[vowel_index].T
    for k in range(1, 48):
        harmonic_hz = k * f0
        if np.min(harmonic_hz) > sample_rate / 2.2:
            break
        gain = _formant_gain(harmonic_hz, centres, widths) * (harmonic_hz < sample_rate / 2.2)
        voice += gain / k**0.7 * np.sin(k * phase)
    breath = np.convolve(rng.standard_normal(samples), np.ones(4) / 4, mode="same") * 0.02
    voice = amplitude * voice + breath * (amplitude > 0)
    pan = rng.uniform(-0.15, 0.15)
    stereo = np.stack([voice * (1 - pan), voice * (1 + pan)])
    return _normalise(stereo, rng.uniform(-8, -3))


def _formant_gain(frequency: np.ndarray, formants, bandwidths) -> np.ndarray:
    gain = np.zeros_like(frequency)
    for centre, width, weight in zip(formants, bandwidths, (1.0, 0.6, 0.35)):
        gain += weight / (1.0 + ((frequency - centre) / width) ** 2)
    return gain


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
        table.append(crc)
    return table


_OGG_CRC = _crc_table()


def fix_ogg_serial(path: Path, serial: int = 0x56520001) -> None:
    """Give every Ogg page of `path` the same stream serial (and a recomputed CRC).

    libsndfile picks a random serial per file, so the same audio would give other bytes (and
    another sha256) on every run; the demo corpus must be byte-for-byte deterministic.
    """
    data = bytearray(Path(path).read_bytes())
    position = 0
    while position < len(data):
        if data[position:position + 4] != b"OggS":
            raise ValueError(f"{path}: not an Ogg page at byte {position}")
        segments = data[position + 26]
        body = sum(data[position + 27:position + 27 + segments])
        end = position + 27 + segments + body
        data[position + 14:position + 18] = serial.to_bytes(4, "little")
        data[position + 22:position + 26] = b"\0\0\0\0"
        crc = 0
        for byte in data[position:end]:
            crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC[((crc >> 24) & 0xFF) ^ byte]
        data[position + 22:position + 26] = crc.to_bytes(4, "little")
        position = end
    Path(path).write_bytes(bytes(data))


def _write(path: Path, audio: np.ndarray, rate: int) -> None:
    write_audio(path, audio, rate)
    if path.suffix == ".ogg":
        fix_ogg_serial(path)


def _normalise(audio: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = np.max(np.abs(audio)) or 1.0
    return (audio / peak * 10 ** (peak_dbfs / 20)).astype(np.float32)


# name, mixture file, instrumental file, format rate, mono?
_PAIRS = [
    ("Aurora Lane - Glass Harbour (Mix).flac", "Aurora Lane - Glass Harbour (Instrumental).flac", 44100, False),
    ("Aurora Lane - Night Ferry_mix.wav", "Aurora Lane - Night Ferry_inst.wav", 44100, False),
    ("Brass Comet - Orbit.ogg", "Brass Comet - Orbit.ogg", 48000, False),
    ("Brass Comet - Low Tide_mix.mp3", "Brass Comet - Low Tide_inst.mp3", 44100, False),
    ("Cedar Avenue - Paper Kites [Mix].wav", "Cedar Avenue - Paper Kites [Instrumental].wav", 32000, True),
    ("Cedar Avenue - Slow Lights.flac", "Cedar Avenue - Slow Lights.flac", 22050, False),
]


def write_demo_corpus(directory: str | Path, seconds: float = 20.0, seed: int = 2026) -> dict[str, Path]:
    """Write the demo corpus under `directory` and return the library roots by layout.

    Layout: `pairs/{mixtures,instruments}/` (names that differ by usual suffixes, several formats,
    rates 22.05-48 kHz, one mono pair), `vocals/`, `instrumentals/`, `pretrain/`. Two deliberate
    bad inputs show how rejects are reported: a mixture without instrumental and a corrupt file.
    """
    directory = Path(directory)
    roots = {name: directory / name for name in ("pairs", "vocals", "instrumentals", "pretrain")}
    for index, (mixture_name, instrumental_name, rate, mono) in enumerate(_PAIRS):
        instrumental = instrumental_track(seconds, rate, seed + index)
        vocal = vocal_track(seconds, rate, seed + index)
        mixture = np.clip(instrumental + vocal, -1, 1)
        if mono:
            instrumental, mixture = instrumental.mean(0, keepdims=True), mixture.mean(0, keepdims=True)
        _write(roots["pairs"] / "mixtures" / mixture_name, mixture, rate)
        _write(roots["pairs"] / "instruments" / instrumental_name, instrumental, rate)
    orphan = instrumental_track(4.0, 44100, seed + 99) + vocal_track(4.0, 44100, seed + 99)
    _write(roots["pairs"] / "mixtures" / "Orphan - No Partner_mix.wav", np.clip(orphan, -1, 1), 44100)
    for index in range(6):
        rate = (44100, 48000, 32000)[index % 3]
        fmt = ("wav", "flac", "ogg")[index % 3]
        _write(roots["vocals"] / f"take_{index + 1:02d}.{fmt}", vocal_track(seconds * 0.6, rate, seed + 100 + index), rate)
        _write(roots["instrumentals"] / f"beat_{index + 1:02d}.{fmt}",
                    instrumental_track(seconds * 0.75, rate, seed + 200 + index), rate)
    (roots["instrumentals"] / "beat_corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")
    for index in range(4):
        rate = 44100
        mix = instrumental_track(seconds * 0.75, rate, seed + 300 + index)
        if index % 2 == 0:
            mix = np.clip(mix + vocal_track(seconds * 0.75, rate, seed + 300 + index), -1, 1)
        _write(roots["pretrain"] / f"radio_{index + 1:02d}.flac", mix, rate)
    return roots
