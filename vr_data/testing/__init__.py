"""Synthetic audio for tests, benchmarks and demos: music-like signals (`synth`) and the
deterministic demo corpus in every format (`demo`)."""
