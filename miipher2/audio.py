"""Audio I/O and resampling shared by every part of the library.

soundfile (libsndfile) does all file I/O: torchaudio's native I/O is unusable beside CPU torch
here, and libsndfile reads every format a user is likely to hand us (WAV, FLAC, OGG, MP3, ...).
"""

from __future__ import annotations

import os
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from miipher2.files import atomic_file


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the file and the reason."""


def read_audio(path: str | os.PathLike, *, mono: bool = True, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read a file as float32; downmix to mono and resample when asked.

    Returns (wave, rate): wave is (samples,) when mono, else (samples, channels).
    """
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from err
    if mono:
        wave = wave.mean(axis=1)
    if sample_rate is not None and rate != sample_rate:
        wave = resample(wave, rate, sample_rate)
        rate = sample_rate
    return wave, rate


def read_audio_span(path: str | os.PathLike, start: int, stop: int, *, sample_rate: int | None = None) -> np.ndarray:
    """Mono samples [start, stop) at `sample_rate`: `read_audio(path, sample_rate=...)[0][start:stop]`,
    decoding only that span plus what the resampling filter reaches beyond it.

    `resample` (scipy's polyphase filter) computes output sample k from the input samples within
    10 * max(up, down) / up of k * down / up. Decoding from a multiple of `down` keeps the output
    grid aligned with the whole file's, so the samples are the same as resampling the whole file.
    """
    try:
        with sf.SoundFile(str(path)) as handle:
            native, frames = handle.samplerate, handle.frames
            rate = sample_rate or native
            up, down = rate // gcd(rate, native), native // gcd(rate, native)
            reach = -(-10 * max(up, down) // up) + 1 if up != down else 0
            first = min(frames, max(0, (start * down // up - reach) // down * down))
            last = min(frames, -(-stop * down // up) + reach)
            if handle.seekable():
                handle.seek(first)
            else:  # some streams cannot seek: read up to the span and drop it
                handle.read(first, dtype="float32")
            wave = handle.read(max(0, last - first), dtype="float32", always_2d=True).mean(axis=1)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from err
    offset = first * up // down
    return resample(wave, native, rate)[max(0, start - offset) : max(0, stop - offset)]


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling along the first axis (exact rational ratio)."""
    if orig_rate == target_rate:
        return wave
    g = gcd(int(orig_rate), int(target_rate))
    return resample_poly(wave, target_rate // g, orig_rate // g, axis=0).astype(np.float32)


def write_audio(path: str | os.PathLike, wave: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Write atomically: a crash never leaves a half-written file under the final name."""
    path = Path(path)
    with atomic_file(path) as tmp:
        sf.write(tmp, np.asarray(wave, dtype=np.float32), sample_rate, subtype=subtype, format=_format_of(path))


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"wav": "WAV", "flac": "FLAC", "ogg": "OGG"}.get(suffix, "WAV")
