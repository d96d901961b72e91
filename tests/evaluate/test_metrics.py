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
