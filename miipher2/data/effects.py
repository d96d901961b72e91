"""Single degradation effects over mono float32 audio: each one does one thing, deterministically.

Every function takes the wave and explicit parameters (randomness only through a passed
`np.random.Generator`), keeps the length and the time alignment of its input, and returns float32.
`miipher2.data.degrade` draws the parameters and chains the effects.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from math import gcd

import numpy as np
import soundfile as sf
from scipy import fft as sfft
from scipy import signal

from miipher2.audio import resample
from miipher2.data import opus

# ---------------------------------------------------------------- levels


def active_power(wave: np.ndarray, sample_rate: int, frame_ms: float = 20.0, range_db: float = 40.0) -> float:
    """Mean power over the active frames: 20 ms frames within `range_db` of the loudest frame.

    A simplified ITU-T P.56 active speech level: pauses do not dilute the speech power, so an
    utterance with long silences gets the same SNR as the same words spoken back to back.
    """
    frame = max(1, int(round(sample_rate * frame_ms / 1000)))
    n_frames = len(wave) // frame
    if n_frames == 0:
        return float(np.mean(np.square(wave, dtype=np.float64))) if len(wave) else 0.0
    frames = wave[: n_frames * frame].astype(np.float64).reshape(n_frames, frame)
    powers = np.mean(frames * frames, axis=1)
    loudest = powers.max()
    if loudest <= 0.0:
        return 0.0
    return float(powers[powers >= loudest * 10.0 ** (-range_db / 10.0)].mean())


def limit_peak(wave: np.ndarray, peak: float = 0.99) -> tuple[np.ndarray, float]:
    """Scale down (never up) so |wave| <= peak; returns (wave, gain_db applied, 0 when untouched).

    Integer PCM and the codecs wrap around or clip hard beyond full scale; a uniform gain keeps
    every level ratio (SNR, clipping threshold relative to the peak) intact.
    """
    current = float(np.max(np.abs(wave))) if len(wave) else 0.0
    if current <= peak:
        return wave, 0.0
    gain = peak / current
    return (wave * gain).astype(np.float32), float(20.0 * np.log10(gain))


# ---------------------------------------------------------------- noise


def colored_noise(color: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white, pink (1/f power) or brown (1/f^2 power) noise, shaped in the frequency domain."""
    exponents = {"white": 0.0, "pink": 0.5, "brown": 1.0}
    if color not in exponents:
        raise ValueError(f"unknown noise colour {color!r}; expected one of {sorted(exponents)}")
    white = rng.standard_normal(n)
    if exponents[color]:
        spectrum = sfft.rfft(white)
        freqs = np.arange(len(spectrum), dtype=np.float64)
        freqs[0] = 1.0  # no DC boost: the 1/f shape starts at the first bin
        white = sfft.irfft(spectrum / freqs ** exponents[color], n)
    power = float(np.mean(white * white))
    return (white / np.sqrt(power) if power > 0 else white).astype(np.float32)


def noise_segment(noise: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random n-sample excerpt of a noise recording, looped only when the recording is shorter."""
    if len(noise) >= n:
        start = int(rng.integers(0, len(noise) - n + 1))
        return noise[start:start + n]
    start = int(rng.integers(0, len(noise)))
    reps = -(-(start + n) // len(noise))
    return np.tile(noise, reps)[start:start + n]


def add_noise(wave: np.ndarray, noise: np.ndarray, snr_db: float, sample_rate: int) -> np.ndarray:
    """wave + noise scaled so active_power(wave) / mean power of the added noise == snr_db.

    `noise` must already have wave's length. Silent input gets no noise (its SNR is undefined).
    """
    speech = active_power(wave, sample_rate)
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    if speech <= 0.0 or noise_power <= 0.0:
        return wave.astype(np.float32)
    scale = np.sqrt(speech / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + scale * noise).astype(np.float32)


# ---------------------------------------------------------------- reverberation


@dataclass(frozen=True)
class RoomResponse:
    """An RIR ready for convolution: starts at its direct path, tail cut at -60 dB, direct path = 1."""

    taps: np.ndarray
    rt60_s: float | None


def prepare_rir(rir: np.ndarray, sample_rate: int) -> RoomResponse:
    """Drop the pre-delay (so convolution keeps alignment) and the inaudible tail (so it is cheap)."""
    rir = np.asarray(rir, dtype=np.float64)
    if rir.ndim != 1 or len(rir) == 0:
        raise ValueError(f"an RIR must be a non-empty 1-D array, got shape {rir.shape}")
    if not np.all(np.isfinite(rir)):
        raise ValueError("RIR contains NaN or Inf samples")
    direct = int(np.argmax(np.abs(rir)))
    if rir[direct] == 0.0:
        raise ValueError("RIR is all zeros")
    taps = rir[direct:] / rir[direct]
    decay = _energy_decay_db(taps)
    below = np.nonzero(decay < -60.0)[0]
    if len(below):
        taps = taps[: max(1, int(below[0]))]
    return RoomResponse(taps.astype(np.float32), _rt60_from_decay(decay, sample_rate))


def _energy_decay_db(taps: np.ndarray) -> np.ndarray:
    """Schroeder backward-integrated energy decay curve, 0 dB at the start."""
    energy = np.cumsum(np.square(taps)[::-1])[::-1]
    return 10.0 * np.log10(np.maximum(energy / energy[0], 1e-30))


def _rt60_from_decay(decay: np.ndarray, sample_rate: int) -> float | None:
    """T20 estimate: a line fitted to the decay between -5 and -25 dB, extrapolated to -60 dB."""
    span = np.nonzero((decay <= -5.0) & (decay >= -25.0))[0]
    if len(span) < 2 or decay[-1] > -25.0:
        return None
    slope = np.polyfit(span / sample_rate, decay[span], 1)[0]
    return float(-60.0 / slope) if slope < 0 else None


def spectral_product(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x * y for complex spectra, from separately rounded real products and sums.

    numpy's complex multiply fuses multiply-adds in its AVX2/AVX-512 loops and not in its SSE
    baseline, so `x * y` rounds differently on CPUs without FMA; these real operations round the
    same on every CPU (the demo corpus's bytes are pinned by hash).
    """
    product = np.empty(np.broadcast(x, y).shape, dtype=np.result_type(x, y))
    product.real = x.real * y.real - x.imag * y.imag
    product.imag = x.real * y.imag + x.imag * y.real
    return product


def synthetic_rir(rt60_s: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Exponentially decaying Gaussian noise after a unit direct path (Moorer's statistical model).

    A fallback when no measured or simulated RIR bank is available.
    """
    n = max(2, int(rt60_s * sample_rate))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-3.0 * np.log(10.0) * t / rt60_s)  # -60 dB at rt60
    tail[: max(1, sample_rate // 400)] = 0.0  # ~2.5 ms gap before the first reflections
    tail[0] = 1.0
    return tail.astype(np.float32)


def reverberate(wave: np.ndarray, room: RoomResponse) -> np.ndarray:
    """Convolve with a prepared RIR; same length, same alignment, same RMS as the dry input."""
    n = sfft.next_fast_len(len(wave) + len(room.taps) - 1, real=True)
    wet = sfft.irfft(spectral_product(sfft.rfft(wave, n), sfft.rfft(room.taps, n)), n)[: len(wave)]
    dry_rms = np.sqrt(np.mean(np.square(wave, dtype=np.float64)))
    wet_rms = np.sqrt(np.mean(np.square(wet, dtype=np.float64)))
    if wet_rms > 0:
        wet = wet * (dry_rms / wet_rms)
    return wet.astype(np.float32)


# ---------------------------------------------------------------- band limiting


@lru_cache(maxsize=256)
def _lowpass_sections(cutoff_hz: float, sample_rate: int) -> np.ndarray:
    # Elliptic: the steepest transition per order. Applied forwards and backwards (zero phase), so
    # the 60 dB design becomes 120 dB of stopband attenuation with no delay.
    return signal.ellip(8, 0.1, 60.0, cutoff_hz, btype="lowpass", output="sos", fs=sample_rate)


def lowpass(wave: np.ndarray, sample_rate: int, cutoff_hz: float) -> np.ndarray:
    """Zero-phase steep low-pass: nothing above ~1.1 x cutoff survives (< -60 dB)."""
    if not 0 < cutoff_hz < sample_rate / 2:
        raise ValueError(f"low-pass cutoff {cutoff_hz} Hz must lie in (0, {sample_rate / 2}) Hz")
    sections = _lowpass_sections(cutoff_hz, sample_rate)
    padlen = max(0, min(len(wave) - 1, 6 * len(sections)))  # scipy's default, capped for short input
    out = signal.sosfiltfilt(sections, wave, padlen=padlen)
    return out.astype(np.float32)


@lru_cache(maxsize=64)
def _resampling_filter(up: int, down: int) -> np.ndarray:
    # scipy's default polyphase filter (10 taps per phase, Kaiser beta 5) leaks ~-40 dB past the new
    # Nyquist; 20 taps per phase, beta 8.6 and a cutoff at 0.9 x Nyquist keep that below -90 dB.
    # (resample_poly scales a given filter by `up` itself.)
    wider = max(up, down)
    return signal.firwin(2 * 20 * wider + 1, 0.9 / wider, window=("kaiser", 8.6))


def resample_round_trip(wave: np.ndarray, sample_rate: int, low_rate: int) -> np.ndarray:
    """Down to `low_rate` and back: the band (and artefacts) of a low-rate recording, same length."""
    if not 0 < low_rate < sample_rate:
        raise ValueError(f"resampling rate {low_rate} must be below the audio rate {sample_rate}")
    g = gcd(int(low_rate), int(sample_rate))
    up, down = low_rate // g, sample_rate // g
    low = signal.resample_poly(wave, up, down, window=_resampling_filter(up, down))
    back = signal.resample_poly(low, down, up, window=_resampling_filter(down, up))
    return _fit_length(back, len(wave))


# ---------------------------------------------------------------- clipping, packet loss, gain


def clip(wave: np.ndarray, threshold: float) -> np.ndarray:
    """Hard clipping at +-threshold."""
    return np.clip(wave, -threshold, threshold).astype(np.float32)


def clip_threshold(wave: np.ndarray, clipped_fraction: float) -> float:
    """The level above which `clipped_fraction` of the samples lie (how hard a recording clips)."""
    magnitudes = np.abs(wave)
    k = min(len(wave) - 1, max(0, int(round(len(wave) * (1.0 - clipped_fraction)))))
    return float(np.partition(magnitudes, k)[k])


def drop_packets(wave: np.ndarray, sample_rate: int, loss_rate: float, rng: np.random.Generator,
                 frame_ms: float = 20.0) -> tuple[np.ndarray, list[int]]:
    """Zero whole frames (lost packets without concealment); returns (wave, indices of lost frames).

    Each frame is lost independently with probability `loss_rate`; at least one frame is lost, so
    an applied packet-loss effect always degrades something.
    """
    frame = max(1, int(round(sample_rate * frame_ms / 1000)))
    n_frames = -(-len(wave) // frame)
    lost = np.nonzero(rng.random(n_frames) < loss_rate)[0]
    if len(lost) == 0 and n_frames:
        lost = np.array([int(rng.integers(0, n_frames))])
    out = wave.astype(np.float32, copy=True)
    for index in lost:
        out[index * frame:(index + 1) * frame] = 0.0
    return out, [int(i) for i in lost]


def apply_gain(wave: np.ndarray, gain_db: float) -> np.ndarray:
    return (wave * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)


# ---------------------------------------------------------------- codecs


@dataclass(frozen=True)
class Codec:
    container: str | None  # libsndfile format and subtype; None: coded by libopus directly (miipher2.data.opus)
    subtype: str | None
    rates: tuple[int, ...] | None  # sample rates the encoder accepts; None = any
    compressible: bool  # takes libsndfile's compression_level (0 = best quality, 1 = smallest)
    memoryless: bool = False  # sample-by-sample companding: no delay, nothing to realign
    reproducible: bool = True  # same bytes on every x86-64 CPU (see miipher2.data.opus for the exception)


CODECS: dict[str, Codec] = {
    "mp3": Codec("MP3", "MPEG_LAYER_III", (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000), True),
    "vorbis": Codec("OGG", "VORBIS", None, True),
    # libopus picks SILK or CELT itself; its CELT encoder depends on the CPU model.
    "opus": Codec("OGG", "OPUS", opus.RATES, True, reproducible=False),
    "opus_silk": Codec(None, None, opus.RATES, False),  # Opus's speech mode: VoIP at 6-40 kbit/s
    "alaw": Codec("WAV", "ALAW", None, False, memoryless=True),
    "mulaw": Codec("WAV", "ULAW", None, False, memoryless=True),
}
MP3_BITRATE_MODES = ("CONSTANT", "AVERAGE", "VARIABLE")
MAX_CODEC_LAG_S = 0.25  # encoder priming/padding far beyond any real codec's (LAME: ~70 ms)


def codec_rate(codec: str, sample_rate: int) -> int:
    """The rate to encode at: the audio's own, else the nearest supported rate above it."""
    rates = CODECS[codec].rates
    if rates is None or sample_rate in rates:
        return sample_rate
    higher = [r for r in rates if r > sample_rate]
    return min(higher) if higher else max(rates)


def codec_round_trip(wave: np.ndarray, sample_rate: int, codec: str, compression_level: float | None = None,
                     bitrate_mode: str | None = None, kbps: float | None = None) -> tuple[np.ndarray, float]:
    """Encode and decode in memory; returns (decoded wave, encoded kbit/s).

    libsndfile codes every codec but `opus_silk` (libopus's SILK mode at `kbps`, required there).
    The wave must lie within +-1 (formats with integer samples wrap around beyond it). Output has
    the input's length and alignment: libsndfile trims MP3 priming and Opus pre-skip in most cases,
    but LAME at low CBR bitrates resamples internally and its padding then leaks through (we saw
    +1105 samples at 16 kHz), so the residual lag is measured by cross-correlation and undone.
    kbit/s counts the whole encoded file (container overhead included; `opus_silk`: packets only).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}")
    spec = CODECS[codec]
    rate = codec_rate(codec, sample_rate)
    source = resample(wave, sample_rate, rate) if rate != sample_rate else wave
    if spec.container is None:
        if kbps is None:
            raise ValueError(f"codec {codec!r} needs a bitrate (kbps)")
        decoded, used_kbps = opus.silk_round_trip(np.asarray(source, dtype=np.float32), rate, kbps)
    else:
        decoded, used_kbps = _libsndfile_round_trip(source, rate, spec, compression_level, bitrate_mode)
    if rate != sample_rate:
        decoded = resample(decoded, rate, sample_rate)
    elif spec.memoryless:
        return _fit_length(decoded, len(wave)), used_kbps
    return align_to(decoded, wave, int(MAX_CODEC_LAG_S * sample_rate)), used_kbps


def _libsndfile_round_trip(wave: np.ndarray, rate: int, spec: Codec, compression_level: float | None,
                           bitrate_mode: str | None) -> tuple[np.ndarray, float]:
    extra = {}
    if spec.compressible and compression_level is not None:
        extra["compression_level"] = float(compression_level)
    if spec.container == "MP3" and bitrate_mode is not None:
        extra["bitrate_mode"] = bitrate_mode
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(wave, dtype=np.float32), rate, format=spec.container, subtype=spec.subtype, **extra)
    kbps = buffer.tell() * 8.0 / max(len(wave) / rate, 1e-9) / 1000.0
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32", always_2d=False)
    return decoded, kbps


def estimate_lag(signal_: np.ndarray, reference: np.ndarray, max_lag: int) -> int:
    """The shift d (|d| <= max_lag) for which signal_[t + d] best matches reference[t]."""
    if not len(signal_) or not len(reference):
        return 0
    n = sfft.next_fast_len(len(signal_) + len(reference) - 1, real=True)
    corr = sfft.irfft(spectral_product(sfft.rfft(signal_, n), np.conj(sfft.rfft(reference, n))), n)
    # corr[d] holds lag d for d >= 0 and lag d - n for the negative lags at the end.
    lags = np.concatenate([np.arange(0, min(max_lag, len(signal_) - 1) + 1),
                           np.arange(-min(max_lag, len(reference) - 1), 0)])
    return int(lags[np.argmax(corr[lags])])


def align_to(decoded: np.ndarray, reference: np.ndarray, max_lag: int) -> np.ndarray:
    """Shift `decoded` onto `reference` and cut or zero-pad it to the reference's length."""
    lag = estimate_lag(decoded, reference, max_lag)
    if lag > 0:
        decoded = decoded[lag:]
    elif lag < 0:
        decoded = np.concatenate([np.zeros(-lag, dtype=np.float32), decoded])
    return _fit_length(decoded, len(reference))


def _fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    if len(wave) >= n:
        return wave[:n].astype(np.float32)
    return np.concatenate([wave, np.zeros(n - len(wave), dtype=wave.dtype)]).astype(np.float32)
