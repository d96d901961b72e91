"""`Tracker`: logs to one MLflow run without ever blocking or failing the work it records.

Each call appends a record to the run's spool (a file, `spool.py`) and returns; a background
thread delivers the records in order. When MLflow fails for a reason that may pass (connection
refused, timeout, 5xx, 429) the thread keeps the records and retries with exponential backoff;
when the server is back, it delivers the backlog in order, each metric with the time it was
measured. A record MLflow refuses for good (a 4xx: e.g. a parameter logged twice with different
values, a deleted run) is dropped with a warning, so one bad record never stalls the rest.

Closing waits for the backlog while the server answers; once it has been unreachable for
`flush_timeout_s` it stops waiting and leaves the records in the spool for the next tracker on
that directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from miipher2.tracking.spool import DEFAULT_MAX_BYTES, Spool, leftovers

log = logging.getLogger("miipher2.tracking")

FLUSH_TIMEOUT_S = 120.0
HUNG_REQUEST_S = 60.0  # beyond MLflow's own request timeout (runs.py), a request is hung
DROPPED_TAG = "tracking.dropped_metric_records"
_PARAM_LIMIT, _TAG_LIMIT = 6000, 8000  # MLflow's value limits
_BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}  # MLflow's log_batch limits


class TrackingWarning(UserWarning):
    """Tracking lost or delayed something; the work itself continues."""


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait before retry `n` (1-based): first, first*factor, ... capped at `max_s`."""

    first_s: float = 1.0
    factor: float = 2.0
    max_s: float = 300.0

    def delay(self, failures: int) -> float:
        return min(self.max_s, self.first_s * self.factor ** max(failures - 1, 0))


class Tracker:
    """Logs to one MLflow run; inactive (every call a no-op) without a run id."""

    def __init__(self, run_id: str | None = None, *, client=None, spool_dir: str | os.PathLike | None = None,
                 backoff: Backoff = Backoff(), flush_timeout_s: float = FLUSH_TIMEOUT_S,
                 max_spool_bytes: int = DEFAULT_MAX_BYTES):
        self.run_id = run_id
        self._closed = run_id is None
        self._warned = False
        if run_id is None:
            return
        if client is None:
            raise ValueError("an active Tracker needs an MlflowClient")
        self._temporary = spool_dir is None
        try:
            directory = Path(tempfile.mkdtemp(prefix="miipher2-mlflow-")) if spool_dir is None else Path(spool_dir)
            self.spool = Spool.for_run(directory, run_id, max_spool_bytes)
        except OSError as err:  # an unwritable output directory must not stop the work: spool elsewhere
            self._warn_once(f"cannot keep MLflow records in {spool_dir} ({err}); using a temporary directory")
            self._temporary = True
            directory = Path(tempfile.mkdtemp(prefix="miipher2-mlflow-"))
            self.spool = Spool.for_run(directory, run_id, max_spool_bytes)
        earlier = [] if self._temporary else list(leftovers(directory, max_spool_bytes))
        self._sender = _Sender(client, [*earlier, self.spool], backoff, flush_timeout_s)

    @property
    def active(self) -> bool:
        return self.run_id is not None

    # ---- what callers log ---------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: _truncate(v, _PARAM_LIMIT) for k, v in _flatten(params).items()}
        if flat:
            self._queue({"op": "params", "params": flat})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self._closed:
            return
        clean = {}
        for key, value in metrics.items():
            try:
                if value is not None:
                    clean[key] = float(value)
            except (TypeError, ValueError) as err:
                self._warn_once(f"metric {key!r} is not a number ({err}); not logged")
        if clean:
            self._queue({"op": "metrics", "metrics": clean, "step": int(step or 0), "ts": _now_ms()}, droppable=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if tags:
            self._queue({"op": "tags", "tags": {k: _truncate(v, _TAG_LIMIT) for k, v in tags.items()}})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file or a directory; uploaded from `path` when its turn comes, so keep it in place."""
        self._queue({"op": "artifact", "path": str(Path(path).absolute()), "artifact_path": artifact_path})

    def log_dataset(self, dataset, context: str = "training") -> None:
        """An `mlflow.data` dataset as the run's input: the UI's Dataset column shows it."""
        if self._closed:
            return
        try:
            entity = dataset._to_mlflow_entity()
        except Exception as err:  # noqa: BLE001 — a dataset MLflow cannot describe is not worth a crash
            self._warn_once(f"cannot describe dataset {getattr(dataset, 'name', dataset)!r} for MLflow ({err})")
            return
        fields = {name: getattr(entity, name) for name in ("name", "digest", "source_type", "source", "schema",
                                                           "profile")}
        self._queue({"op": "dataset", "dataset": fields, "context": context})

    def log_model_input(self, model_id: str) -> None:
        """An MLflow 3 logged model (e.g. a registered version's `model_id`) as the run's input."""
        self._queue({"op": "model", "model_id": model_id})

    # ---- lifecycle ----------------------------------------------------------------------------

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until everything logged so far reached MLflow; False if it did not within `timeout_s`."""
        return self._closed or self._sender.wait_delivered(timeout_s)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with `status` (delivered after every record before it); waits as the class says."""
        if self._closed:
            return
        if self.spool.dropped:
            self.set_tags({DROPPED_TAG: self.spool.dropped})
        self._queue({"op": "end", "status": status, "ts": _now_ms()})
        self._closed = True
        self._sender.close()
        left = self.spool.undelivered_bytes
        self._sender.release()
        if left:
            warnings.warn(f"MLflow stayed unreachable: {left} bytes of tracking records for run {self.run_id} were "
                          f"not delivered; they are kept in {self.spool.path} and a tracker started on "
                          f"{self.spool.path.parent} delivers them", TrackingWarning, stacklevel=2)
        elif self._temporary:
            shutil.rmtree(self.spool.path.parent, ignore_errors=True)

    def _warn_once(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, TrackingWarning, stacklevel=4)

    def _queue(self, record: dict[str, Any], droppable: bool = False) -> None:
        if self._closed:
            return
        try:
            queued = self.spool.append({"run": self.run_id, **record}, droppable=droppable)
        except (OSError, ValueError, TypeError) as err:  # disk full, unserialisable value: never stop the work
            self._warn_once(f"could not queue an MLflow record in {self.spool.path} ({type(err).__name__}: {err})")
            return
        if queued:
            self._sender.nudge()
        elif self.spool.dropped == 1:
            log.warning("MLflow backlog in %s reached %d bytes: dropping further metric records until the server "
                        "is back (the run gets tag %s)", self.spool.path, self.spool.max_bytes, DROPPED_TAG)


class _Sender:
    """The thread that delivers spooled records in order, retrying with backoff."""

    def __init__(self, client, spools: list[Spool], backoff: Backoff, give_up_after_s: float):
        self._client, self._spools = client, spools
        self._backoff, self._give_up_after_s = backoff, give_up_after_s
        self._abandoned = False
        self._cv = threading.Condition()
        self._work, self._busy, self._closing, self._done = True, False, False, False
        self._failures, self._retry_at, self._down_since = 0, 0.0, None
        self._thread = threading.Thread(target=self._run, name="miipher2-mlflow-sender", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        with self._cv:
            self._work = True
            self._cv.notify_all()

    def wait_delivered(self, timeout_s: float | None) -> bool:
        with self._cv:
            return self._cv.wait_for(
                lambda: self._done or (not self._work and not self._busy and all(s.empty for s in self._spools)),
                timeout_s) and all(s.empty for s in self._spools)

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        # A request the server never answers must not hold the work hostage: past the give-up time
        # (plus one request's worth) the daemon sender is left behind; what it had not
        # acknowledged stays in the spool for a later tracker.
        self._thread.join(self._give_up_after_s + HUNG_REQUEST_S)
        if self._thread.is_alive():
            self._abandoned = True  # if its request ever returns, it stops without touching the spools
            log.warning("an MLflow request has not returned after %.0f s; leaving it and keeping the undelivered "
                        "records", self._give_up_after_s + HUNG_REQUEST_S)

    def release(self) -> None:
        for spool in self._spools:
            spool.close()

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    now = time.monotonic()
                    if self._closing and self._down_since is not None and now - self._down_since >= self._give_up_after_s:
                        self._done = True
                        self._cv.notify_all()
                        return
                    waiting = self._failures and now < self._retry_at
                    if not waiting and (self._work or self._closing):
                        break
                    timeout = None
                    if waiting:
                        timeout = self._retry_at - now
                        if self._closing:
                            timeout = min(timeout, self._down_since + self._give_up_after_s - now)
                    self._cv.wait(timeout)
                self._work, self._busy = False, True
            failure = self._deliver_all()
            if self._abandoned:
                return
            with self._cv:
                self._busy = False
                now = time.monotonic()
                if failure is None:
                    if self._failures:
                        log.warning("MLflow is reachable again; the records kept meanwhile are delivered")
                    self._failures, self._down_since = 0, None
                else:
                    self._failures += 1
                    delay = self._backoff.delay(self._failures)
                    self._retry_at = now + delay
                    if self._down_since is None:
                        self._down_since = now
                        log.warning("MLflow unreachable (%s); keeping records in %s and retrying with backoff; "
                                    "the work continues", failure, self._spools[-1].path)
                self._cv.notify_all()
                if failure is None and self._closing and not self._work:
                    self._done = True
                    return

    def _deliver_all(self) -> str | None:
        """Deliver every spool in order; None when all are empty, else why delivery stopped."""
        for spool in self._spools:
            while pending := spool.pending():
                offsets, records = zip(*pending)
                for first, last in _groups(records):
                    failure = self._deliver(records[first:last])
                    if self._abandoned:
                        return "abandoned by close()"
                    if failure is not None:
                        return failure
                    spool.acknowledge(offsets[last - 1])
        return None

    def _deliver(self, group: list[dict[str, Any]]) -> str | None:
        try:
            _send(self._client, group)
            return None
        except Exception as err:  # noqa: BLE001 — whatever MLflow raises, the work goes on
            if not _is_permanent(err):
                return f"{type(err).__name__}: {_short(err)}"
            if len(group) > 1:  # one bad record must not take the others in its batch with it
                for record in group:
                    failure = self._deliver([record])
                    if failure is not None:
                        return failure
                return None
            log.warning("MLflow refused a %s record for run %s; dropping it (%s)", group[0]["op"], group[0]["run"],
                        _short(err))
            return None


def _groups(records) -> list[tuple[int, int]]:
    """[first, last) index ranges: consecutive metrics/params/tags of one run up to log_batch's limits; others alone."""
    groups: list[tuple[int, int]] = []
    size = 0
    for index, record in enumerate(records):
        op = record["op"]
        count = len(record[op]) if op in _BATCH_LIMITS else 0
        if groups and op in _BATCH_LIMITS:
            first, last = groups[-1]
            head = records[first]
            if head["op"] == op and head["run"] == record["run"] and size + count <= _BATCH_LIMITS[op]:
                groups[-1] = (first, index + 1)
                size += count
                continue
        groups.append((index, index + 1))
        size = count
    return groups


def _send(client, group: list[dict[str, Any]]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelInput, Metric, Param, RunTag

    first = group[0]
    run_id, op = first["run"], first["op"]
    if op == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, r["ts"], r["step"])
                                          for r in group for k, v in r["metrics"].items()])
    elif op == "params":
        client.log_batch(run_id, params=[Param(k, v) for r in group for k, v in r["params"].items()])
    elif op == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for r in group for k, v in r["tags"].items()])
    elif op == "artifact":
        path = Path(first["path"])
        if not path.exists():
            raise FileNotFoundError(f"{path} no longer exists")
        upload = client.log_artifacts if path.is_dir() else client.log_artifact
        upload(run_id, str(path), first["artifact_path"])
    elif op == "dataset":
        dataset = DatasetInput(Dataset(**first["dataset"]), tags=[InputTag("mlflow.data.context", first["context"])])
        client.log_inputs(run_id, datasets=[dataset])
    elif op == "model":
        client.log_inputs(run_id, models=[LoggedModelInput(first["model_id"])])
    elif op == "end":
        client.set_terminated(run_id, first["status"], end_time=first["ts"])
    else:
        raise ValueError(f"unknown tracking record {op!r}")


def _is_permanent(err: Exception) -> bool:
    """A refusal that retrying cannot change (4xx other than timeout/throttling, a vanished file)."""
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        status = err.get_http_status_code()
        return 400 <= status < 500 and status not in (408, 429)
    return isinstance(err, (FileNotFoundError, NotADirectoryError, PermissionError, ValueError, TypeError, KeyError))


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _truncate(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(err: Exception) -> str:
    text = str(getattr(err, "message", None) or err)
    return text if len(text) <= 300 else text[:297] + "..."


def _now_ms() -> int:
    return int(time.time() * 1000)
