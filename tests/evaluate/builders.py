"""Tiny evaluation sets and tiny random restorers, shared by the evaluation and registry tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import butter, sosfilt

from miipher2.audio import read_audio, write_audio
from miipher2.data.manifest import COLUMNS, write_manifest

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
# (utt_id, LibriVox clip, language we label it with, transcript)
UTTERANCES = (
    ("en_0880", "sense_and_sensibility_01_austen_64kb-0880.wav", "en", "he was not an ill disposed young man"),
    ("en_0930", "sense_and_sensibility_01_austen_64kb-0930.wav", "en", "he might even have been made amiable himself"),
    # Labelled German so the English-only ASR must refuse it.
    ("de_0890", "sense_and_sensibility_01_austen_64kb-0890.wav", "de",
     "unless to be rather cold hearted and rather selfish is to be ill disposed"),
)


def noisy(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(wave.size)
    noise *= np.sqrt(np.mean(wave ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return (wave + noise).astype(np.float32)


def band_limited(wave: np.ndarray, cutoff_hz: float, rate: int = 16000) -> np.ndarray:
    return sosfilt(butter(8, cutoff_hz, fs=rate, output="sos"), wave).astype(np.float32)


def build_evaluation_set(root: Path, seed: int = 0) -> Path:
    """clean/ + degraded/test/ + manifests/test_degraded.csv in the degradation helper's format."""
    rng = np.random.default_rng(seed)
    rows = []
    for index, (utt_id, clip, language, transcript) in enumerate(UTTERANCES):
        clean, rate = read_audio(LIBRIVOX / clip)
        clean_rel = f"clean/{language}/librivox/{utt_id}.wav"
        write_audio(root / clean_rel, clean, rate)
        if index % 2 == 0:
            degraded = noisy(clean, 5.0, rng)
            chain = [{"effect": "noise", "snr_db": 5.0, "noise": "white"}]
        else:
            degraded = noisy(band_limited(clean, 2000.0), 15.0, rng)
            chain = [{"effect": "band_limit", "method": "lowpass", "cutoff_hz": 2000.0},
                     {"effect": "noise", "snr_db": 15.0, "noise": "white"}]
        degraded_rel = f"degraded/test/{utt_id}.wav"
        write_audio(root / degraded_rel, degraded, rate)
        rows.append({"utt_id": utt_id, "path": degraded_rel, "duration_s": round(clean.size / rate, 4),
                     "sample_rate": rate, "channels": 1, "language": language, "speaker": "librivox",
                     "split": "test", "transcript": transcript, "clean_path": clean_rel,
                     "degradation": json.dumps(chain)})
    write_manifest(pd.DataFrame(rows, columns=[*COLUMNS, "clean_path", "degradation"]),
                   root / "manifests" / "test_degraded.csv")
    return root


def build_tiny_restorer(directory: Path, backbone_dir: Path, seed: int = 0, silent: bool = False) -> Path:
    """A tiny random Restorer saved with the real `save_pretrained`; `silent` zeroes the vocoder's output layer."""
    import torch

    from miipher2.model.random_backbone import TINY_FEATURE_LAYER, save_random_backbone
    from miipher2.model.restorer import Restorer

    if not (backbone_dir / "config.json").exists():
        save_random_backbone(backbone_dir, "mhubert-147", size="tiny", seed=0)
    torch.manual_seed(seed)
    restorer = Restorer.build(str(backbone_dir), "mhubert-147", feature_layer=TINY_FEATURE_LAYER, adapter_dim=16,
                              vocoder_size="tiny")
    if silent:
        with torch.no_grad():
            # Bias and weight-norm magnitude (original0) of the last conv: the vocoder emits tanh(0) = 0.
            for name, parameter in restorer.vocoder.named_parameters():
                if "conv_post" in name and (name.endswith("bias") or name.endswith("original0")):
                    parameter.zero_()
    restorer.save_pretrained(directory)
    return directory
