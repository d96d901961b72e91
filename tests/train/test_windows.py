"""Vocoder windows encoded with context (stage 3, stage 2 without the cache) against the whole item.

No family's features of a window are exactly those of the whole item: attention is global (or,
in USM, normalised cumulatively from the first frame) and w2v-BERT, mHuBERT and HuBERT-large /
WavLM normalise over the utterance. The tolerance is therefore relative to the same encoder's
sensitivity to real degradation: with `WINDOW_CONTEXT_SECONDS` of context, a window's features
must differ from the whole item's by less than half of what white noise at 30 dB SNR (the
mildest noise of the paper's training mix) changes in them. And context must matter: the window
encoded alone is at least twice as far off.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from miipher2.audio import write_audio
from miipher2.data.manifest import COLUMNS, manifest_path, write_manifest
from miipher2.model.backbone import FeatureCleaner
from miipher2.model.random_backbone import TINY_FEATURE_LAYER, save_random_backbone
from miipher2.train.data import TrainingDataset, collate, load_items, sample_rng, window_start
from miipher2.train.stages import cut_windows, window_context
from tests.train.conftest import RATE, voiced

FAMILY_PRESETS = ["mhubert-147", "hubert-large", "wavlm-large", "w2v-bert-2.0", "usm"]
WINDOW_SECONDS = 0.64


@pytest.fixture(scope="module")
def long_item(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    wave = voiced(6.0, 130, np.random.default_rng(3))
    write_audio(root / "clean/en/s/long.wav", wave, RATE)
    row = {"utt_id": "long", "path": "clean/en/s/long.wav", "duration_s": 6.0, "sample_rate": RATE, "channels": 1,
           "language": "en", "speaker": "s", "split": "train", "transcript": ""}
    write_manifest(pd.DataFrame([row], columns=list(COLUMNS)), manifest_path(root, "train"))
    return root, wave


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_window_with_context_is_close_to_the_whole_items_features(preset, long_item, tmp_path):
    root, wave = long_item
    directory = save_random_backbone(tmp_path / preset, preset, size="tiny")
    cleaner = FeatureCleaner.from_pretrained(str(directory), preset, TINY_FEATURE_LAYER, adapter_dim=8).eval()
    hop = cleaner.hop_length
    window = round(WINDOW_SECONDS * RATE / hop)
    items = load_items(root, "train", 10, 0)
    noise = np.random.default_rng(0).standard_normal(wave.size).astype(np.float32)
    noisy = wave + noise * np.sqrt(np.mean(wave ** 2) / np.mean(noise ** 2) / 10 ** 3)  # 30 dB SNR
    with torch.no_grad():
        whole, _ = cleaner(torch.from_numpy(wave)[None])
        whole_noisy, _ = cleaner(torch.from_numpy(noisy)[None])

    def window_features(context: int, epoch: int) -> torch.Tensor:
        dataset = TrainingDataset(root, items, seed=7, clean=True, target_rate=RATE, window_frames=window,
                                  frame_hop=hop, context=context)
        batch = collate([dataset[(0, epoch)]])
        with torch.no_grad():
            features, _ = cleaner(batch["clean"], batch["clean_lengths"])
        return cut_windows(features, batch["window_offset"].tolist(), window)[0]

    for epoch in range(3):  # three window positions
        start = window_start(len(wave) // hop, sample_rng(7, epoch, 0).random(), window)  # as the dataset draws it
        reference = whole[0, start: start + window]
        error = _relative(window_features(window_context(cleaner), epoch), reference)
        error_alone = _relative(window_features(0, epoch), reference)
        noise_change = _relative(whole_noisy[0, start: start + window], reference)
        assert error < 0.5 * noise_change, (preset, epoch, error, noise_change)
        assert error < 0.5 * error_alone, (preset, epoch, error, error_alone)
