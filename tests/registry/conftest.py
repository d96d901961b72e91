"""A throw-away sqlite MLflow store, an evaluation set and tiny random restorers (good and silent)."""

from __future__ import annotations

import os

import pytest

from tests.evaluate.builders import build_evaluation_set, build_tiny_restorer


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """MLFLOW_TRACKING_URI -> sqlite in a temp dir; artifacts in the same temp dir (not ./mlruns)."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("registry-tests", artifact_location=(root / "artifacts").as_uri())
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "registry-tests"
    yield uri
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"] or "")


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    return build_evaluation_set(tmp_path_factory.mktemp("evalset"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{'good': dir, 'silent': dir}: the same random restorer, and one whose vocoder weights are zero."""
    base = tmp_path_factory.mktemp("models")
    return {"good": build_tiny_restorer(base / "good", base / "backbone", seed=0),
            "silent": build_tiny_restorer(base / "silent", base / "backbone", seed=0, silent=True)}
