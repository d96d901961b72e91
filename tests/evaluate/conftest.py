"""Fixtures for the evaluation tests: a three-utterance evaluation set and a tiny random model."""

from __future__ import annotations

import pytest

from tests.evaluate.builders import build_evaluation_set, build_tiny_restorer


@pytest.fixture(scope="session")
def eval_root(tmp_path_factory):
    return build_evaluation_set(tmp_path_factory.mktemp("evalset"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny_model")
    return build_tiny_restorer(base / "model", base / "backbone")
