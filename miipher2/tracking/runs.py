"""Opening MLflow runs: experiments, nesting, start-up retries, and the fail-fast server check."""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from miipher2.tracking.tracker import FLUSH_TIMEOUT_S, Backoff, Tracker, TrackingWarning

# mlflow's HTTP client retries for minutes by default; our own backoff (tracker.py) does the
# waiting instead, so a single request should fail within seconds.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
START_TIMEOUT_S = 60.0
# MLflow 3's UI opens an experiment on its GenAI overview unless the experiment says otherwise.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# The runs `tracked_run` has open in this context, innermost last: a run opened inside another
# becomes its child without the caller passing ids around.
_open_runs: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("miipher2_open_runs", default=())


class TrackingUnavailable(RuntimeError):
    """A tracking server is configured but cannot be used; the message says which and why."""


def configured_tracking_uri(tracking_uri: str | None = None) -> str | None:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def server_reachable(uri: str, timeout_s: float = 3.0) -> bool:
    """For http(s) URIs, ask the server's /health endpoint; local stores are always reachable."""
    return _health_problem(uri, timeout_s) is None


def require_tracking_server(tracking_uri: str | None = None, attempts: int = 3) -> str | None:
    """Fail fast when a tracking server is configured but unusable; returns the URI (None: not configured).

    For a pipeline's first step: everything after it assumes its runs are recorded, and a dead
    server found here costs seconds instead of a training's worth of untracked GPU time.
    """
    uri = configured_tracking_uri(tracking_uri)
    if uri is None:
        return None
    _apply_http_defaults()
    problem = None
    for attempt in range(attempts):
        problem = _health_problem(uri) or _api_problem(uri)
        if problem is None:
            return uri
        if attempt + 1 < attempts:
            time.sleep(Backoff().delay(attempt + 1))
    source = "--tracking-uri" if tracking_uri else "MLFLOW_TRACKING_URI"
    raise TrackingUnavailable(f"MLflow tracking server {without_credentials(uri)} (from {source}) is not usable: {problem}. "
                              "Start it, fix the URI or credentials (MLFLOW_TRACKING_USERNAME/PASSWORD), or unset "
                              "MLFLOW_TRACKING_URI to run without tracking.")


def ensure_experiment(client, name: str) -> str:
    """The id of experiment `name`, created if needed, marked as a model-training experiment for MLflow's UI."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:  # created meanwhile by a step running beside this one
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def ui_url(tracking_uri: str, experiment_id: str, run_id: str | None = None,
           local_ui: str = "http://127.0.0.1:5000") -> str:
    """A link that opens the experiment's runs (or one run) in MLflow's model-training view.

    MLflow 3.17's UI shows GenAI or model-training pages by a switch kept per browser (GenAI by
    default) unless the URL says `workflowType=machine_learning`; the experiment tag
    `mlflow.experimentKind` is what UIs without that switch and MLflow's API go by. For a local
    store the link assumes `mlflow ui`'s default address.
    """
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else local_ui
    page = f"runs/{run_id}" if run_id else "runs"
    return f"{without_credentials(base).rstrip('/')}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"


def open_run_ids() -> tuple[str, ...]:
    """Ids of the runs `tracked_run` has open here, innermost last."""
    return _open_runs.get()


@contextlib.contextmanager
def tracked_run(
    run_name: str,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    system_metrics: bool = True,
    spool_dir: str | os.PathLike | None = None,
    required: bool = False,
    start_timeout_s: float = START_TIMEOUT_S,
    backoff: Backoff = Backoff(),
    flush_timeout_s: float = FLUSH_TIMEOUT_S,
) -> Iterator[Tracker]:
    """Open (or resume, with `run_id`) an MLflow run, nested under `parent_run_id` or the enclosing run.

    Yields a `Tracker`; an inactive one when tracking is not configured, or when the server
    stays unusable for `start_timeout_s` (unless `required`: a configured server must then open
    the run, else `TrackingUnavailable`).
    `spool_dir` keeps records the server could not take yet (use the stage's output directory:
    a retried step delivers what its predecessor could not). The run ends FAILED if the body
    raises, so reviewers see which step broke.
    """
    uri = configured_tracking_uri(tracking_uri)
    if uri is None:
        yield Tracker()
        return
    _apply_http_defaults()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = parent_run_id or (open_run_ids() or (None,))[-1] or _fluent_active_run_id()
    try:
        run_id = _open_run(client, uri, run_name, run_id=run_id, parent=parent, experiment=experiment, tags=tags,
                           timeout_s=start_timeout_s, backoff=backoff)
    except TrackingUnavailable as err:
        if required:
            raise
        warnings.warn(f"{err}; continuing without tracking", TrackingWarning, stacklevel=3)
        yield Tracker()
        return

    tracker = Tracker(run_id, client=client, spool_dir=spool_dir, backoff=backoff, flush_timeout_s=flush_timeout_s)
    monitor = _system_metrics(run_id, uri) if system_metrics else None
    token = _open_runs.set((*_open_runs.get(), run_id))
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        _open_runs.reset(token)
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()
        tracker.close(status)


def _open_run(client, uri: str, run_name: str, *, run_id, parent, experiment, tags, timeout_s: float,
              backoff: Backoff) -> str:
    """Create (or reopen) the run, retrying with backoff while the server is down; returns its id."""
    from mlflow.exceptions import MlflowException

    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        problem = _health_problem(uri)
        if problem is None:
            try:
                return _create_or_resume(client, run_name, run_id=run_id, parent=parent, experiment=experiment,
                                         tags=tags)
            except MlflowException as err:
                status = err.get_http_status_code()
                if 400 <= status < 500 and status not in (408, 429):
                    raise TrackingUnavailable(f"MLflow at {without_credentials(uri)} refused to open run "
                                              f"{run_name!r}: {err.message}") from err
                problem = err.message
            except Exception as err:  # noqa: BLE001 — anything else may pass too; never crash the caller
                problem = f"{type(err).__name__}: {err}"
        failures += 1
        pause = backoff.delay(failures)
        if time.monotonic() + pause > deadline:
            raise TrackingUnavailable(f"MLflow tracking server {without_credentials(uri)} is unreachable ({problem})")
        time.sleep(pause)


def _create_or_resume(client, run_name: str, *, run_id, parent, experiment, tags) -> str:
    from mlflow.tracking.context.registry import resolve_tags

    if run_id:
        client.update_run(run_id, status="RUNNING")
        if tags:
            for key, value in tags.items():
                client.set_tag(run_id, key, str(value))
        return run_id
    if parent and not experiment:
        experiment_id = client.get_run(parent).info.experiment_id  # children live in their parent's experiment
    else:
        experiment_id = ensure_experiment(client, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default")
    run_tags = {k: str(v) for k, v in (tags or {}).items()}
    if parent:
        run_tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags(run_tags))
    return run.info.run_id


def _system_metrics(run_id: str, uri: str):
    """MLflow's CPU/GPU/memory sampler for the run, unless MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says false."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() in ("false", "0"):
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception:  # noqa: BLE001 — optional (psutil, GPU libraries); never worth failing a run
        return None


def _fluent_active_run_id() -> str | None:
    """A run the caller opened with `mlflow.start_run` (a notebook, say) is a parent too."""
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active else None


def _apply_http_defaults() -> None:
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def _health_problem(uri: str, timeout_s: float = 3.0) -> str | None:
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            return None if response.status == 200 else f"/health answered HTTP {response.status}"
    except urllib.error.HTTPError as err:
        return f"/health answered HTTP {err.code}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return f"{type(err).__name__}: {getattr(err, 'reason', err)}"


def _api_problem(uri: str) -> str | None:
    """One cheap authenticated call: a reachable server with wrong credentials is not usable either."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return None
    except MlflowException as err:
        return err.message.splitlines()[0][:300]


def without_credentials(uri: str) -> str:
    """The URI without any user:password@ part."""
    if "://" in uri and "@" in uri.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return uri
