"""Container engine helpers for the tests that build and run our images (docker, or podman as root)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGE_USER = 1000  # the images' user (infra/image/Dockerfile, infra/mlflow/Dockerfile)


def _load_build_module():
    spec = importlib.util.spec_from_file_location("image_build", REPO / "infra" / "image" / "build.py")
    module = sys.modules["image_build"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


build = _load_build_module()


def engine_or_skip():
    """The container engine (the `engine` fixture), or a skip saying why there is none."""
    found = build.Engine.find()
    if found is None:
        pytest.skip("no container engine: neither a running Docker engine nor podman as root "
                    "(`make setup` installs podman on Debian)")
    return found


def run_in(engine, image: str, *command: str, mounts=(), env=None, network_host=False, detach_name=None):
    """`run --rm` the image; mounts are (host path, container path, "ro" | "rw")."""
    args = ["run", "--rm"]
    if detach_name:
        args += ["-d", "--name", detach_name]
    if network_host:
        args += ["--network", "host"]
    for source, target, mode in mounts:
        args += ["-v", f"{source}:{target}:{mode}"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return engine(*args, image, *command, capture=True, check=False)


def hand_to_image_user(path: Path) -> None:
    """Containers run as the image's user: give it what they write into, as fsGroup does on a cluster."""
    if os.geteuid() == 0:
        for item in [path, *path.rglob("*")]:
            os.lchown(item, IMAGE_USER, IMAGE_USER)
    else:
        subprocess.run(["chmod", "-R", "a+rwX", str(path)], check=True)


def locked_pins(path: Path) -> dict[str, str]:
    """{normalised name: version} of a lock file."""
    lines = [line.split("==") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {name.lower().replace("_", "-"): version for name, version in lines}
