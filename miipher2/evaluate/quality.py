"""Model-based quality scores with weights bundled in their wheels: DNSMOS and speaker similarity.

Both models are loaded once per process (`functools.cache`). DNSMOS runs on one thread: the
evaluation parallelises over utterances with a process pool, so intra-op threads would only
fight each other for the cores (the pool's workers also pin torch to one thread).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np

from miipher2.evaluate.metrics import METRIC_RATE


class DNSMOS:
    """Microsoft DNSMOS (SIG/BAK/OVRL, P.835) and the P.808 model, from the `speechmos` wheel."""

    def __init__(self):
        import onnxruntime as ort
        import speechmos
        from speechmos.dnsmos import DNSMOS as _SpeechmosDNSMOS

        models = Path(speechmos.__file__).parent / "dnsmos_models"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # speechmos builds its sessions with default (all-core) threading; reuse its scoring
        # code (segmenting, P.808 mel features, polynomial calibration) with our sessions.
        scorer = _SpeechmosDNSMOS.__new__(_SpeechmosDNSMOS)
        scorer.primary_model_path = str(models / "sig_bak_ovr.onnx")
        scorer.onnx_sess = ort.InferenceSession(scorer.primary_model_path, options, providers=["CPUExecutionProvider"])
        scorer.p808_onnx_sess = ort.InferenceSession(str(models / "model_v8.onnx"), options,
                                                     providers=["CPUExecutionProvider"])
        self._scorer = scorer

    def __call__(self, wave: np.ndarray) -> dict[str, float]:
        """Scores for a 16 kHz wave; clips shorter than 9 s are looped, as DNSMOS does."""
        wave = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if wave.size < METRIC_RATE // 10:
            raise ValueError(f"DNSMOS needs at least 0.1 s of audio, got {wave.size} samples")
        scores = self._scorer(wave, METRIC_RATE, False)
        return {
            "dnsmos_sig": float(scores["sig_mos"]),
            "dnsmos_bak": float(scores["bak_mos"]),
            "dnsmos_ovrl": float(scores["ovrl_mos"]),
            "dnsmos_p808": float(scores["p808_mos"]),
        }


class SpeakerEncoder:
    """Resemblyzer's GE2E d-vector encoder (weights ship in the wheel)."""

    def __init__(self):
        from resemblyzer import VoiceEncoder

        self._encoder = VoiceEncoder("cpu", verbose=False)

    def embed(self, wave: np.ndarray) -> np.ndarray | None:
        """Unit-norm embedding of a 16 kHz wave; None when no voiced audio is left to embed."""
        from resemblyzer import preprocess_wav

        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if np.sqrt(np.mean(wave ** 2)) < 1e-5:  # (near) digital silence: nothing to normalise or embed
            return None
        voiced = preprocess_wav(wave, source_sr=METRIC_RATE)
        if voiced.size < METRIC_RATE // 4:  # trimming removed (nearly) everything: silence
            return None
        return self._encoder.embed_utterance(voiced)

    @staticmethod
    def similarity(a: np.ndarray | None, b: np.ndarray | None) -> float:
        if a is None or b is None:
            return float("nan")
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


@cache
def dnsmos() -> DNSMOS:
    return DNSMOS()


@cache
def speaker_encoder() -> SpeakerEncoder:
    return SpeakerEncoder()
