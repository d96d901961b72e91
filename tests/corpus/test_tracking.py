"""A corpus restoration in MLflow: one run for the plan (model pinned), a child per shard, the summary's numbers."""

import mlflow

from miipher2.corpus import restore_corpus
from miipher2.corpus.models import ModelRef
from miipher2.corpus.tracking import RUN_FILE, model_tags
from tests.corpus.conftest import build_corpus


def test_restore_corpus_logs_the_plan_shards_and_summary(tmp_path, model_dir, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)  # the default experiment, with artifacts in tmp_path
    mlflow.MlflowClient(uri).create_experiment("miipher2-restoration", artifact_location=(tmp_path / "a").as_uri())
    manifest = build_corpus(tmp_path / "data")
    run = restore_corpus(manifest, str(model_dir), tmp_path / "out", shards=2, batch_size=2, score=False)

    client = mlflow.MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("miipher2-restoration").experiment_id],
                                   "tags.pipeline_step = 'restoration'")
    assert parent.data.tags["model_uri"] == str(model_dir) and parent.data.tags["plan_id"] == run.plan.plan_id
    assert "registered_version" not in parent.data.tags  # a directory, not a registered model
    assert parent.data.params["shards"] == "2" and parent.data.metrics["files_restored"] == 5
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {c.data.tags["shard"]: c.data.metrics["restored"] for c in children} == {
        str(r.shard): r.restored for r in run.results}
    assert (tmp_path / "out" / "state" / RUN_FILE).is_file()


def test_registered_versions_are_named_by_their_pinned_uri():
    ref = ModelRef("models:/miipher2@champion", "models:/miipher2/7", "abc")
    assert model_tags(ref) == {"model_uri": "models:/miipher2/7", "model_identity": "abc",
                               "registered_model": "miipher2", "registered_version": "7"}
