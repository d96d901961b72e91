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
