"""Intrusive speech-quality metrics: each compares an estimate with its clean reference.

Most metrics run at 16 kHz (PESQ wide-band and ESTOI are defined there); callers resample first.
The band a 16 kHz comparison cannot see, 8-12 kHz, is measured at 24 kHz by `high_band_metrics`
where the reference has it (a 24 kHz Miipher-2 must produce it; a 16 kHz input lacks it).
Restoration keeps the timeline, so reference and estimate are compared frame by frame after
trimming to the shorter length; no time warping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy.fft import dct
from scipy.signal import stft

METRIC_RATE = 16000
HIGH_BAND_RATE, HIGH_BAND = 24000, (8000.0, 12000.0)
# A reference "has" the high band when it holds at least this share of its power (a 16 kHz
# recording resampled to 24 or 48 kHz holds ~nothing there: the resampler's stop band).
HIGH_BAND_MIN_SHARE = 1e-5
# Log spectra are floored this far below the reference's loudest time-frequency bin: bins that
# are empty in one signal (a codec's cut-off band, digital silence) count as "quiet", the same at
# any playback level; an absolute floor made LSD depend on how loud the recording was.
LSD_DYNAMIC_RANGE_DB = 80.0
_EPS = 1e-10


@dataclass(frozen=True)
class MetricInfo:
    """How to read a metric: which way is better, and its display name."""

    name: str
    higher_is_better: bool
    label: str


# Every metric column the evaluation table can hold, in report order.
METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("pesq", True, "PESQ (WB)"),
    MetricInfo("estoi", True, "ESTOI"),
    MetricInfo("si_sdr", True, "SI-SDR (dB)"),
    MetricInfo("lsd", False, "LSD (dB)"),
    MetricInfo("lsd_8_12k", False, "LSD 8-12 kHz (dB)"),
    MetricInfo("mcd", False, "MCD (dB)"),
    MetricInfo("dnsmos_sig", True, "DNSMOS SIG"),
    MetricInfo("dnsmos_bak", True, "DNSMOS BAK"),
    MetricInfo("dnsmos_ovrl", True, "DNSMOS OVRL"),
    MetricInfo("dnsmos_p808", True, "DNSMOS P.808"),
    MetricInfo("speaker_similarity", True, "Speaker sim."),
    MetricInfo("wer", False, "WER"),
    MetricInfo("cer", False, "CER"),
)}
# Corpus-level error rates: errors summed over utterances / reference words (characters) summed,
# what ASR papers report. The mean of per-utterance rates (`wer`) weighs a 3-word utterance like a
# 30-word one. Computed from per-utterance count columns, not a per-utterance metric themselves.
CORPUS_RATES: dict[str, tuple[str, str]] = {"wer_corpus": ("word_errors", "reference_words"),
                                            "cer_corpus": ("char_errors", "reference_chars")}
CORPUS_METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("wer_corpus", False, "WER (corpus)"),
    MetricInfo("cer_corpus", False, "CER (corpus)"),
)}
REPORTED_METRICS: dict[str, MetricInfo] = {**METRICS, **CORPUS_METRICS}


def align(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trim both to the shorter length (vocoders may add or drop a few samples at the end)."""
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    estimate = np.asarray(estimate, dtype=np.float64).reshape(-1)
    n = min(reference.size, estimate.size)
    if n == 0:
        raise ValueError("cannot compare an empty signal")
    return reference[:n], estimate[:n]


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, rate: int = METRIC_RATE) -> float:
    """ITU-T P.862.2 wide-band PESQ (MOS-LQO, -0.5..4.64); NaN where PESQ finds no speech."""
    from pesq import PesqError, pesq

    _require_metric_rate(rate)
    reference, estimate = align(reference, estimate)
    if not (np.any(reference) and np.any(estimate)):  # digital silence: PESQ would divide by zero
        return math.nan
    try:
        return float(pesq(rate, reference, estimate, "wb"))
    except PesqError:  # e.g. silent or too short input: PESQ is undefined, not zero
        return math.nan


def estoi(reference: np.ndarray, estimate: np.ndarray, rate: int = METRIC_RATE) -> float:
    """Extended short-time objective intelligibility (0..1)."""
    from pystoi import stoi

    reference, estimate = align(reference, estimate)
    return float(stoi(reference, estimate, rate, extended=True))


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019).

    A tiny epsilon keeps an identical estimate finite (very high) instead of infinite, so
    means and confidence intervals stay defined.
    """
    reference, estimate = align(reference, estimate)
    reference = reference - reference.mean()
    estimate = estimate - estimate.mean()
    scale = np.dot(estimate, reference) / (np.dot(reference, reference) + _EPS)
    target = scale * reference
    residual = estimate - target
    return float(10 * np.log10((np.dot(target, target) + _EPS) / (np.dot(residual, residual) + _EPS)))


def _power_spectrogram(wave: np.ndarray, rate: int, n_fft: int, hop: int) -> np.ndarray:
    _, _, spec = stft(wave, fs=rate, window="hann", nperseg=n_fft, noverlap=n_fft - hop, boundary=None, padded=False)
    return np.abs(spec) ** 2  # (freq, frames)


def log_spectral_distance(reference: np.ndarray, estimate: np.ndarray, rate: int = METRIC_RATE,
                          n_fft: int = 512, hop: int = 128, band: tuple[float, float] | None = None) -> float:
    """Mean over frames of the RMS (over frequency) difference of log power spectra, in dB.

    Both spectra are floored LSD_DYNAMIC_RANGE_DB below the reference's loudest bin, so the value
    does not change with the overall level. `band` = (low, high) Hz keeps only those bins.
    """
    reference, estimate = align(reference, estimate)
    ref_power = _power_spectrogram(reference, rate, n_fft, hop)
    est_power = _power_spectrogram(estimate, rate, n_fft, hop)
    floor = float(ref_power.max()) * 10 ** (-LSD_DYNAMIC_RANGE_DB / 10) or np.finfo(np.float64).tiny  # silent reference
    if band is not None:
        frequencies = np.fft.rfftfreq(n_fft, 1 / rate)
        keep = (frequencies >= band[0]) & (frequencies < band[1])
        ref_power, est_power = ref_power[keep], est_power[keep]
    difference = 10 * np.log10(np.maximum(ref_power, floor)) - 10 * np.log10(np.maximum(est_power, floor))
    return float(np.mean(np.sqrt(np.mean(difference ** 2, axis=0))))


def has_high_band(reference: np.ndarray, rate: int) -> bool:
    """Whether a reference at `rate` carries the 8-12 kHz band (see HIGH_BAND_MIN_SHARE)."""
    if rate < 2 * HIGH_BAND[1]:
        return False
    spectrum = np.abs(np.fft.rfft(np.asarray(reference, dtype=np.float64))) ** 2
    frequencies = np.fft.rfftfreq(len(reference), 1 / rate)
    total = spectrum.sum()
    inside = spectrum[(frequencies >= HIGH_BAND[0]) & (frequencies < HIGH_BAND[1])].sum()
    return bool(total > 0 and inside >= HIGH_BAND_MIN_SHARE * total)


def high_band_metrics(reference: np.ndarray, estimate: np.ndarray, rate: int = HIGH_BAND_RATE) -> dict[str, float]:
    """LSD over 8-12 kHz of signals at HIGH_BAND_RATE (24 kHz); callers check `has_high_band` first."""
    if rate != HIGH_BAND_RATE:
        raise ValueError(f"the high band is measured at {HIGH_BAND_RATE} Hz, got {rate} Hz: resample first")
    return {"lsd_8_12k": log_spectral_distance(reference, estimate, rate, n_fft=768, hop=192, band=HIGH_BAND)}


@cache
def _mel_basis(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=rate / 2)


def _mel_amplitude(wave: np.ndarray, rate: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 80) -> np.ndarray:
    power = _power_spectrogram(np.asarray(wave, dtype=np.float64), rate, n_fft, hop)
    return np.sqrt(_mel_basis(rate, n_fft, n_mels) @ power)  # (mels, frames)


def mel_cepstrum(mel_amplitude: np.ndarray, floor: float, n_ceps: int = 25) -> np.ndarray:
    """Mel cepstra (frames, n_ceps): DCT-II of the floored log mel amplitude spectrum."""
    return dct(np.log(np.maximum(mel_amplitude, floor)), type=2, norm="ortho", axis=0)[:n_ceps].T


def mel_cepstral_distortion(reference: np.ndarray, estimate: np.ndarray, rate: int = METRIC_RATE,
                            dynamic_range_db: float = 60.0) -> float:
    """MCD in dB over coefficients 1..24 (c0, the loudness, is excluded as is customary).

    Each spectrum is floored `dynamic_range_db` below its own peak, so bands a signal leaves empty
    (e.g. above an MP3's cutoff) count as "quiet", not as -inf dB, and a pure gain change costs
    nothing. Only the reference's speech frames (within the same range of its loudest frame) are
    averaged: noise in pauses is LSD's business, not the spectral envelope's.
    """
    reference, estimate = align(reference, estimate)
    ref_mel, est_mel = _mel_amplitude(reference, rate), _mel_amplitude(estimate, rate)
    below = 10 ** (-dynamic_range_db / 20)
    frame_level = ref_mel.max(axis=0)
    speech = frame_level >= frame_level.max() * below
    ref_ceps = mel_cepstrum(ref_mel[:, speech], max(float(ref_mel.max()), _EPS) * below)
    est_ceps = mel_cepstrum(est_mel[:, speech], max(float(est_mel.max()), _EPS) * below)
    diff = ref_ceps[:, 1:] - est_ceps[:, 1:]
    return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * np.sum(diff ** 2, axis=1))))


def intrusive_metrics(reference: np.ndarray, estimate: np.ndarray, rate: int = METRIC_RATE) -> dict[str, float]:
    """Every reference-based metric for one utterance."""
    _require_metric_rate(rate)
    return {
        "pesq": pesq_wb(reference, estimate, rate),
        "estoi": estoi(reference, estimate, rate),
        "si_sdr": si_sdr(reference, estimate),
        "lsd": log_spectral_distance(reference, estimate, rate),
        "mcd": mel_cepstral_distortion(reference, estimate, rate),
    }


def _require_metric_rate(rate: int) -> None:
    if rate != METRIC_RATE:
        raise ValueError(f"metrics run at {METRIC_RATE} Hz, got {rate} Hz: resample first")
