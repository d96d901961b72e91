"""Registering restorer versions: log, register, alias `challenger`, tag with lineage and metrics.

Aliases, not stages (deprecated in MLflow 3): `challenger` marks the newest candidate and
`champion` the version in service; only the promotion gate moves `champion`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

from miipher2.registry.pyfunc import RegistryError, log_restorer

CHALLENGER, CHAMPION = "challenger", "champion"


def client(tracking_uri: str | None = None):
    import mlflow

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise RegistryError("no MLflow tracking URI: set MLFLOW_TRACKING_URI or pass --tracking-uri "
                            "(e.g. sqlite:///mlflow.db locally)")
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri)


def register_restorer(model_dir: str | Path, model_name: str, *, dataset_revision: str | None = None,
                      git_commit: str | None = None, metrics: Mapping[str, float] | None = None,
                      tracking_uri: str | None = None, experiment: str | None = None, alias: str = CHALLENGER):
    """Log `model_dir` as a pyfunc model, register it as a new version of `model_name`, alias it.

    Registration failures raise (unlike training-time tracking, a model that silently fails to
    register would be lost). Returns the MLflow ModelVersion.
    """
    import mlflow

    from miipher2.tracking import ensure_experiment, open_run_ids

    mlflow_client = client(tracking_uri)
    tags = {"dataset_revision": dataset_revision or "unknown", "git_commit": git_commit or current_git_commit()}
    tags.update({f"metric.{name}": f"{value:.6g}" for name, value in (metrics or {}).items()})
    # Nested under the run the caller has open (a pipeline's parent run), in that run's experiment.
    active = mlflow.active_run()
    parent = active.info.run_id if active else (open_run_ids() or (None,))[-1]
    if parent and not experiment:
        experiment_id = mlflow_client.get_run(parent).info.experiment_id
    else:
        experiment_id = ensure_experiment(mlflow_client, experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                                          or "Default")
    with mlflow.start_run(run_name=f"register-{model_name}", experiment_id=experiment_id, parent_run_id=parent,
                          nested=active is not None) as run:
        mlflow.set_tags({"miipher2.step": "register", **tags})
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        info = log_restorer(model_dir, registered_model_name=model_name)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(model_name, version, key, value)
    mlflow_client.set_model_version_tag(model_name, version, "source_run", run.info.run_id)
    mlflow_client.set_registered_model_alias(model_name, alias, version)
    return mlflow_client.get_model_version(model_name, version)


def logged_model_id(version) -> str:
    """The MLflow 3 logged model behind a registered `version` ('' if none). MLflow 3.17's SQL store
    leaves `version.model_id` empty and names the logged model only in `source` (models:/<id>)."""
    if version.model_id:
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if re.fullmatch(r"models:/m-[0-9a-f]+", source) else ""


def version_by_alias(mlflow_client, model_name: str, alias: str):
    """The ModelVersion behind `alias`, or None when the alias is unset; a clear error when the model is unknown."""
    from mlflow.exceptions import MlflowException

    try:
        registered = mlflow_client.get_registered_model(model_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise  # the server failed (down, 5xx): not a problem with the name
        raise RegistryError(f"registered model {model_name!r} does not exist ({err.message}); "
                            f"register one with `miipher2 register`") from err
    if alias not in (registered.aliases or {}):
        return None
    try:
        return mlflow_client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        if server_failed(err):
            raise
        raise RegistryError(f"{model_name}@{alias} points to a version that cannot be read: {err.message}") from err


def server_failed(err) -> bool:
    """MLflow's client could not get an answer (server down, timeout, a proxy's 5xx page): the input may be fine.

    These are the REST client's own messages ("API request to ... failed with ..."); errors the
    server reports about the request itself carry an error code and a message of their own."""
    return "API request to" in str(getattr(err, "message", err))


def current_git_commit() -> str:
    """HEAD of the repository we run in, or $GIT_COMMIT (set by CI/images), or 'unknown'."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def recorded_dataset_revision(dvc_file: str | Path = "data.dvc") -> str | None:
    """The dataset's DVC hash as recorded in `data.dvc` (the version a commit pins), if present."""
    try:
        outs = yaml.safe_load(Path(dvc_file).read_text())["outs"]
        return str(outs[0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return None
