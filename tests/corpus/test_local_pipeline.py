"""The restoration pipeline run by KFP's local runner with a registered model (by alias), then resumed by the CLI."""

import builtins
import json

import pandas as pd
import pytest

from tests.corpus.conftest import build_corpus

pytestmark = pytest.mark.slow

MODEL_NAME = "corpus-restorer"


@pytest.fixture
def registered(tmp_path, model_dir, monkeypatch):
    """`models:/corpus-restorer@challenger` in a throw-away sqlite MLflow store (env only, as in pods)."""
    import mlflow

    from miipher2.registry import register_restorer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "corpus-tests")
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("corpus-tests", artifact_location=(tmp_path / "artifacts").as_uri())
    version = register_restorer(model_dir, MODEL_NAME, git_commit="test")
    yield f"models:/{MODEL_NAME}@challenger", version.version
    mlflow.set_tracking_uri("")


def test_local_pipeline_run_with_registered_model_then_cli_resumes(tmp_path, registered, capsys):
    from miipher2.corpus import restore_corpus
    from pipelines.restoration import run_restoration_locally

    alias_uri, version = registered
    manifest = build_corpus(tmp_path / "data", extra_rows=[{"utt_id": "bad", "path": "clean/en/spk/bad.wav"}])
    (tmp_path / "data" / "clean/en/spk/bad.wav").write_bytes(b"not audio at all")
    out = tmp_path / "workspace" / "restored" / "test-corpus"
    print_before = builtins.print
    run_dir, outputs, _ = run_restoration_locally(
        {"manifest": manifest, "model": alias_uri, "output_dir": "restored/test-corpus", "shards": 2, "batch_size": 2,
         "workers": 2},
        tmp_path / "kfp", tmp_path / "workspace")
    assert builtins.print is print_before, "KFP's indenting print outlived the local run"

    assert {"plan-shards", "merge-shards"} <= set(outputs), sorted(outputs)
    assert outputs["plan-shards"]["parameterValues"]["Output"] == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"]["uri"] == f"models:/{MODEL_NAME}/{version}"  # the alias, pinned to its version
    assert summary["files"] == {"total": 6, "restored": 5, "restored_now": 5, "reused": 0, "failed": 1}
    assert summary["failures"][0]["source"].endswith("bad.wav")
    assert summary["scores"]["dnsmos_ovrl"]["count"] == 5
    restored = pd.read_csv(out / "manifests" / "test.csv")
    assert len(restored) == 5 and restored["dnsmos_ovrl"].between(1, 5).all()
    artifact = next(run_dir.rglob("merge-shards/restored_manifest"))
    assert artifact.read_text() == (out / "manifests" / "test.csv").read_text()
    shards = [o for name, o in outputs.items() if name.endswith("/restore-shard")]
    assert len(shards) == 2
    assert sum(o["artifacts"]["metrics"]["artifacts"][0]["metadata"]["restored"] for o in shards) == 5

    # The restoration is an MLflow run naming the version the alias resolved to, a child per shard.
    import mlflow

    (parent,) = mlflow.search_runs(experiment_names=["corpus-tests"], output_format="list",
                                   filter_string="tags.pipeline_step = 'restoration'")
    assert parent.data.tags["registered_model"] == MODEL_NAME
    assert parent.data.tags["registered_version"] == str(version)  # a tag is text
    assert parent.data.tags["model_uri"] == f"models:/{MODEL_NAME}/{version}"
    assert parent.data.metrics["files_restored"] == 5 and parent.data.metrics["files_failed"] == 1
    experiment_id = mlflow.get_experiment_by_name("corpus-tests").experiment_id
    (logged,) = mlflow.search_logged_models(experiment_ids=[experiment_id], output_format="list")  # the registered one
    # search_runs leaves model inputs out (MLflow 3.17): the run itself has them.
    inputs = mlflow.MlflowClient().get_run(parent.info.run_id).inputs.model_inputs
    assert [m.model_id for m in inputs] == [logged.model_id]
    children = mlflow.search_runs(experiment_names=["corpus-tests"], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["shard"] for c in children) == ["0", "1"]
    assert sum(c.data.metrics["restored"] for c in children) == 5
    assert {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "restoration")} >= {
        "restoration/summary.md", "restoration/summary.json", "restoration/test.csv"}

    # The CLI's library call picks up where the pipeline left: same plan, nothing left to restore.
    run = restore_corpus(manifest, alias_uri, out, shards=2)
    assert run.summary.files["restored_now"] == 0 and run.summary.files["reused"] == 5
