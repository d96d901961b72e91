"""The model-based scorers (DNSMOS, speaker encoder, Whisper) and the DeepFilterNet3 baseline.

Models are loaded once per process (the library caches them), so these tests share them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from miipher2.audio import read_audio
from miipher2.evaluate import asr, quality
from miipher2.evaluate.baseline import DeepFilterNet3
from miipher2.evaluate.metrics import si_sdr
from tests.evaluate.builders import LIBRIVOX, noisy


@pytest.fixture(scope="module")
def speech():
    return read_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav")[0]


@pytest.fixture(scope="module")
def degraded(speech):
    return noisy(speech, 0.0, np.random.default_rng(1))


def test_dnsmos_prefers_clean_speech(speech, degraded):
    clean, noisy_scores = quality.dnsmos()(speech), quality.dnsmos()(degraded)
    assert set(clean) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"}
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    assert clean["dnsmos_ovrl"] > noisy_scores["dnsmos_ovrl"] + 0.5
    assert clean["dnsmos_bak"] > noisy_scores["dnsmos_bak"]
    with pytest.raises(ValueError, match="at least 0.1 s"):
        quality.dnsmos()(speech[:100])


def test_speaker_similarity(speech, degraded):
    encoder = quality.speaker_encoder()
    reference = encoder.embed(speech)
    assert encoder.similarity(reference, encoder.embed(speech)) == pytest.approx(1.0, abs=1e-5)
    noise_only = np.random.default_rng(2).standard_normal(speech.size).astype(np.float32) * 0.1
    assert encoder.similarity(reference, encoder.embed(degraded)) > encoder.similarity(reference, encoder.embed(noise_only))
    assert encoder.embed(np.zeros_like(speech)) is None
    assert math.isnan(encoder.similarity(reference, None))


def test_text_normalisation():
    assert asr.normalize_text("He was NOT an ill-disposed young man.") == "he was not an ill disposed young man"
    assert asr.normalize_text("It's 2 o'clock; 1,250 people paid $3.50") == \
        "its two oclock one thousand two hundred fifty people paid three point five zero"
    assert asr.number_to_words(2_000_019) == "two million nineteen"
    assert asr.normalize_text("Straße, Köln!") == "straße köln"
    assert asr.primary_language("en-GB") == "en" and asr.primary_language("pt_BR") == "pt"


def test_wer_of_real_speech_and_languages_the_model_cannot_transcribe(speech):
    whisper = asr.transcriber()
    assert not whisper.multilingual  # the bundled tiny.en
    result = whisper.score(speech, "he was not an ill disposed young man", "en")
    assert result.wer <= 0.3 and result.cer <= 0.15 and result.hypothesis.startswith("he was not")
    assert result.reference_words == 8 and result.wer == result.word_errors / 8
    german = whisper.score(speech, "er war kein übel gesinnter junger mann", "de")
    assert math.isnan(german.wer) and math.isnan(german.cer) and "does not cover language 'de'" in german.note
    assert math.isnan(whisper.score(speech, "", "en").wer)
    # Hand-counted: one substitution in three words; "a b c d" -> "a x c": 1 substitution + 1 deletion.
    assert asr.word_error_counts("a b c", "a x c") == (1, 3)
    assert asr.word_error_counts("a b c d", "a x c") == (2, 4)
    assert asr.word_error_counts("a b", "") == (2, 2)  # nothing heard: every word deleted
    assert asr.word_error_counts("a b", "a b c") == (1, 2)  # an insertion counts against 2 reference words
    assert asr.character_error_counts("ab c", "ab") == (2, 4)  # " " and "c" deleted; spaces are characters


def test_asr_model_resolution(tmp_path):
    assert asr.resolve_asr_model(asr.DEFAULT_ASR).endswith("model")
    assert asr.resolve_asr_model("Systran/faster-whisper-small") == "Systran/faster-whisper-small"
    with pytest.raises(ValueError, match="no model.bin"):
        asr.resolve_asr_model(str(tmp_path))


def test_deepfilternet3_denoises_and_keeps_length_and_rate(speech, degraded):
    enhancer = DeepFilterNet3()
    enhanced, rate = enhancer.enhance(degraded, 16000)
    assert rate == 16000 and enhanced.shape == degraded.shape and enhanced.dtype == np.float32
    assert si_sdr(speech, enhanced) > si_sdr(speech, degraded) + 3.0
    # Fresh state per utterance: the same input gives the same output.
    np.testing.assert_allclose(enhancer.enhance(degraded, 16000)[0], enhanced, atol=1e-6)
    upsampled, rate = enhancer.enhance(np.repeat(degraded, 3), 48000)
    assert rate == 48000 and upsampled.size == 3 * degraded.size
