"""The `small` random encoder keeps its input in its features; `tiny` does not (why learn-cpu uses small)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from miipher2.model.backbone import FeatureCleaner
from miipher2.train.backbone import make_random_backbone
from tests.train.conftest import voiced


def frames_and_inputs(cleaner: FeatureCleaner, wave: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's features and its frontend's input frames (fbank pairs, each frame normalised
    as the encoder's first LayerNorm does: its mean and scale are lost to any encoder)."""
    batch = torch.from_numpy(wave)[None]
    pad = cleaner.input_padding
    inputs, mask = cleaner.frontend(torch.nn.functional.pad(batch, (pad, pad)), torch.tensor([len(wave) + 2 * pad]))
    with torch.no_grad():
        features, frames = cleaner(batch, use_adapters=False)
    n = min(int(frames[0]), int(mask.sum()))
    return features[0, :n].numpy(), torch.nn.functional.layer_norm(inputs[0, :n], inputs.shape[-1:]).numpy()


def held_out_r2(cleaner: FeatureCleaner) -> float:
    """R^2 of a ridge map from features to input frames, fitted on 8 signals, tested on 8 others."""
    rng = np.random.default_rng(0)
    waves = [voiced(3.0, f0, rng) + 0.01 * rng.standard_normal(48000).astype(np.float32)
             for f0 in np.linspace(80, 260, 16)]
    pairs = [frames_and_inputs(cleaner, w) for w in waves]
    fit_x, fit_y = (np.concatenate([p[i] for p in pairs[::2]]) for i in (0, 1))
    test_x, test_y = (np.concatenate([p[i] for p in pairs[1::2]]) for i in (0, 1))
    design = np.c_[fit_x, np.ones(len(fit_x))]
    weights = np.linalg.solve(design.T @ design + np.eye(design.shape[1]), design.T @ fit_y)
    predicted = np.c_[test_x, np.ones(len(test_x))] @ weights
    return 1 - ((predicted - test_y) ** 2).sum() / ((test_y - test_y.mean(0)) ** 2).sum()


def test_small_features_keep_the_filter_bank_and_tiny_ones_do_not(tmp_path):
    torch.set_num_threads(1)
    small = FeatureCleaner.from_pretrained(str(make_random_backbone("w2v-bert-2.0", tmp_path / "small", size="small")),
                                           "w2v-bert-2.0", feature_layer=2, adapter_dim=8)
    tiny = FeatureCleaner.from_pretrained(str(make_random_backbone("w2v-bert-2.0", tmp_path / "tiny", size="tiny")),
                                          "w2v-bert-2.0", adapter_dim=8)
    assert small.feature_dim == 256 and len(small.family.layers(small.encoder)) == 2
    assert held_out_r2(small) > 0.4
    assert held_out_r2(tiny) < 0.1


def test_small_exists_for_w2v_bert_only(tmp_path):
    with pytest.raises(ValueError, match="w2v-bert-2.0 only"):
        make_random_backbone("mhubert-147", tmp_path / "m", size="small")
