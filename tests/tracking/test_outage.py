"""A real MLflow server crashes in the middle of a real training stage and comes back: no metric is lost.

Stage 1 trains on the tiny corpus with a metric every step. At step DOWN the server is killed
(SIGKILL, as a node failure would); steps go on while it is down; at step UP it restarts on the
same store and port. Afterwards the run holds every step, the outage's steps with the times
they were measured, and the run ended FINISHED.
"""

import time

import mlflow
import pytest

from miipher2.tracking import Backoff, tracked_run
from miipher2.train.config import load_config
from miipher2.train.stages import train_stage1
from tests.servers import MlflowServer
from tests.train.conftest import make_corpus, tiny_overrides

STEPS, DOWN, UP = 12, 3, 8


class ServerOutage:
    """Passes everything to the real tracker; crashes the server after step DOWN, restarts it at UP."""

    def __init__(self, tracker, server: MlflowServer):
        self.tracker, self.server = tracker, server
        self.backlog_while_down = 0
        self.restarted_ms = 0
        self.delivered_mid_stage = False

    def __getattr__(self, name):
        return getattr(self.tracker, name)

    def log_metrics(self, metrics, step=None):
        self.tracker.log_metrics(metrics, step=step)
        if step == DOWN:
            assert self.tracker.flush(60), "the server was up: steps before the crash must be delivered"
            self.server.kill()
        elif step == UP:
            self.backlog_while_down = len(self.tracker.spool.pending())
            self.restarted_ms = int(time.time() * 1000)
            self.server.start()
        elif step == STEPS - 1:  # still mid-stage: the backlog reaches the restarted server now
            self.delivered_mid_stage = self.tracker.flush(120)


@pytest.mark.slow
def test_every_metric_step_survives_a_server_crash_mid_stage(tmp_path):
    config = load_config("demo-cpu", tiny_overrides(tmp_path / "cache") + [
        f"stage1.steps={STEPS}", "stage1.log_every=1", "stage1.checkpoint_every=1000"])
    corpus = make_corpus(tmp_path / "corpus", count=4)
    out = tmp_path / "stage1"
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        with tracked_run("stage1", tracking_uri=server.url, experiment="outage", spool_dir=out,
                         system_metrics=False, backoff=Backoff(first_s=0.2, max_s=1.0)) as tracker:
            outage = ServerOutage(tracker, server)
            result = train_stage1(config, corpus, out, tracker=outage)

        assert result.step == STEPS
        assert outage.backlog_while_down == UP - DOWN, "the outage's steps waited in the spool on disk"
        assert outage.delivered_mid_stage, "the backlog was delivered once the server was back, during the stage"
        client = mlflow.MlflowClient(server.url)
        history = client.get_metric_history(tracker.run_id, "stage1/loss")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
        measured = {m.step: m.timestamp for m in history}
        assert all(measured[step] <= outage.restarted_ms for step in range(DOWN + 1, UP + 1)), \
            "buffered metrics carry the time they were measured, not the time they were delivered"
        run = client.get_run(tracker.run_id)
        assert run.info.status == "FINISHED"
        artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
        assert {"result.json", "config.yaml"} <= artifacts
        assert not list(out.glob("mlflow-pending-*")), "a delivered spool leaves nothing behind"
    finally:
        server.stop()
