"""`miipher2 train ...` end to end: three stages, the exported model restores audio."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from miipher2.cli import main
from tests.train.conftest import tiny_overrides


def sets(cache, *extra):
    args = []
    for item in tiny_overrides(cache) + list(extra):
        args += ["--set", item]
    return args


def test_show_config_applies_overrides(capsys, shared_cache):
    assert main(["train", "show-config", "--config", "paper", "--set", "stage1.steps=10"]) == 0
    out = capsys.readouterr().out
    try:
        shown = yaml.safe_load(out)
    except yaml.YAMLError as err:
        raise AssertionError(f"show-config printed more than YAML:\n{out}") from err
    assert shown["stage1"]["steps"] == 10 and shown["stage2"]["steps"] == 200_000


def test_bad_override_exits_2_naming_the_field(capsys, corpus, tmp_path):
    code = main(["train", "stage1", "--data", str(corpus), "--out", str(tmp_path), "--set", "stage1.batch_size=0"])
    assert code == 2 and "stage1.batch_size" in capsys.readouterr().err


def test_stage3_without_earlier_stages_exits_2(capsys, corpus, shared_cache, tmp_path):
    code = main(["train", "stage3", "--data", str(corpus), "--out", str(tmp_path / "s3"), "--stage1", str(tmp_path / "a"),
                 "--stage2", str(tmp_path / "b"), *sets(shared_cache)])
    assert code == 2 and "encoder.json" in capsys.readouterr().err


@pytest.mark.slow
def test_three_stages_then_restore(capsys, corpus, shared_cache, tmp_path):
    from miipher2.model.restorer import Restorer

    common = ["--data", str(corpus), *sets(shared_cache, "stage1.steps=2", "stage2.steps=1", "stage3.steps=1")]
    assert main(["train", "stage1", "--out", str(tmp_path / "s1"), *common]) == 0
    assert main(["train", "stage2", "--out", str(tmp_path / "s2"), *common]) == 0
    assert main(["train", "stage3", "--out", str(tmp_path / "s3"), "--stage1", str(tmp_path / "s1"),
                 "--stage2", str(tmp_path / "s2"), "--model-out", str(tmp_path / "model"), *common]) == 0
    results = [json.loads((tmp_path / s / "result.json").read_text()) for s in ("s1", "s2", "s3")]
    assert [r["step"] for r in results] == [2, 1, 1]
    assert len({r["encoder_identity"] for r in results}) == 1

    restorer = Restorer.from_pretrained(tmp_path / "model", device="cpu")
    wave, rate = restorer.restore(np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    assert rate == 16000 and wave.shape == (8000,) and np.isfinite(wave).all()

    # Stage 3 refuses stage outputs trained for another encoder.
    other = sets(shared_cache, "encoder.feature_layer=2", "stage3.steps=1")
    code = main(["train", "stage3", "--data", str(corpus), "--out", str(tmp_path / "s3b"), "--stage1", str(tmp_path / "s1"),
                 "--stage2", str(tmp_path / "s2"), *other])
    assert code == 2 and "trained for encoder" in capsys.readouterr().err
