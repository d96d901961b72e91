"""Renders every kustomization of infra/k8s once per test session.

The overlays read credentials from git-ignored env files; the renders here use the committed
templates (placeholders, no values) in a temporary copy of the tree, so tests never need,
create or see real secrets.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.infra import manifests

ENVIRONMENTS = ("dev", "prod")
STAGES = (1, 2, 3)


@pytest.fixture(scope="session")
def k8s_tree(tmp_path_factory) -> Path:
    try:
        manifests.kustomize_command()
    except manifests.KustomizeMissing as error:
        if os.environ.get("CI"):
            pytest.fail(str(error))
        pytest.skip(str(error))
    tree = tmp_path_factory.mktemp("infra") / "k8s"
    shutil.copytree(manifests.K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for env in ENVIRONMENTS:
        for template in (tree / "secrets-template").glob("*.env.example"):
            shutil.copy(template, tree / "overlays" / env / "secrets" / template.name.removesuffix(".example"))
    return tree


@pytest.fixture(scope="session")
def rendered(k8s_tree) -> dict[str, list[dict]]:
    """Relative kustomization root ('overlays/dev', ...) -> rendered manifests."""
    return {root.relative_to(k8s_tree).as_posix(): manifests.render(root)
            for root in manifests.kustomization_roots(k8s_tree)}


@pytest.fixture(scope="session")
def platform(rendered):
    return lambda env: rendered[f"overlays/{env}"]


@pytest.fixture(scope="session")
def stage_job(rendered):
    def job(env: str, stage: int) -> dict:
        (doc,) = rendered[f"overlays/{env}/stage{stage}"]
        return doc
    return job
