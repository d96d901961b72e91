"""Training stages are reused across pipeline runs when nothing they depend on changed.

The steps run for real (tiny config, tiny corpus, tracking off). A second run with the same
dataset, config and code publishes the first run's stage without calling the trainer; a changed
config trains a new stage; a concurrent run waits for the stage being trained instead of
training it twice.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import threading
from pathlib import Path

import pytest

from miipher2 import steps
from miipher2.lineage import Lineage
from miipher2.locking import LockHeld, exclusive_lock
from miipher2.reuse import code_version, learning_settings, stage_key, weights_digest
from miipher2.train import stages
from miipher2.train.config import load_config
from tests.train.conftest import make_corpus, tiny_overrides

LINEAGE = Lineage(git_commit="abc", dataset_revision="v1", dataset_md5="0123456789abcdef0123456789abcdef.dir",
                  kfp_run_id="run-1", backbone="w2v-bert-2.0", experiment="reuse")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def train(corpus, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = tiny_overrides(tmp_path / "cache") + ["stage1.steps=2", "stage1.checkpoint_every=1"]

    def run(kfp_run_id: str, *extra: str) -> steps.StepResult:
        lineage = dataclasses.replace(LINEAGE, kfp_run_id=kfp_run_id)
        return steps.train_adapters(data_root=str(corpus), lineage=lineage, training_preset="demo-cpu",
                                    overrides=overrides + list(extra), workspace=str(tmp_path / "workspace"),
                                    out_dir=str(tmp_path / kfp_run_id / "adapters"))

    return run


def test_a_second_run_reuses_the_stage_and_a_changed_config_trains_again(train, tmp_path, monkeypatch):
    first = train("run-1")
    assert first.metrics["reused"] == 0.0
    (work_dir,) = (tmp_path / "workspace" / "stages" / "train_pa").iterdir()
    assert json.loads((work_dir / "origin.json").read_text())["kfp_run_id"] == "run-1"

    def must_not_train(*args, **kwargs):
        raise AssertionError("the trainer ran although the stage was complete")

    with monkeypatch.context() as patch:
        patch.setattr(stages, "train_stage1", must_not_train)
        second = train("run-2")
    assert second.metrics["reused"] == 1.0
    assert {k: v for k, v in second.metrics.items() if k != "reused"} == \
           {k: v for k, v in first.metrics.items() if k != "reused"}
    published = {p.name: p.read_bytes() for p in Path(second.out_dir).iterdir()}
    assert published == {p.name: p.read_bytes() for p in Path(first.out_dir).iterdir()}

    changed = train("run-3", "stage1.lr=5e-4")
    assert changed.metrics["reused"] == 0.0
    assert len(list((tmp_path / "workspace" / "stages" / "train_pa").iterdir())) == 2


def test_runtime_settings_do_not_change_the_key_and_learning_settings_do():
    base = load_config("demo-cpu").to_dict()
    key = stage_key("train_pa", dataset_md5=LINEAGE.dataset_md5, config=base)
    runtime_only = load_config("demo-cpu", ["runtime.threads=4", "cache.dir=/elsewhere", "data.num_workers=8",
                                            "runtime.device=cuda"]).to_dict()
    assert stage_key("train_pa", dataset_md5=LINEAGE.dataset_md5, config=runtime_only) == key
    for change in ("stage1.lr=5e-4", "runtime.seed=1", "runtime.precision=bf16", "encoder.adapter_dim=32"):
        other = load_config("demo-cpu", [change]).to_dict()
        assert stage_key("train_pa", dataset_md5=LINEAGE.dataset_md5, config=other) != key, change
    assert stage_key("train_pa", dataset_md5="f" * 32 + ".dir", config=base) != key
    assert stage_key("train_pa", dataset_md5=LINEAGE.dataset_md5, config=base, code="other-code") != key
    assert stage_key("pretrain_vocoder", dataset_md5=LINEAGE.dataset_md5, config=base) != key
    assert "runtime.seed" in learning_settings(base) and "cache.dir" not in learning_settings(base)


def test_stage3_is_keyed_by_the_weights_it_starts_from(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for directory, content in ((one, b"a"), (two, b"b")):
        directory.mkdir()
        (directory / "adapters.safetensors").write_bytes(content)
        (directory / "result.json").write_text("{}")  # records do not count, weights do
    assert weights_digest(one) != weights_digest(two)
    (two / "adapters.safetensors").write_bytes(b"a")
    (two / "result.json").write_text('{"other": 1}')
    assert weights_digest(one) == weights_digest(two)


def test_code_version_is_a_hash_of_the_training_code(tmp_path, monkeypatch):
    import miipher2.reuse as reuse

    assert code_version() == code_version() and len(code_version()) == 16
    package = tmp_path / "miipher2"
    for name in ("data", "model", "train"):
        (package / name).mkdir(parents=True)
        (package / name / "x.py").write_text("x = 1\n")
    (package / "audio.py").write_text("")
    (package / "evaluate").mkdir()
    monkeypatch.setattr(reuse, "__file__", str(package / "reuse.py"))
    before = code_version()
    (package / "evaluate" / "y.py").write_text("changed = True\n")  # not training code
    assert code_version() == before
    (package / "train" / "x.py").write_text("x = 2\n")
    assert code_version() != before


def test_a_concurrent_run_waits_for_the_stage_and_then_reuses_it(train, tmp_path, monkeypatch):
    training, go = threading.Event(), threading.Event()
    real = stages.train_stage1

    def slow_trainer(*args, **kwargs):
        training.set()
        assert go.wait(120)
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "train_stage1", slow_trainer)
    results, errors = {}, []

    def run(name):
        try:
            results[name] = train(name)
        except Exception as err:  # noqa: BLE001 — reported below
            errors.append(err)

    first, second = threading.Thread(target=run, args=("run-a",)), threading.Thread(target=run, args=("run-b",))
    first.start()
    assert training.wait(120)
    (lock,) = (tmp_path / "workspace" / "stages").rglob(".lock")
    with pytest.raises(LockHeld, match="kfp_run_id=run-a"), exclusive_lock(lock, wait=False):
        pass
    second.start()
    second.join(timeout=2)
    assert second.is_alive() and "run-b" not in results, "run-b must wait while run-a trains the same stage"
    go.set()
    first.join()
    second.join()
    assert errors == []
    assert (results["run-a"].metrics["reused"], results["run-b"].metrics["reused"]) == (0.0, 1.0)


def _hold(path: str, ready, release) -> None:
    with exclusive_lock(path, owner={"kfp_run_id": "holder"}):
        ready.set()
        release.wait(30)


def test_a_lock_names_its_holder_and_dies_with_it(tmp_path):
    path = tmp_path / "stage" / ".lock"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(path), ready, release))
    holder.start()
    assert ready.wait(60)
    with pytest.raises(LockHeld, match="kfp_run_id=holder"), exclusive_lock(path, wait=False):
        pass
    holder.kill()  # a preempted pod: no clean exit, no unlock call
    holder.join()
    with exclusive_lock(path, wait=False):
        pass
