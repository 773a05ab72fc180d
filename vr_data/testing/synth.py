"""Synthetic music-like stereo audio for tests, benchmarks and demo corpora.

Real libraries cannot ship with the project, but codec and mixer checks need audio whose
spectra look like music: harmonic notes with decaying partials, coloured (pink) noise,
percussion transients, and the awkward cases of real tracks - quiet passages, fades,
near-silence, digital silence, and loud, soft-clipped masters. Everything is a pure function of
`(seconds, sample_rate, seed, style)`.
"""

from __future__ import annotations

import numpy as np

STYLES = ("mix", "loud", "quiet", "fade", "sparse")


def music_like(seconds: float, sample_rate: int = 44100, seed: int = 0, style: str = "mix") -> np.ndarray:
    """Float32 stereo `(2, samples)` of `seconds` music-like audio, peak at most 1.

    `style`: "mix" - a song-like track with a quiet intro, a near-silent break and a fade-out;
    "loud" - a dense, soft-clipped master near full scale; "quiet" - everything about 40 dB
    down; "fade" - long fade-in and fade-out to silence; "sparse" - isolated notes and hits
    separated by near-silence and digital silence (as vocal stems are).
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    rng = np.random.default_rng(seed)
    samples = int(round(seconds * sample_rate))
    time = np.arange(samples) / sample_rate
    density = {"mix": 1.0, "loud": 1.6, "quiet": 1.0, "fade": 1.0, "sparse": 0.25}[style]

    music = _notes(rng, samples, sample_rate, density)
    music += _percussion(rng, samples, sample_rate, density)
    music += 0.02 * _pink_noise(rng, samples)
    music /= max(float(np.max(np.abs(music))), 1e-9)

    if style == "loud":
        music = np.tanh(2.5 * music) / np.tanh(2.5)  # a limiter's soft clipping, peak 1
    elif style == "quiet":
        music *= 10 ** (-40 / 20)
    elif style == "fade":
        music *= _fade_envelope(time, seconds, fade_in=0.35 * seconds, fade_out=0.35 * seconds)
    elif style == "sparse":
        gate = _gate(rng, samples, sample_rate)
        music = music * gate + 10 ** (-80 / 20) * _pink_noise(rng, samples) * (gate < 1)
        music[:, : samples // 10] = 0.0  # digital silence before the first entry, as in stems
    else:  # mix: quiet intro, a near-silent break, a fade-out
        envelope = np.ones(samples)
        envelope[: samples // 6] = 10 ** (-25 / 20)
        start, stop = int(0.5 * samples), int(0.55 * samples)
        envelope[start:stop] = 10 ** (-65 / 20)
        envelope *= _fade_envelope(time, seconds, fade_in=0.0, fade_out=0.2 * seconds)
        music *= _smooth(envelope, sample_rate // 50)
    return (0.9 * music).astype(np.float32) if style != "loud" else music.astype(np.float32)


def _notes(rng: np.random.Generator, samples: int, sample_rate: int, density: float) -> np.ndarray:
    """Overlapping harmonic notes, partial k at amplitude k^-1.5 with its own decay, panned."""
    music = np.zeros((2, samples))
    seconds = samples / sample_rate
    count = max(1, int(density * 2.5 * seconds))
    for _ in range(count):
        start = int(rng.uniform(0, max(samples - 1, 1)))
        length = min(int(rng.uniform(0.2, 2.0) * sample_rate), samples - start)
        if length <= 0:
            continue
        pitch = 440.0 * 2 ** ((rng.integers(36, 84) - 69) / 12)
        time = np.arange(length) / sample_rate
        vibrato = 1 + 0.003 * np.sin(2 * np.pi * rng.uniform(4, 6) * time)
        phase = 2 * np.pi * pitch * np.cumsum(vibrato) / sample_rate
        note = np.zeros(length)
        for partial in range(1, 16):
            if partial * pitch >= 0.45 * sample_rate:
                break
            decay = np.exp(-time * rng.uniform(0.5, 3.0) * partial**0.5)
            note += partial**-1.5 * decay * np.sin(partial * phase + rng.uniform(0, 2 * np.pi))
        attack = np.minimum(1.0, time / 0.01)
        release = np.minimum(1.0, (length - 1 - np.arange(length)) / (0.05 * sample_rate))
        note *= attack * np.maximum(release, 0.0) * rng.uniform(0.2, 1.0)
        pan = rng.uniform(0.2, 0.8)
        music[0, start : start + length] += np.sqrt(1 - pan) * note
        music[1, start : start + length] += np.sqrt(pan) * note
    return music


def _percussion(rng: np.random.Generator, samples: int, sample_rate: int, density: float) -> np.ndarray:
    """Kicks (decaying pitch sweeps) on a beat grid and noisy hats/snares between them."""
    music = np.zeros((2, samples))
    beat = int(sample_rate * 60 / rng.uniform(80, 140))
    for onset in range(0, samples, beat):
        if rng.random() > density:
            continue
        length = min(int(0.25 * sample_rate), samples - onset)
        time = np.arange(length) / sample_rate
        if (onset // beat) % 2 == 0:
            sweep = 2 * np.pi * np.cumsum(50 + 100 * np.exp(-time * 30)) / sample_rate
            hit = np.sin(sweep) * np.exp(-time * 12)
            music[:, onset : onset + length] += 0.8 * hit
        else:
            hit = _highpass_noise(rng, length) * np.exp(-time * rng.uniform(20, 60))
            music[:, onset : onset + length] += 0.3 * hit[None] * rng.uniform(0.6, 1.0, size=(2, 1))
    return music


def _pink_noise(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Unit-RMS stereo noise with a 1/f power spectrum, as a mix's noise floor and reverb."""
    spectrum = np.fft.rfft(rng.standard_normal((2, samples)), axis=-1)
    frequency = np.arange(spectrum.shape[-1])
    spectrum /= np.sqrt(np.maximum(frequency, 1))
    noise = np.fft.irfft(spectrum, n=samples, axis=-1)
    return noise / max(float(np.std(noise)), 1e-12)


def _highpass_noise(rng: np.random.Generator, samples: int) -> np.ndarray:
    noise = rng.standard_normal(samples + 1)
    return np.diff(noise) / 2


def _fade_envelope(time: np.ndarray, seconds: float, fade_in: float, fade_out: float) -> np.ndarray:
    envelope = np.ones_like(time)
    if fade_in > 0:
        envelope *= np.clip(time / fade_in, 0, 1) ** 2
    if fade_out > 0:
        envelope *= np.clip((seconds - time) / fade_out, 0, 1) ** 2
    return envelope


def _gate(rng: np.random.Generator, samples: int, sample_rate: int) -> np.ndarray:
    """1 during a few phrases, 0 elsewhere, with 20 ms ramps."""
    gate = np.zeros(samples)
    for _ in range(max(1, samples // (4 * sample_rate))):
        start = int(rng.uniform(0.1, 0.9) * samples)
        gate[start : start + int(rng.uniform(0.5, 2.0) * sample_rate)] = 1.0
    return _smooth(gate, sample_rate // 50)


def _smooth(envelope: np.ndarray, width: int) -> np.ndarray:
    if width <= 1:
        return envelope
    kernel = np.ones(width) / width
    return np.convolve(envelope, kernel, mode="same")
