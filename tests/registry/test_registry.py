"""Registry round trips against a local sqlite MLflow store: log, register, alias, load, predict, gate."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest

from miipher2.cli import main
from miipher2.registry import (CHALLENGER, CHAMPION, GateRule, RegistryError, promote, register_restorer,
                               to_model_input)
from tests.evaluate.builders import build_tiny_restorer

LSD_RULE = [GateRule("lsd", 0.0)]  # intrusive only: quick, and a silent vocoder is unmistakably worse


def test_register_alias_load_and_predict_anywhere(mlflow_store, tmp_path):
    # Build the model in a directory we delete afterwards: models:/ must not need the originals.
    model_dir = build_tiny_restorer(tmp_path / "model", tmp_path / "backbone")
    version = register_restorer(model_dir, "roundtrip", dataset_revision="abc123.dir", git_commit="deadbeef",
                                metrics={"dnsmos_ovrl": 3.1, "wer": 0.2})
    shutil.rmtree(tmp_path / "model")
    shutil.rmtree(tmp_path / "backbone")

    assert version.aliases == [CHALLENGER]
    assert version.tags["dataset_revision"] == "abc123.dir" and version.tags["git_commit"] == "deadbeef"
    assert version.tags["metric.dnsmos_ovrl"] == "3.1" and version.tags["metric.wer"] == "0.2"

    model = mlflow.pyfunc.load_model(f"models:/roundtrip@{CHALLENGER}")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["audio", "sample_rate"]
    wave = (0.1 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)).astype(np.float32)
    output = model.predict(to_model_input([wave, wave[:4000]], [16000, 16000]))
    assert list(output["sample_rate"]) == [24000, 24000]
    assert [len(a) for a in output["audio"]] == [12000, 6000]
    # The local backbone travelled inside the model (the originals are gone, yet it loaded).
    packaged = Path(mlflow.artifacts.download_artifacts(f"models:/roundtrip/{version.version}")) / "artifacts"
    assert sorted(p.name for p in packaged.rglob("*.safetensors")) == ["adapters.safetensors", "model.safetensors",
                                                                       "vocoder.safetensors"]
    assert not list(packaged.parent.rglob("*.pkl")), "the model must load from code, not from a pickle"


def test_evaluation_is_logged_to_mlflow(mlflow_store, models, eval_root, tmp_path):
    from miipher2.evaluate.run import evaluate_model

    evaluate_model(str(models["good"]), eval_root, out_dir=tmp_path, baseline=False, metric_groups=["intrusive"])
    run = mlflow.search_runs(experiment_names=["registry-tests"], filter_string="tags.`miipher2.step` = 'evaluate'",
                             output_format="list")[0]
    assert run.data.metrics["miipher2.lsd"] > 0 and run.data.metrics["clean.lsd"] == 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/report.html", "evaluation/report.md", "evaluation/utterances.csv"} <= artifacts


@pytest.mark.slow
def test_the_gate_promotes_better_refuses_worse_and_records_why(mlflow_store, models, eval_root, tmp_path):
    client = mlflow.MlflowClient()
    gate = dict(rules=LSD_RULE, out_dir=tmp_path / "gate", evaluate=None)

    # The first version has nothing to beat: it must clear the absolute floors.
    register_restorer(models["silent"], "gated")
    refused = promote("gated", eval_root, floors={"lsd": 10.0}, **gate)
    assert not refused.promote and "misses the floors" in refused.reason
    assert "champion" not in client.get_registered_model("gated").aliases
    first = promote("gated", eval_root, floors={"lsd": 200.0}, **gate)
    assert first.promote and str(client.get_model_version_by_alias("gated", CHAMPION).version) == "1"

    # A clearly better challenger (a real vocoder instead of a silent one) wins...
    register_restorer(models["good"], "gated")
    better = promote("gated", eval_root, **gate)
    assert better.promote, better.render()
    assert "better on lsd" in better.reason
    assert str(client.get_model_version_by_alias("gated", CHAMPION).version) == "2"
    tags = client.get_model_version("gated", "2").tags
    assert tags["promotion.decision"] == "promoted" and tags["promotion.against"] == "version 1"
    assert tags["promotion.timestamp"] and "lsd" in tags["promotion.summary"]
    assert client.get_model_version("gated", "1").tags["promotion.superseded_by"] == "2"

    # ... re-running is a no-op ...
    assert main(["promote", "--model", "gated", "--data", str(eval_root), "--rule", "lsd:0",
                 "--out", str(tmp_path / "again"), "--workers", "1"]) == 0

    # ... and a worse one is refused with exit code 3, the champion stays, the reason is recorded.
    register_restorer(models["silent"], "gated")
    code = main(["promote", "--model", "gated", "--data", str(eval_root), "--rule", "lsd:0",
                 "--out", str(tmp_path / "worse"), "--workers", "1"])
    assert code == 3
    assert str(client.get_model_version_by_alias("gated", CHAMPION).version) == "2"
    tags = client.get_model_version("gated", "3").tags
    assert tags["promotion.decision"] == "rejected" and tags["promotion.reason"].startswith("lsd may have dropped")

    # The champion evaluates straight from the registry.
    out = tmp_path / "champion-eval"
    assert main(["evaluate", "--model", "models:/gated@champion", "--data", str(eval_root), "--out", str(out),
                 "--metrics", "intrusive", "--no-baseline", "--max-utterances", "1", "--workers", "1"]) == 0
    assert (out / "audio" / "miipher2").is_dir() and (out / "report.html").is_file()


def test_missing_model_alias_and_broken_versions_give_clear_errors(mlflow_store, eval_root, tmp_path, capsys):
    with pytest.raises(RegistryError, match="registered model 'nobody' does not exist"):
        promote("nobody", eval_root, out_dir=tmp_path)
    client = mlflow.MlflowClient()
    client.create_registered_model("empty")
    with pytest.raises(RegistryError, match="no version with alias 'challenger'"):
        promote("empty", eval_root, out_dir=tmp_path)

    client.create_registered_model("broken")
    version = client.create_model_version("broken", source=(tmp_path / "gone").as_uri())
    client.set_registered_model_alias("broken", CHALLENGER, version.version)
    with pytest.raises(RegistryError, match=r"cannot load models:/broken/1"):
        promote("broken", eval_root, rules=LSD_RULE, out_dir=tmp_path)
    assert main(["promote", "--model", "broken", "--data", str(eval_root), "--out", str(tmp_path)]) == 2
    assert "cannot load models:/broken/1" in capsys.readouterr().err
    with pytest.raises(RegistryError, match="not a Miipher-2 model directory"):
        register_restorer(tmp_path, "broken")
