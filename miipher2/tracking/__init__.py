"""MLflow tracking that survives server restarts and never takes training down with it.

Every stage, evaluation and pipeline step logs through `tracked_run`. Tracking is on only when a
tracking URI is configured (`MLFLOW_TRACKING_URI` or the `tracking_uri` argument).

- A `Tracker` call never blocks and never raises: records go to an on-disk spool (bounded, in
  the stage's output directory) and a background thread delivers them in order, retrying with
  exponential backoff while the server is down (`tracker.py`, `spool.py`).
- Opening a run retries for a while; if the server stays away the work runs untracked, with a
  warning (`runs.py`).
- A pipeline's first step calls `require_tracking_server`, which fails fast instead: a server
  that is configured but unreachable is then found before any GPU work.
"""

from miipher2.tracking.runs import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, TrackingUnavailable, configured_tracking_uri,
                                    ensure_experiment, open_run_ids, require_tracking_server, server_reachable,
                                    tracked_run, ui_url)
from miipher2.tracking.tracker import Backoff, Tracker, TrackingWarning

__all__ = ["EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "Backoff", "Tracker", "TrackingUnavailable", "TrackingWarning",
           "configured_tracking_uri", "ensure_experiment", "open_run_ids", "require_tracking_server",
           "server_reachable", "tracked_run", "ui_url"]
