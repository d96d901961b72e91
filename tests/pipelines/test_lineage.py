"""Lineage helpers: tags, git commit, image, KFP link, and the parent/child MLflow runs of one pipeline run."""

import dataclasses
import subprocess

import pytest

from miipher2.data.paths import path_component
from miipher2.data.versioning import shown_repo
from miipher2.lineage import (GIT_COMMIT_ENV, IMAGE_ENV, KFP_UI_ENV, Lineage, close_pipeline_run, git_commit,
                              image_reference, kfp_run_url, start_pipeline_run, step_run)
from miipher2.tracking.runs import without_credentials


@pytest.fixture(autouse=True)
def _restore_mlflow_tracking_uri(monkeypatch):
    """tracked_run sets mlflow's process-global tracking URI; don't leak ours into later tests."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)


LINEAGE = Lineage(git_commit="abc", dataset_revision="v2", dataset_md5="f00.dir", kfp_run_id="run-1",
                  backbone="mhubert-147", experiment="lineage-test")


def test_tags_name_code_data_run_and_backbone():
    assert LINEAGE.tags() == {"git_commit": "abc", "mlflow.source.git.commit": "abc", "dataset_revision": "v2",
                              "dataset_md5": "f00.dir", "kfp_run_id": "run-1", "backbone": "mhubert-147",
                              "mlflow.source.name": "miipher2 training pipeline", "mlflow.source.type": "JOB"}


def test_metadata_round_trip():
    assert Lineage.from_metadata(LINEAGE.to_metadata()) == LINEAGE
    full = dataclasses.replace(LINEAGE, dataset_commit="c0ffee", image="reg/miipher2@sha256:ab", kfp_run_url="u")
    assert Lineage.from_metadata(full.to_metadata()) == full


def test_metadata_of_older_artifacts_still_loads_but_required_facts_are_named():
    old = {k: v for k, v in LINEAGE.to_metadata().items() if k not in ("lineage.image", "lineage.dataset_commit")}
    assert Lineage.from_metadata(old).image == ""
    del old["lineage.dataset_md5"]
    with pytest.raises(ValueError, match="dataset_md5"):
        Lineage.from_metadata(old)


def test_resolved_commit_image_and_kfp_link_are_tags_when_known():
    full = dataclasses.replace(LINEAGE, dataset_commit="c0ffee", image="reg/miipher2@sha256:ab",
                               kfp_run_url="https://kfp/#/runs/details/run-1")
    tags = full.tags()
    assert tags["dataset_commit"] == "c0ffee" and tags["image"] == "reg/miipher2@sha256:ab"
    assert tags["kfp_run_url"] == "https://kfp/#/runs/details/run-1"
    assert "mlflow.source.git.commit" not in full.version_tags() and full.version_tags()["image"] == tags["image"]
    assert "image" not in LINEAGE.tags(), "unknown facts are left out, not recorded as empty"


def test_the_image_is_recorded_only_inside_it(monkeypatch):
    monkeypatch.setenv(IMAGE_ENV, "reg/miipher2@sha256:ab")
    monkeypatch.delenv(GIT_COMMIT_ENV, raising=False)
    assert image_reference() == "", "a local run names the pipeline's image but does not run in it"
    monkeypatch.setenv(GIT_COMMIT_ENV, "baked")
    assert image_reference() == "reg/miipher2@sha256:ab"


def test_kfp_run_link_needs_the_ui_address(monkeypatch):
    monkeypatch.delenv(KFP_UI_ENV, raising=False)
    assert kfp_run_url("run-1") == ""
    monkeypatch.setenv(KFP_UI_ENV, "https://kubeflow.example.com/pipeline/")
    assert kfp_run_url("run-1") == "https://kubeflow.example.com/pipeline/#/runs/details/run-1"


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
    assert without_credentials("https://user:tok@github.com/org/repo.git") == "https://github.com/org/repo.git"
    assert without_credentials("/local/path") == "/local/path"


def test_validation_fails_fast_when_the_configured_tracking_server_is_down(tmp_path, monkeypatch):
    from miipher2.steps import validate_data
    from miipher2.tracking import TrackingUnavailable
    from tests.servers import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    # The repository does not exist either: the tracking check comes first, before any data is read.
    with pytest.raises(TrackingUnavailable, match="is not usable"):
        validate_data(repo=str(tmp_path / "no-repo"), revision="main", remote="", workspace=str(tmp_path / "ws"),
                      report_dir=str(tmp_path / "report"), training_preset="demo-cpu", overrides=[], backbone="",
                      experiment="e", kfp_run_id="run-1")
    assert not (tmp_path / "ws").exists()
