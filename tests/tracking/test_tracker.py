"""The Tracker's delivery thread against a client that fails on command: retry, order, refusals, closing.

The outage of a real MLflow server is tests/tracking/test_outage.py; here a double of the
MlflowClient lets each failure mode be switched on exactly when wanted.
"""

import threading

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from miipher2.tracking import Backoff, Tracker, TrackingWarning

FAST = Backoff(first_s=0.01, factor=2.0, max_s=0.05)


class FlakyClient:
    """Records what reaches 'MLflow'; raises `error` while it is set; can hold every call at a gate."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.error: Exception | None = None
        self.gate = threading.Event()
        self.gate.set()

    def _call(self, *entry):
        self.gate.wait()
        if self.error is not None:
            raise self.error
        self.calls.append(entry)

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if any(p.key == "bad" for p in params):  # like MLflow, a batch is refused whole
            raise MlflowException("Changing param values is not allowed", INVALID_PARAMETER_VALUE)
        for m in metrics:
            self._call(run_id, "metric", m.key, m.step, m.value, m.timestamp)
        for p in params:
            self._call(run_id, "param", p.key, p.value)
        for t in tags:
            self._call(run_id, "tag", t.key, t.value)

    def log_artifact(self, run_id, path, artifact_path=None):
        self._call(run_id, "artifact", path, artifact_path)

    def set_terminated(self, run_id, status, end_time=None):
        self._call(run_id, "end", status, end_time)

    def steps(self, run_id="r"):
        return [c[3] for c in self.calls if c[0] == run_id and c[1] == "metric"]


def test_metrics_logged_while_mlflow_fails_arrive_in_order_when_it_recovers(tmp_path):
    client = FlakyClient()
    tracker = Tracker("r", client=client, spool_dir=tmp_path, backoff=FAST)
    tracker.log_metrics({"loss": 1.0}, step=1)
    assert tracker.flush(30) and client.steps() == [1]

    client.error = MlflowException("API request to http://mlflow/ failed with exception ConnectionError")
    for step in range(2, 7):
        tracker.log_metrics({"loss": 1.0 / step}, step=step)
    assert not tracker.flush(0.3), "nothing can be delivered while the server fails"
    assert len(tracker.spool.pending()) == 5, "the backlog waits on disk"

    client.error = None
    tracker.log_metrics({"loss": 0.1}, step=7)
    assert tracker.flush(30)
    assert client.steps() == list(range(1, 8))
    timestamps = [c[5] for c in client.calls if c[1] == "metric"]
    assert timestamps == sorted(timestamps), "each metric keeps the time it was measured"
    tracker.close()
    assert client.calls[-1][1:3] == ("end", "FINISHED")
    assert list(tmp_path.iterdir()) == []


def test_logging_never_waits_for_a_hung_server(tmp_path):
    client = FlakyClient()
    client.gate.clear()  # every MLflow call hangs
    tracker = Tracker("r", client=client, spool_dir=tmp_path, backoff=FAST)
    worker = threading.Thread(target=lambda: [tracker.log_metrics({"loss": 1.0}, step=s) for s in range(200)])
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "log_metrics blocked on the hung server"
    client.gate.set()
    assert tracker.flush(30) and client.steps() == list(range(200))
    tracker.close()


def test_a_refused_record_is_dropped_without_stalling_the_rest(tmp_path):
    client = FlakyClient()
    tracker = Tracker("r", client=client, spool_dir=tmp_path, backoff=FAST)
    tracker.log_params({"lr": 0.1})
    tracker.log_params({"bad": 1})  # MLflow answers 400: retrying cannot help
    tracker.log_params({"batch": 8})
    tracker.log_metrics({"loss": 0.5}, step=3)
    tracker.log_artifact(tmp_path / "never-written.json")  # gone before its upload: dropped too
    tracker.close()
    assert [c[1:3] for c in client.calls] == [("param", "lr"), ("param", "batch"), ("metric", "loss"),
                                              ("end", "FINISHED")]


def test_closing_gives_up_on_a_dead_server_and_the_next_tracker_delivers(tmp_path):
    client = FlakyClient()
    client.error = ConnectionRefusedError("connection refused")
    tracker = Tracker("old", client=client, spool_dir=tmp_path, backoff=FAST, flush_timeout_s=0.2)
    tracker.log_metrics({"loss": 1.0}, step=1)
    with pytest.warns(TrackingWarning, match="not delivered"):
        tracker.close("FAILED")  # e.g. a preempted step whose server is also down
    assert tracker.spool.path.exists()

    client.error = None  # the retried step starts on the same directory
    retry = Tracker("new", client=client, spool_dir=tmp_path, backoff=FAST)
    retry.log_metrics({"loss": 0.5}, step=2)
    retry.close()
    assert [c[:2] for c in client.calls] == [("old", "metric"), ("old", "end"), ("new", "metric"), ("new", "end")]
    assert client.calls[1][2] == "FAILED"
    assert list(tmp_path.iterdir()) == []


def test_a_full_spool_drops_metrics_and_says_so_on_the_run(tmp_path):
    client = FlakyClient()
    client.error = ConnectionRefusedError("down")
    tracker = Tracker("r", client=client, spool_dir=tmp_path, backoff=FAST, max_spool_bytes=400)
    for step in range(20):
        tracker.log_metrics({"loss": 1.0}, step=step)
    dropped = tracker.spool.dropped
    assert dropped > 0
    client.error = None
    tracker.close()
    assert ("r", "tag", "tracking.dropped_metric_records", str(dropped)) in client.calls
    assert client.steps() == list(range(20 - dropped)), "the earliest records are kept, in order"


def test_an_inactive_tracker_does_nothing(tmp_path):
    tracker = Tracker()
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.close()
    assert not tracker.active and tracker.flush(0)


def test_unserialisable_values_warn_once_and_never_raise(tmp_path):
    client = FlakyClient()
    tracker = Tracker("r", client=client, spool_dir=tmp_path, backoff=FAST)
    with pytest.warns(TrackingWarning, match="not a number"):
        tracker.log_metrics({"loss": object()}, step=0)  # float(object()) fails before the spool
    tracker.close()


def test_an_unwritable_spool_directory_falls_back_to_a_temporary_one(tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    client = FlakyClient()
    with pytest.warns(TrackingWarning, match="temporary directory"):
        tracker = Tracker("r", client=client, spool_dir=blocked / "sub", backoff=FAST)
    tracker.log_metrics({"loss": 1.0}, step=1)
    tracker.close()
    assert client.steps() == [1]


def test_a_request_the_server_never_answers_does_not_hold_the_step(tmp_path, monkeypatch):
    import time

    from miipher2.tracking import tracker as tracker_module

    monkeypatch.setattr(tracker_module, "HUNG_REQUEST_S", 0.5)
    client = FlakyClient()
    client.gate.clear()  # every call hangs, as behind a server that accepted and never answered
    tracker = Tracker("r", client=client, spool_dir=tmp_path, backoff=FAST, flush_timeout_s=0.5)
    tracker.log_metrics({"loss": 1.0}, step=1)
    started = time.monotonic()
    with pytest.warns(TrackingWarning, match="not delivered"):
        tracker.close()
    assert time.monotonic() - started < 10
    client.gate.set()  # the hung call returns late; the records were kept for a later tracker meanwhile
