"""MLflow tracking that never takes training down with it.

Every stage, evaluation and pipeline step logs through `tracked_run`. Tracking is on only when a
tracking URI is configured (`MLFLOW_TRACKING_URI` or the `tracking_uri` argument). If the server
is unreachable at start, or fails mid-run, we warn once and carry on without logging: losing a
metric is better than losing a GPU-day of training.
"""

from __future__ import annotations

import contextlib
import logging
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# mlflow's HTTP client retries for minutes by default; a dead server should cost seconds.
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class TrackingWarning(UserWarning):
    """Tracking was switched off for this run; the work itself continues."""


def configured_tracking_uri(tracking_uri: str | None = None) -> str | None:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def server_reachable(uri: str, timeout_s: float = 3.0) -> bool:
    """For http(s) URIs, ask the server's /health endpoint; local stores are always reachable."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class Tracker:
    """Logs to one MLflow run; after the first failure it warns once and becomes a no-op."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def _call(self, what: str, fn, *args, **kwargs) -> Any:
        if not self.active:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 — any tracking failure must not stop the work
            warnings.warn(f"MLflow {what} failed ({type(err).__name__}: {err}); continuing without tracking",
                          TrackingWarning, stacklevel=3)
            self.run_id = None
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        flat = {k: _param_value(v) for k, v in _flatten(params).items()}
        self._call("log_params", mlflow.log_params, flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self._call("log_metrics", mlflow.log_metrics, clean, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        import mlflow

        self._call("set_tags", mlflow.set_tags, {k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        fn = mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact
        self._call("log_artifact", fn, str(path), artifact_path)


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
) -> Iterator[Tracker]:
    """Open (or resume, with `run_id`) an MLflow run, nested under `parent_run_id` or the active run.

    Yields a `Tracker`; an inactive one when tracking is not configured or the server is down.
    The run ends FAILED if the body raises, so reviewers see which step broke.
    """
    uri = configured_tracking_uri(tracking_uri)
    if uri is None:
        yield Tracker()
        return
    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not server_reachable(uri):
        warnings.warn(f"MLflow tracking server {uri} is unreachable; continuing without tracking", TrackingWarning,
                      stacklevel=3)
        yield Tracker()
        return

    import mlflow

    try:
        mlflow.set_tracking_uri(uri)
        active = mlflow.active_run()
        # Always choose the experiment explicitly: mlflow caches the last one per process, and a
        # child must live in its parent's experiment to show up nested in the UI.
        if parent_run_id and not experiment:
            experiment_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id
            mlflow.set_experiment(experiment_id=experiment_id)
        elif active is None and not run_id:
            mlflow.set_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "Default"))
        run = mlflow.start_run(
            run_id=run_id,
            run_name=None if run_id else run_name,
            parent_run_id=parent_run_id if not run_id else None,
            nested=active is not None,
            tags={k: str(v) for k, v in (tags or {}).items()},
            log_system_metrics=system_metrics,
        )
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"could not start an MLflow run at {uri} ({type(err).__name__}: {err}); continuing without tracking",
                      TrackingWarning, stacklevel=3)
        yield Tracker()
        return

    tracker = Tracker(run.info.run_id)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        with contextlib.suppress(Exception):
            mlflow.end_run(status=status)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
