"""Lineage helpers: tags, git commit, and the parent/child MLflow runs of one pipeline run."""

import dataclasses
import subprocess

import pytest

from miipher2.data.paths import path_component
from miipher2.data.versioning import shown_repo
from miipher2.lineage import GIT_COMMIT_ENV, Lineage, close_pipeline_run, git_commit, start_pipeline_run, step_run


@pytest.fixture(autouse=True)
def _restore_mlflow_tracking_uri(monkeypatch):
    """tracked_run sets mlflow's process-global tracking URI; don't leak ours into later tests."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)


LINEAGE = Lineage(git_commit="abc", dataset_revision="v2", dataset_md5="f00.dir", kfp_run_id="run-1",
                  backbone="mhubert-147", experiment="lineage-test")


def test_tags_name_code_data_run_and_backbone():
    assert LINEAGE.tags() == {"git_commit": "abc", "mlflow.source.git.commit": "abc", "dataset_revision": "v2",
                              "dataset_md5": "f00.dir", "kfp_run_id": "run-1", "backbone": "mhubert-147"}


def test_metadata_round_trip():
    assert Lineage.from_metadata(LINEAGE.to_metadata()) == LINEAGE


def test_git_commit_prefers_the_image_value(monkeypatch):
    monkeypatch.setenv(GIT_COMMIT_ENV, "baked-in")
    assert git_commit() == "baked-in"


def test_git_commit_of_a_repository(tmp_path, monkeypatch):
    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    run = lambda *a: subprocess.run(a, cwd=tmp_path, check=True, capture_output=True, text=True)  # noqa: E731
    run("git", "init", "-q")
    run("git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x")
    head = run("git", "rev-parse", "HEAD").stdout.strip()
    assert git_commit(tmp_path) == head
    assert git_commit(tmp_path / "no-such-dir") == "unknown"


def test_parent_and_child_runs_share_the_lineage(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    lineage = start_pipeline_run(LINEAGE, "training run-1", params={"training_preset": "demo-cpu"})
    assert lineage.parent_run_id
    with step_run("train_pa", lineage) as tracker:
        tracker.log_metrics({"loss": 1.0})
    with step_run("register", lineage, into_parent=True) as parent:
        parent.log_metrics({"pesq": 2.0})

    client = mlflow.MlflowClient()
    parent_run = client.get_run(lineage.parent_run_id)
    assert parent_run.data.params["training_preset"] == "demo-cpu"
    assert parent_run.data.metrics["pesq"] == 2.0
    children = mlflow.search_runs(experiment_names=["lineage-test"], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{lineage.parent_run_id}'")
    assert [c.data.tags["pipeline_step"] for c in children] == ["train_pa"]
    for run in (parent_run, children[0]):
        assert {k: run.data.tags[k] for k in LINEAGE.tags()} == LINEAGE.tags()


@pytest.mark.parametrize("state, status", [("FAILED", "FAILED"), ("SUCCEEDED", "FINISHED"), ("CANCELED", "KILLED")])
def test_the_exit_handler_ends_the_parent_run_with_the_pipelines_state(tmp_path, monkeypatch, state, status):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    lineage = start_pipeline_run(LINEAGE, "training run-1")
    other = start_pipeline_run(dataclasses.replace(LINEAGE, kfp_run_id="run-2"), "training run-2")
    client = mlflow.MlflowClient()
    assert client.get_run(lineage.parent_run_id).info.status == "FINISHED"  # closed right after it opened

    error = "" if state == "SUCCEEDED" else "Task exit-handler-1 failed."
    assert close_pipeline_run("lineage-test", "run-1", state, error) == lineage.parent_run_id
    parent = client.get_run(lineage.parent_run_id)
    assert parent.info.status == status and parent.data.tags["pipeline_state"] == state
    assert parent.data.tags.get("pipeline_error", "") == error
    assert client.get_run(other.parent_run_id).info.status == "FINISHED"  # another run's parent is untouched


def test_closing_without_tracking_or_without_a_parent_run_is_a_no_op(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert close_pipeline_run("lineage-test", "run-1", "FAILED") is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert close_pipeline_run("no-such-experiment", "run-1", "FAILED") is None  # failed before validation


def test_untracked_runs_still_work(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    lineage = start_pipeline_run(LINEAGE, "untracked")
    assert lineage.parent_run_id == ""
    with step_run("validate", lineage) as tracker:
        tracker.log_metrics({"x": 1.0})  # a no-op, not an error
        assert not tracker.active


@pytest.mark.parametrize("text, expected", [("run-1", "run-1"), ("../../etc", "_.._etc"), ("a/b c", "a_b_c")])
def test_safe_directory_names(text, expected):
    assert path_component(text) == expected


def test_repository_urls_are_recorded_without_credentials():
    assert shown_repo("https://user:tok@github.com/org/repo.git") == "https://github.com/org/repo.git"
    assert shown_repo("/local/path") == "/local/path"
