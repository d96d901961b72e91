"""Sound sources for the demo corpus: espeak-ng speech, a seeded noise bank, simulated rooms.

Everything here is a pure function of its arguments (text, voice, seed): the same call gives the
same samples on every run, which is what lets `data.dvc` pin the built corpus by hash.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from miipher2.audio import read_audio, resample

SAMPLE_RATE = 16000


class SynthesisError(RuntimeError):
    """espeak-ng is missing or refused a voice/text; the message names which."""


# --------------------------------------------------------------------------- speech

@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an espeak-ng language plus a voice variant, rate and pitch."""

    language: str
    variant: str
    words_per_minute: int
    pitch: int

    @property
    def speaker(self) -> str:
        return f"{self.language}-{self.variant}"

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}"


def espeak_binary() -> str:
    found = shutil.which("espeak-ng")
    if found is None:
        raise SynthesisError("espeak-ng not found on PATH: install the Debian package `espeak-ng` (make setup does)")
    return found


def espeak_version() -> str:
    """e.g. '1.51': the voices' sound (and so the corpus's bytes) changes between releases."""
    result = subprocess.run([espeak_binary(), "--version"], capture_output=True, text=True, timeout=30)
    match = re.search(r"text-to-speech:\s*(\S+)", result.stdout)
    return match.group(1) if match else result.stdout.strip()


def synthesize(text: str, voice: Voice, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak `text` with espeak-ng and return float32 mono at `sample_rate`.

    The text goes through stdin, so a sentence can never be mistaken for a command-line option.
    """
    with tempfile.TemporaryDirectory(prefix="miipher2-espeak-") as tmp:
        out = Path(tmp) / "speech.wav"
        command = [espeak_binary(), "-v", voice.espeak_name, "-s", str(voice.words_per_minute),
                   "-p", str(voice.pitch), "-w", str(out), "--stdin"]
        result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, timeout=120)
        if result.returncode != 0 or not out.exists():
            raise SynthesisError(f"espeak-ng failed for voice {voice.espeak_name!r} on {text[:40]!r}: "
                                 f"{result.stderr.decode(errors='replace').strip() or 'no output'}")
        wave, rate = read_audio(out)
    if wave.size == 0 or not np.any(wave):
        raise SynthesisError(f"espeak-ng produced silence for voice {voice.espeak_name!r} on {text[:40]!r}")
    return resample(wave, rate, sample_rate)


def peak_normalize(wave: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = float(np.max(np.abs(wave)))
    return (wave * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


# --------------------------------------------------------------------------- noise

def _rms_normalize(wave: np.ndarray, rms_dbfs: float = -20.0) -> np.ndarray:
    """Noise files share one level (-20 dBFS RMS); the degrader sets the SNR anyway."""
    wave = wave - wave.mean()
    wave = wave * (10 ** (rms_dbfs / 20) / np.sqrt(np.mean(wave**2)))
    # Impulsive noises may peak above full scale at -20 dBFS RMS: lower them rather than clip.
    peak = np.max(np.abs(wave))
    if peak > 0.99:
        wave = wave * (0.99 / peak)
    return wave.astype(np.float32)


def colored_noise(rng: np.random.Generator, samples: int, exponent: float) -> np.ndarray:
    """Noise whose power falls as 1/f**exponent: 0 white, 1 pink, 2 brown."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.fft.rfftfreq(samples)
    freqs[0] = freqs[1]  # no DC blow-up; the mean is removed when normalising
    spectrum *= freqs ** (-exponent / 2)
    return _rms_normalize(np.fft.irfft(spectrum, n=samples))


def mains_hum(rng: np.random.Generator, samples: int, mains_hz: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mains hum: the fundamental and odd-heavy harmonics with random phases, slow drift and a
    faint noise floor, like a ground loop on a cheap recorder."""
    t = np.arange(samples) / sample_rate
    drift = 1 + 0.002 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t)  # mains frequency wanders slightly
    wave = np.zeros(samples)
    for harmonic in range(1, 12):
        amplitude = (1.0 if harmonic % 2 else 0.4) / harmonic
        wave += amplitude * np.sin(2 * np.pi * mains_hz * harmonic * np.cumsum(drift) / sample_rate + rng.uniform(0, 2 * np.pi))
    wave += 0.01 * rng.standard_normal(samples)
    return _rms_normalize(wave)


def tonal_noise(rng: np.random.Generator, samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A few steady tones with vibrato (fans, whine) plus intermittent beeps (alarms, phones)."""
    t = np.arange(samples) / sample_rate
    wave = np.zeros(samples)
    for _ in range(4):
        freq = rng.uniform(300, 4000)
        vibrato = rng.uniform(0.001, 0.01) * np.sin(2 * np.pi * rng.uniform(0.2, 3) * t)
        wave += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * t * (1 + vibrato) + rng.uniform(0, 2 * np.pi))
    beep_hz, period = rng.uniform(800, 3000), rng.uniform(0.5, 1.5)
    gate = (np.mod(t, period) < period * rng.uniform(0.2, 0.5)).astype(float)
    wave += 1.5 * gate * np.sin(2 * np.pi * beep_hz * t)
    return _rms_normalize(wave)


def babble(rng: np.random.Generator, samples: int, utterances: list[np.ndarray]) -> np.ndarray:
    """Overlapping talkers: each utterance tiled to full length from a random offset, at a
    random level, summed. Callers pass utterances from speakers outside val/test."""
    if not utterances:
        raise ValueError("babble needs at least one utterance")
    wave = np.zeros(samples)
    for utterance in utterances:
        tiled = np.resize(utterance, samples + utterance.size)
        offset = int(rng.integers(0, utterance.size))
        wave += rng.uniform(0.5, 1.0) * tiled[offset:offset + samples]
    return _rms_normalize(wave)


# --------------------------------------------------------------------------- rooms

@dataclass(frozen=True)
class SimulatedRoom:
    rir: np.ndarray
    target_rt60_s: float
    rt60_s: float  # measured on the simulated response (Schroeder integral)
    room_m: tuple[float, float, float]
    source_m: tuple[float, float, float]
    mic_m: tuple[float, float, float]


def simulate_room(rng: np.random.Generator, target_rt60_s: float, sample_rate: int = SAMPLE_RATE,
                  tolerance: float = 0.05) -> SimulatedRoom:
    """A random shoebox room whose simulated RT60 is within `tolerance` of `target_rt60_s`.

    Sabine's formula misjudges image-source shoeboxes (measured RT60 comes out up to 70% long),
    so the design RT60 is corrected by the measured/target ratio a few times; a geometry that
    still misses (short decays in large rooms measure erratically) is replaced by another.
    """
    import pyroomacoustics as pra  # heavy import, only needed when building rooms

    for _ in range(20):
        # Rounded before use, so the geometry written to rirs.csv reproduces the response exactly.
        room_m = _rounded((rng.uniform(3.0, 10.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 4.0)))
        source_m, mic_m = _placements(rng, room_m)
        design = target_rt60_s
        for _ in range(4):
            absorption, max_order = pra.inverse_sabine(design, room_m)
            if absorption >= 1.0:
                break  # this room cannot be that dry
            room = pra.ShoeBox(list(room_m), fs=sample_rate, materials=pra.Material(absorption),
                               max_order=max_order, use_rand_ism=False, air_absorption=False)
            room.add_source(list(source_m))
            room.add_microphone(list(mic_m))
            room.compute_rir()
            rir = np.asarray(room.rir[0][0], dtype=np.float64)
            measured = float(pra.experimental.measure_rt60(rir, fs=sample_rate))
            if abs(measured - target_rt60_s) <= tolerance * target_rt60_s:
                rir = _trim_tail(rir)
                rir = (rir * (0.99 / np.max(np.abs(rir)))).astype(np.float32)
                return SimulatedRoom(rir, float(target_rt60_s), measured, room_m, source_m, mic_m)
            design *= target_rt60_s / measured
    raise RuntimeError(f"no simulated room reached RT60 {target_rt60_s:.3f} s within {tolerance:.0%}")


def _placements(rng: np.random.Generator, room_m: tuple[float, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Source and microphone at least 1 m apart and 0.5 m from every wall."""
    margin = 0.5
    while True:
        source_m = _rounded(rng.uniform(margin, side - margin) for side in room_m)
        mic_m = _rounded(rng.uniform(margin, side - margin) for side in room_m)
        if np.linalg.norm(np.subtract(source_m, mic_m)) >= 1.0:
            return source_m, mic_m


def _trim_tail(rir: np.ndarray, floor_db: float = -80.0) -> np.ndarray:
    """Cut the response where the remaining energy falls below `floor_db` of the total."""
    remaining = np.cumsum((rir**2)[::-1])[::-1]
    keep = np.nonzero(remaining > remaining[0] * 10 ** (floor_db / 10))[0]
    return rir[: int(keep[-1]) + 1]


def _rounded(values) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in values)
