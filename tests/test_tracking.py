import socket

import mlflow
import pytest

from miipher2.tracking import Tracker, TrackingWarning, tracked_run


def test_no_tracking_uri_gives_inactive_tracker(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with tracked_run("x") as tracker:
        assert not tracker.active
        tracker.log_metrics({"loss": 1.0}, step=0)  # silently nothing


def test_dead_server_warns_and_continues(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.warns(TrackingWarning, match="unreachable"):
        with tracked_run("x", tracking_uri=f"http://127.0.0.1:{port}") as tracker:
            assert not tracker.active


def test_local_store_logs_nested_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
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
    assert client.get_run(parent.run_id).data.tags["git_commit"] == "abc"


def test_failure_midway_disables_tracking_without_raising():
    tracker = Tracker("some-run")

    def boom(*_a, **_k):
        raise ConnectionError("server went away")

    with pytest.warns(TrackingWarning, match="server went away"):
        tracker._call("log_metrics", boom)
    assert not tracker.active


def test_failed_body_marks_run_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(RuntimeError):
        with tracked_run("r", tracking_uri=uri, system_metrics=False) as tracker:
            raise RuntimeError("training crashed")
    assert mlflow.MlflowClient(uri).get_run(tracker.run_id).info.status == "FAILED"
