"""Opening runs: untracked without a URI, nesting, experiment kind, failed bodies, fail-fast checks."""

import mlflow
import pytest

from miipher2.tracking import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, TrackingUnavailable, TrackingWarning,
                               require_tracking_server, tracked_run)
from tests.servers import free_port


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One sqlite store for the module: creating one runs MLflow's migrations (seconds each)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def test_no_tracking_uri_gives_inactive_tracker(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with tracked_run("x") as tracker:
        assert not tracker.active
        tracker.log_metrics({"loss": 1.0}, step=0)  # silently nothing
    assert require_tracking_server() is None


def test_dead_server_warns_and_continues():
    with pytest.warns(TrackingWarning, match="unreachable"):
        with tracked_run("x", tracking_uri=f"http://127.0.0.1:{free_port()}", start_timeout_s=0) as tracker:
            assert not tracker.active


def test_a_required_run_or_a_validation_step_fails_fast_on_a_dead_server(monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailable, match="unreachable"):
        with tracked_run("x", tracking_uri=dead, start_timeout_s=0, required=True):
            pass
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    with pytest.raises(TrackingUnavailable, match=rf"{dead} \(from MLFLOW_TRACKING_URI\) is not usable.*Connection"):
        require_tracking_server(attempts=1)


def test_local_store_logs_nested_runs_in_an_experiment_marked_for_model_training(uri):
    with tracked_run("parent", tracking_uri=uri, experiment="e", system_metrics=False,
                     tags={"git_commit": "abc"}) as parent:
        with tracked_run("child", tracking_uri=uri, system_metrics=False) as child:
            child.log_params({"train": {"lr": 1e-3, "steps": 5}})
            child.log_metrics({"loss": 0.5}, step=3)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.params == {"train.lr": "0.001", "train.steps": "5"}
    assert run.data.metrics["loss"] == 0.5
    assert run.info.status == "FINISHED" and run.info.run_name == "child"
    assert client.get_run(parent.run_id).data.tags["git_commit"] == "abc"
    experiment = client.get_experiment_by_name("e")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert run.info.experiment_id == experiment.experiment_id


def test_failed_body_marks_run_failed(uri):
    with pytest.raises(RuntimeError):
        with tracked_run("r", tracking_uri=uri, system_metrics=False) as tracker:
            raise RuntimeError("training crashed")
    assert mlflow.MlflowClient(uri).get_run(tracker.run_id).info.status == "FAILED"


def test_resuming_a_run_reopens_and_closes_it(uri):
    with tracked_run("parent", tracking_uri=uri, experiment="resumed", system_metrics=False) as first:
        pass
    with tracked_run("ignored", tracking_uri=uri, run_id=first.run_id, system_metrics=False) as again:
        again.log_metrics({"pesq": 2.0})
    run = mlflow.MlflowClient(uri).get_run(first.run_id)
    assert run.data.metrics["pesq"] == 2.0 and run.info.status == "FINISHED"


def test_ui_links_open_the_model_training_view_without_credentials():
    from miipher2.tracking import ui_url

    assert ui_url("https://user:pw@mlflow.example.com/", "7", "abc") == (
        "https://mlflow.example.com/#/experiments/7/runs/abc?workflowType=machine_learning")
    assert ui_url("sqlite:///mlflow.db", "1") == "http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning"
