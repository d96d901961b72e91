"""Validation inside training: the numbers it reports, the best weights it keeps, and that it
never changes what training does."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from miipher2.train.checkpoint import list_checkpoints
from miipher2.train.data import DataError
from miipher2.train.distributed import DistContext
from miipher2.train.stages import build_encoder, build_vocoder, train_stage1, train_stage2
from miipher2.train.validation import (BEST_DIR, BEST_RECORD, FeatureScorer, SpectralDistances, Validation,
                                       load_pairs, read_history, summary_metrics)
from tests.train.test_stage1 import RecordingTracker, light_noise

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture
def cleaner(tiny_config, shared_cache):
    return build_encoder(tiny_config(), shared_cache, torch.device("cpu")).cleaner


def independent_l1(cleaner, wave: np.ndarray, target: np.ndarray) -> float:
    """Mean |a - b| over the frames both waves have, straight from the cleaner's outputs."""
    with torch.no_grad():
        a, na = cleaner(torch.from_numpy(wave)[None], use_adapters=True)
        b, nb = cleaner(torch.from_numpy(target)[None], use_adapters=False)
    n = int(min(na[0], nb[0]))
    return float(np.abs(a[0, :n].numpy().astype(np.float64) - b[0, :n].numpy()).mean())


def test_gap_closed_is_exactly_zero_with_untrained_adapters(corpus, tiny_config, cleaner):
    pairs = load_pairs(corpus, tiny_config().validation)
    metrics = FeatureScorer.metrics(FeatureScorer(cleaner, pairs, CPU.device, contextlib.nullcontext()).sums(),
                                    len(pairs))
    assert metrics["gap_closed"] == 0.0  # adapters start at exactly zero output
    expected = np.mean([independent_l1(cleaner, p.degraded, p.clean) for p in pairs])
    assert metrics["l1"] == pytest.approx(expected, rel=1e-5)


def test_gap_closed_matches_an_independent_computation_once_adapters_change(corpus, tiny_config, cleaner):
    pairs = load_pairs(corpus, tiny_config().validation)
    scorer = FeatureScorer(cleaner, pairs, CPU.device, contextlib.nullcontext())
    untouched = [independent_l1(cleaner, p.degraded, p.clean) for p in pairs]
    torch.manual_seed(3)
    with torch.no_grad():
        for adapter in cleaner.adapters.adapters:
            adapter.up.weight.normal_(0, 0.05)
    cleaned = [independent_l1(cleaner, p.degraded, p.clean) for p in pairs]
    metrics = FeatureScorer.metrics(scorer.sums(), len(pairs))
    assert metrics["gap_closed"] == pytest.approx(1 - np.mean(cleaned) / np.mean(untouched), rel=1e-4, abs=1e-6)
    assert metrics["gap_closed"] != 0.0


def test_val_subset_is_fixed_cut_and_paired(corpus, tiny_config):
    config = tiny_config("validation.utterances=2", "validation.max_seconds=0.5").validation
    first, second = load_pairs(corpus, config), load_pairs(corpus, config)
    assert [p.utt_id for p in first] == [p.utt_id for p in second] and len(first) == 2
    for pair in first:
        assert len(pair.degraded) == len(pair.clean) == 8000
        assert not np.array_equal(pair.degraded, pair.clean)


def test_missing_val_manifest_names_the_file_and_the_way_out(tmp_path, tiny_config):
    from tests.train.conftest import make_corpus

    root = make_corpus(tmp_path / "no-val", count=4, val=0)
    with pytest.raises(DataError, match=r"val_degraded\.csv.*validation\.utterances=0"):
        load_pairs(root, tiny_config().validation)


def test_spectral_distances_against_hand_computed_values():
    distances = SpectralDistances(16000)
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(16000).astype(np.float32)) * 0.3
    assert distances.mel(wave, wave).item() == 0.0
    assert distances.mrstft(wave, wave).item() == 0.0
    # Twice the amplitude: every (unfloored) magnitude doubles. log-mel differs by log 2 everywhere;
    # spectral convergence is ||Y - 2Y|| / ||Y|| = 1, the log-magnitude term log 2.
    assert distances.mel(2 * wave, wave).item() == pytest.approx(math.log(2), rel=1e-4)
    assert distances.mrstft(2 * wave, wave).item() == pytest.approx(1 + math.log(2), rel=1e-4)


class NoisyScorer:
    """A scorer that draws from torch's RNG, as a stochastic vocoder (WaveFit) would; its score
    follows `scores` step by step."""

    metric, higher_is_better = "mel", False

    def __init__(self, scores):
        self.scores, self.draws = list(scores), []

    def sums(self):
        self.draws.append(torch.randn(3))
        return {"mel": self.scores.pop(0)}

    @staticmethod
    def metrics(sums, count):
        return {k: v / count for k, v in sums.items()}

    def examples(self, pairs, out_dir):
        return []


def test_validation_leaves_the_training_rng_alone_and_draws_a_fixed_stream(tmp_path):
    module = nn.Linear(2, 2)
    validation = Validation(NoisyScorer([3.0, 2.0]), [None], every=1, examples=0, ctx=CPU, tracker=RecordingTracker(),
                            out_dir=tmp_path, weights={"m.safetensors": module})
    torch.manual_seed(0)
    before = torch.get_rng_state()
    validation(1)
    validation(2)
    assert torch.equal(torch.get_rng_state(), before)
    first, second = validation.scorer.draws
    assert torch.equal(first, second)  # each validation starts the same seeded stream


def test_best_weights_are_kept_beside_the_latest_and_restored_at_the_end(tmp_path):
    module = nn.Linear(2, 2)
    tracker = RecordingTracker()
    validation = Validation(NoisyScorer([5.0, 2.0, 4.0]), [None], every=1, examples=0, ctx=CPU, tracker=tracker,
                            out_dir=tmp_path, weights={"m.safetensors": module})
    snapshots = {}
    for step in range(3):
        with torch.no_grad():
            module.weight.fill_(step)
        snapshots[step] = module.weight.clone()
        validation(step)
    record = json.loads((tmp_path / BEST_DIR / BEST_RECORD).read_text())
    assert record["step"] == 1 and record["value"] == 2.0 and record["metric"] == "val/mel"
    assert torch.equal(load_file(tmp_path / BEST_DIR / "m.safetensors")["weight"], snapshots[1])
    summary = validation.finish()
    assert torch.equal(module.weight, snapshots[1])  # what the stage publishes
    assert summary["best"]["step"] == 1 and summary["last"] == {"step": 2, "val/mel": 4.0}
    assert [m["val/mel"] for _, m in tracker.metrics] == [5.0, 2.0, 4.0]
    assert [r["val/mel"] for r in read_history(tmp_path)] == [5.0, 2.0, 4.0]
    assert summary_metrics(summary) == {"val_best_step": 1.0, "val_first/mel": 5.0, "val_best/mel": 2.0}


def test_validation_does_not_change_the_training_trajectory(corpus, tiny_config, tmp_path):
    """Validating after every step leaves the weights bit for bit as training without validation."""
    common = ("stage1.steps=3", "stage1.checkpoint_every=100", "stage1.lr=1e-2")
    validated = train_stage1(tiny_config(*common, "stage1.eval_every=1"), corpus, tmp_path / "validated",
                             tracker=RecordingTracker(), degrade=light_noise)
    plain = train_stage1(tiny_config(*common, "validation.utterances=0", "validation.examples=0"), corpus,
                         tmp_path / "plain", tracker=RecordingTracker(), degrade=light_noise)
    assert validated.validation["best"] is not None and plain.validation == {}
    assert not (tmp_path / "plain" / BEST_DIR).exists()
    a = load_file(list_checkpoints(tmp_path / "validated")[-1] / "adapters.safetensors")
    b = load_file(list_checkpoints(tmp_path / "plain")[-1] / "adapters.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage2_scores_resynthesis_and_writes_examples(corpus, tiny_config, tmp_path):
    config = tiny_config("stage2.steps=2", "stage2.eval_every=1", "stage2.checkpoint_every=100")
    tracker = RecordingTracker()
    result = train_stage2(config, corpus, tmp_path / "stage2", tracker=tracker)
    scores = {step: m for step, m in tracker.metrics if "val/mel" in m}
    assert sorted(scores) == [0, 1, 2]
    assert all(m["val/mel"] > 0 and m["val/mrstft"] > 0 for m in scores.values())
    best = result.validation["best"]
    assert best["metric"] == "val/mel" and best["value"] == min(m["val/mel"] for m in scores.values())
    examples = sorted(p.name for p in (tmp_path / "stage2" / "validation" / "examples").iterdir())
    assert len(examples) == 4 and {p.rsplit(".", 1)[1] for p in examples} == {"wav", "png"}
    published = load_file(result.weights["vocoder.safetensors"])
    kept = load_file(tmp_path / "stage2" / BEST_DIR / "vocoder.safetensors")
    assert all(torch.equal(published[k], kept[k]) for k in kept)


def test_stage2_val_mel_is_the_distance_of_an_independent_resynthesis(corpus, tiny_config, cleaner):
    """The score equals the distance computed by hand from the cleaner and the vocoder."""
    from miipher2.audio import read_audio
    from miipher2.train.validation import VocoderScorer

    config = tiny_config()
    pairs = load_pairs(corpus, config.validation)
    torch.manual_seed(0)
    vocoder = build_vocoder(config, cleaner)
    scorer = VocoderScorer(cleaner, vocoder, pairs, CPU.device, contextlib.nullcontext(),
                           sample_rate=config.vocoder.sample_rate, restoration=False)
    distances, expected = SpectralDistances(config.vocoder.sample_rate), []
    for pair in pairs:
        with torch.no_grad():
            features, frames = cleaner(torch.from_numpy(pair.clean)[None], use_adapters=False)
            fake = vocoder(features[:, : int(frames[0])])[0]
        real = torch.from_numpy(read_audio(pair.clean_path, sample_rate=config.vocoder.sample_rate)[0][: len(pair.clean)])
        n = min(len(fake), len(real))
        expected.append(distances.mel(fake[:n], real[:n]).item())
    assert VocoderScorer.metrics(scorer.sums(), len(pairs))["mel"] == pytest.approx(np.mean(expected), rel=1e-5)
