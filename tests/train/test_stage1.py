"""Stage 1 end to end on the tiny corpus: it learns, and an interrupted run resumes exactly."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from safetensors.torch import load_file

from miipher2.train.checkpoint import list_checkpoints
from miipher2.train.loop import ResumeError
from miipher2.train.stages import train_stage1


class RecordingTracker:
    """Stands in for an MLflow run: keeps what the loop logs."""

    def __init__(self):
        self.metrics: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_params(self, params):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def losses(self) -> list[float]:
        return [m["stage1/loss"] for _, m in self.metrics if "stage1/loss" in m]

    def validation(self, name: str = "val/loss") -> dict[int, float]:
        return {step: m[name] for step, m in self.metrics if name in m}


def light_noise(wave, rng):
    return wave + 0.03 * rng.standard_normal(wave.size).astype(np.float32), [{"effect": "noise"}]


def fixed_noise(wave, rng):
    """The same noise for an utterance every epoch: a task a tiny model can memorise."""
    return light_noise(wave, np.random.default_rng(wave.size))


class SigtermAfter:
    """A degrader that sends this process SIGTERM while batch number `steps` is being built: the
    loop finishes that step, saves a checkpoint and returns."""

    def __init__(self, steps: int, batch_size: int):
        self.calls, self.at = 0, (steps - 1) * batch_size + 1

    def __call__(self, wave, rng):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return light_noise(wave, rng)


def test_tiny_model_overfits_a_few_utterances(corpus, tiny_config, tmp_path):
    """Stated factor: the stage-1 loss falls at least 5x within 60 steps on 4 utterances."""
    config = tiny_config("stage1.steps=60", "stage1.lr=1e-2", "stage1.schedule=constant", "stage1.warmup_steps=0",
                         "stage1.log_every=1", "stage1.checkpoint_every=1000", "data.max_seconds=10")
    tracker = RecordingTracker()
    from tests.train.conftest import make_corpus

    four = make_corpus(tmp_path / "four", count=4)
    result = train_stage1(config, four, tmp_path / "out", tracker=tracker, degrade=fixed_noise)
    losses = tracker.losses()
    assert result.step == 60 and len(losses) == 60
    assert losses[0] / min(losses[-5:]) >= 5.0, losses


def test_sigterm_then_resume_equals_an_uninterrupted_run(corpus, tiny_config, tmp_path):
    """With validation after every step: the trajectory, the validation scores and the best
    weights of N/2 + SIGTERM + resume + N/2 equal those of N straight steps."""
    config = tiny_config("stage1.steps=4", "stage1.checkpoint_every=100", "stage1.log_every=1", "stage1.eval_every=1",
                         "stage1.lr=1e-2")
    straight_tracker, resumed_tracker = RecordingTracker(), RecordingTracker()
    straight = train_stage1(config, corpus, tmp_path / "straight", tracker=straight_tracker, degrade=light_noise)
    assert straight.step == 4 and not straight.interrupted

    first = train_stage1(config, corpus, tmp_path / "resumed", tracker=resumed_tracker,
                         degrade=SigtermAfter(2, config.stage1.batch_size))
    assert first.interrupted and first.step == 2 and first.weights == {}
    assert [p.name for p in list_checkpoints(tmp_path / "resumed")] == ["step-00000002"]
    assert not (tmp_path / "resumed" / "adapters.safetensors").exists()  # not complete yet

    with pytest.raises(ResumeError, match="resume"):
        train_stage1(config, corpus, tmp_path / "resumed", degrade=light_noise)
    second = train_stage1(config, corpus, tmp_path / "resumed", tracker=resumed_tracker, degrade=light_noise,
                          resume=True)
    assert second.step == 4 and not second.interrupted
    assert (tmp_path / "resumed" / "result.json").is_file()

    straight_scores, resumed_scores = straight_tracker.validation(), resumed_tracker.validation()
    assert sorted(straight_scores) == [0, 1, 2, 3, 4] and resumed_scores.keys() == straight_scores.keys()
    for step, value in straight_scores.items():
        assert resumed_scores[step] == pytest.approx(value, rel=1e-5), step
    assert straight_scores[0] > min(straight_scores.values())  # it learns, on held-out data
    assert second.validation["best"]["step"] == straight.validation["best"]["step"]

    def assert_same_weights(a_file, b_file):
        a, b = load_file(str(a_file)), load_file(str(b_file))
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)

    last = "checkpoints/step-00000004/adapters.safetensors"
    assert_same_weights(tmp_path / "straight" / last, tmp_path / "resumed" / last)
    assert_same_weights(straight.weights["adapters.safetensors"], second.weights["adapters.safetensors"])
    assert_same_weights(second.weights["adapters.safetensors"], tmp_path / "resumed" / "best" / "adapters.safetensors")
