"""Known answers for the intrusive metrics, and agreement with the reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pesq import pesq
from pystoi import stoi

from miipher2.audio import read_audio
from miipher2.evaluate import metrics
from tests.evaluate.builders import LIBRIVOX, noisy


@pytest.fixture(scope="module")
def speech():
    wave, rate = read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav")
    assert rate == metrics.METRIC_RATE
    return wave


@pytest.fixture(scope="module")
def degraded(speech):
    return noisy(speech, 5.0, np.random.default_rng(0))


def test_clean_against_itself_scores_the_best_value(speech):
    scores = metrics.intrusive_metrics(speech, speech)
    assert scores["pesq"] == pytest.approx(4.64, abs=0.01)
    assert scores["estoi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["si_sdr"] > 100
    assert scores["lsd"] == 0.0
    assert scores["mcd"] == 0.0


def test_degraded_speech_scores_worse_on_every_metric(speech, degraded):
    clean = metrics.intrusive_metrics(speech, speech)
    noisy_scores = metrics.intrusive_metrics(speech, degraded)
    for name, value in noisy_scores.items():
        better = metrics.METRICS[name].higher_is_better
        assert (value < clean[name]) if better else (value > clean[name]), name
    assert noisy_scores["pesq"] < 2.0 and noisy_scores["estoi"] < 0.9


def test_numbers_agree_with_the_reference_implementations(speech, degraded):
    assert metrics.pesq_wb(speech, degraded) == pytest.approx(pesq(16000, speech, degraded, "wb"), abs=1e-6)
    assert metrics.estoi(speech, degraded) == pytest.approx(stoi(speech, degraded, 16000, extended=True), abs=1e-6)


def test_si_sdr_matches_a_hand_computed_case():
    # Reference and distortion are orthogonal, zero-mean sinusoids: SI-SDR = 10 log10(|s|^2 / |e|^2)
    # = 10 log10(1 / 0.1^2) = 20 dB, whatever the estimate's overall gain.
    t = np.arange(16000) / 16000
    reference = np.sin(2 * np.pi * 100 * t)
    distortion = 0.1 * np.cos(2 * np.pi * 100 * t)
    assert metrics.si_sdr(reference, reference + distortion) == pytest.approx(20.0, abs=1e-6)
    assert metrics.si_sdr(reference, 3.0 * (reference + distortion)) == pytest.approx(20.0, abs=1e-6)


def test_lsd_and_mcd_ignore_nothing_but_what_they_should(speech):
    # A pure gain change shifts every log spectrum by a constant: LSD sees it, MCD (c0 excluded) doesn't.
    broadband = np.random.default_rng(0).standard_normal(16000) * 0.1
    assert metrics.log_spectral_distance(broadband, 0.5 * broadband) == pytest.approx(20 * math.log10(2), abs=1e-3)
    assert metrics.mel_cepstral_distortion(speech, 0.5 * speech) == pytest.approx(0.0, abs=1e-6)


def test_lengths_are_aligned_and_bad_input_is_refused(speech):
    assert metrics.intrusive_metrics(speech, np.concatenate([speech, np.zeros(77, np.float32)]))["lsd"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        metrics.si_sdr(speech, np.zeros(0))
    with pytest.raises(ValueError, match="16000 Hz"):
        metrics.intrusive_metrics(speech, speech, rate=8000)


def test_pesq_of_silence_is_not_a_number(speech):
    assert math.isnan(metrics.pesq_wb(np.zeros_like(speech), np.zeros_like(speech)))


def test_lsd_does_not_depend_on_the_playback_level(speech):
    """The floor follows the reference's level: scaling both signals leaves LSD unchanged.

    With the old absolute floor (1e-10), a quiet copy of the same pair scored differently,
    because the band a low-pass empties sat above the floor at one level and below it at another.
    """
    lowpassed = np.fft.irfft(np.fft.rfft(speech) * (np.fft.rfftfreq(speech.size, 1 / 16000) < 4000), speech.size)
    loud = metrics.log_spectral_distance(speech, lowpassed)
    for gain in (1e-4, 1e3):
        assert metrics.log_spectral_distance(gain * speech, gain * lowpassed) == pytest.approx(loud, rel=1e-6)
    old = [np.mean(np.sqrt(np.mean((10 * np.log10(metrics._power_spectrogram(g * speech, 16000, 512, 128) + 1e-10)
                                    - 10 * np.log10(metrics._power_spectrogram(g * lowpassed, 16000, 512, 128)
                                                    + 1e-10)) ** 2, axis=0))) for g in (1.0, 1e-4)]
    assert abs(old[0] - old[1]) > 1.0  # what the relative floor fixes


def test_lsd_of_silence_is_the_distance_to_the_floor_computed_by_hand():
    # A hand-rolled STFT (Hann window, no padding) as an independent computation.
    reference = np.random.default_rng(1).standard_normal(4096)
    window = np.hanning(513)[:-1]  # periodic Hann, as scipy's "hann"
    frames = np.stack([reference[i: i + 512] * window for i in range(0, 4096 - 512 + 1, 128)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    floor = power.max() * 1e-8  # 80 dB below the loudest bin
    expected = np.mean(np.sqrt(np.mean((10 * np.log10(np.maximum(power, floor) / floor)) ** 2, axis=1)))
    assert metrics.log_spectral_distance(reference, np.zeros_like(reference)) == pytest.approx(expected, rel=1e-6)
    assert metrics.log_spectral_distance(reference, 2 * reference) == pytest.approx(20 * math.log10(2), abs=1e-9)


def test_the_8_to_12_khz_band_is_measured_where_the_reference_has_it():
    rate = metrics.HIGH_BAND_RATE
    wideband = np.random.default_rng(2).standard_normal(rate)  # white: every band full
    frequencies = np.fft.rfftfreq(wideband.size, 1 / rate)
    narrow = np.fft.irfft(np.fft.rfft(wideband) * (frequencies < 8000), wideband.size)  # a 16 kHz system's output
    assert metrics.has_high_band(wideband, rate)
    assert not metrics.has_high_band(narrow, rate)  # e.g. a 16 kHz recording stored at 24 kHz
    assert not metrics.has_high_band(wideband[::3], 8000)  # no 8-12 kHz band below 24 kHz
    assert metrics.high_band_metrics(wideband, wideband)["lsd_8_12k"] == 0.0
    # Hand value: twice the amplitude is 20 log10(2) dB in every bin of the band.
    assert metrics.high_band_metrics(wideband, 2 * wideband)["lsd_8_12k"] == pytest.approx(20 * math.log10(2), abs=1e-9)
    # An empty band is as far as the floor allows (80 dB below the loudest bin), far worse than the
    # full-band LSD at 16 kHz, which cannot see it at all.
    assert metrics.high_band_metrics(wideband, narrow)["lsd_8_12k"] > 50
    from miipher2.audio import resample

    assert metrics.log_spectral_distance(resample(wideband, rate, 16000), resample(narrow, rate, 16000)) < 2.0
    with pytest.raises(ValueError, match="24000 Hz"):
        metrics.high_band_metrics(wideband, wideband, rate=16000)
