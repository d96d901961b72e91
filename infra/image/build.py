"""Build the pipeline image and the MLflow server image with docker, or with podman where no Docker engine runs.

    python infra/image/build.py                       # the pipeline image, on the CUDA PyTorch base
    python infra/image/build.py --local-base          # ... on a CPU base made here from Debian packages
    python infra/image/build.py --mlflow [--local-base]    # the MLflow server image (infra/mlflow)

Every image gets two tags: the name the pipeline and the manifests use (components/_base.py IMAGE,
infra/k8s/components/images) and NAME:<git commit> (`-dirty` when what the image copies has
uncommitted changes), and records the commit in the label org.opencontainers.image.revision.

The local bases stand in for images this machine cannot pull (only Debian's and PyPI's package
servers are reachable): `mmdebstrap` makes a Debian root file system, the engine imports it, and
infra/image/local-base.Dockerfile adds Python (and the CPU torch wheel from pip's find-links folder).
They are made once and reused by tag. podman runs as root with infra/image/podman/*.conf (see
infra/README.md); pip inside builds trusts the CA bundle pip is configured with here, if any.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "infra" / "image"
MLFLOW_DIR = REPO / "infra" / "mlflow"
PODMAN_ENV = {"CONTAINERS_CONF": str(IMAGE_DIR / "podman" / "containers.conf"),
              "CONTAINERS_STORAGE_CONF": str(IMAGE_DIR / "podman" / "storage.conf")}
DEBIAN_IMAGE = "localhost/miipher2-debian:bookworm"
LOCAL_PYTHON_BASE = "localhost/miipher2-base:python-3.11"
MLFLOW_IMAGE = "ghcr.io/miipher2/mlflow"
# What the pipeline image is made of: its recipe and what its build context admits.
PIPELINE_IMAGE_SOURCES = ("infra/image/Dockerfile", *(
    line[1:] for line in (IMAGE_DIR / "Dockerfile.dockerignore").read_text().splitlines() if line.startswith("!")))


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Engine:
    """docker, or podman with this repository's settings: the same commands, one program."""

    program: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def find(cls) -> Engine | None:
        """A running Docker engine if there is one, else podman (as root), else None."""
        if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
            return cls("docker")
        if shutil.which("podman") and os.geteuid() == 0:
            return cls("podman", PODMAN_ENV)
        return None

    @property
    def is_podman(self) -> bool:
        return self.program == "podman"

    def __call__(self, *args: str, capture: bool = False, check: bool = True,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([self.program, *args], env={**os.environ, **self.env, **(env or {})}, text=True,
                                capture_output=capture)
        if check and result.returncode != 0:
            detail = (result.stderr or "")[-4000:] if capture else "(output above)"
            raise BuildError(f"`{self.program} {' '.join(args[:3])} ...` failed with {result.returncode}: {detail}")
        return result

    def has_image(self, ref: str) -> bool:
        return self("image", "inspect", ref, capture=True, check=False).returncode == 0

    def inspect(self, ref: str, template: str) -> str:
        return self("image", "inspect", "--format", template, ref, capture=True).stdout.strip()

    def build(self, dockerfile: Path, context: Path, tags: Sequence[str], build_args: dict[str, str] | None = None,
              build_contexts: dict[str, Path] | None = None, target: str | None = None) -> None:
        """Build and tag. The engine keeps the layers: an unchanged step is not run again."""
        args = ["build", "-f", str(dockerfile)]
        if self.is_podman:
            args += ["--network", "host"]  # podman's default network has no route out here
        for tag in tags:
            args += ["-t", tag]
        for name, value in (build_args or {}).items():
            args += ["--build-arg", f"{name}={value}"]
        if self.is_podman and build_args and "GIT_COMMIT" in build_args:
            # podman 4 reuses a cached LABEL/ENV step whatever the ARG's value: when only files outside
            # the image change, the new build would carry the previous commit. Set both on the result.
            commit = build_args["GIT_COMMIT"]
            args += ["--label", f"org.opencontainers.image.revision={commit}"]
            if "MIIPHER2_GIT_COMMIT" in dockerfile.read_text():
                args += ["--env", f"MIIPHER2_GIT_COMMIT={commit}"]
        for name, path in (build_contexts or {}).items():
            args += ["--build-context", f"{name}={path}"]
        if target:
            args += ["--target", target]
        cert = pip_cert()
        if cert:
            args += ["--secret", f"id=pip_cert,src={cert}"]
        # BuildKit (docker's default since 23) reads secrets, build contexts and RUN mounts.
        self(*args, str(context), env=None if self.is_podman else {"DOCKER_BUILDKIT": "1"})

    @contextlib.contextmanager
    def docker_api(self, directory: Path) -> Iterator[str]:
        """The Docker Engine API this engine answers, as a DOCKER_HOST value (podman: a service of our own)."""
        if not self.is_podman:
            yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
            return
        socket, log_path = directory / "podman.sock", directory / "podman-service.log"
        with open(log_path, "w") as log:
            service = subprocess.Popen(["podman", "system", "service", "--time", "0", f"unix://{socket}"],
                                       env={**os.environ, **self.env}, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while not socket.exists():
                    if service.poll() is not None or time.monotonic() > deadline:
                        raise BuildError(f"podman system service did not start: {log_path.read_text()}")
                    time.sleep(0.2)
                yield f"unix://{socket}"
            finally:
                service.terminate()
                try:
                    service.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    service.kill()
                    service.wait()


def pip_cert() -> str | None:
    """The CA bundle this machine's pip trusts (PIP_CERT or pip's `cert` setting), for pip inside builds."""
    return _pip_setting("cert")


def _pip_setting(name: str) -> str | None:
    value = os.environ.get(f"PIP_{name.upper().replace('-', '_')}")
    if value is None:
        listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
        for line in listed.splitlines():
            key, _, raw = line.partition("=")
            if key.rsplit(".", 1)[-1] == name:
                value = raw.strip().strip("'\"")
    return value or None


def git_commit(sources: Sequence[str]) -> str:
    """HEAD's hash, with `-dirty` when `sources` (what an image copies) differ from it."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    status = subprocess.run(["git", "status", "--porcelain", "--", *sources], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    return head.strip() + ("-dirty" if status.strip() else "")


def commit_tag(image: str, commit: str) -> str:
    """NAME:<12 hex digits of the commit>[-dirty] for an image reference NAME[:TAG]."""
    name = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return f"{name}:{commit[:12]}{commit[40:]}"


def locked_version(package: str, lock: Path) -> str:
    for line in lock.read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise BuildError(f"{package} is not pinned in {lock}")


def ensure_debian_image(engine: Engine) -> str:
    """A minimal Debian bookworm image, made from Debian's packages once (mmdebstrap) and kept."""
    if engine.has_image(DEBIAN_IMAGE):
        return DEBIAN_IMAGE
    if not shutil.which("mmdebstrap"):
        raise BuildError("mmdebstrap is needed to make the local Debian base: apt-get install mmdebstrap")
    with tempfile.TemporaryDirectory(prefix="miipher2-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        # Package mirrors that serve snapshots have Release files past their Valid-Until date.
        made = subprocess.run(["mmdebstrap", "--variant=minbase", "--aptopt=Acquire::Check-Valid-Until \"false\"",
                               "bookworm", str(rootfs)])
        if made.returncode != 0:
            raise BuildError(f"mmdebstrap failed with {made.returncode} (output above)")
        engine("import", str(rootfs), DEBIAN_IMAGE)
    return DEBIAN_IMAGE


def local_torch_base() -> str:
    """The local CPU base's tag, named by the locked torch: a new pin makes a new base."""
    return f"localhost/miipher2-base:torch-{locked_version('torch', REPO / 'requirements.lock').replace('+', '-')}"


def ensure_local_base(engine: Engine, with_torch: bool) -> str:
    """The local stand-in for python:3.11-slim, or (with_torch) for the PyTorch image; made once, kept."""
    torch = locked_version("torch", REPO / "requirements.lock")
    tag = local_torch_base() if with_torch else LOCAL_PYTHON_BASE
    if engine.has_image(tag):
        return tag
    build_args = {"DEBIAN_IMAGE": ensure_debian_image(engine)}
    contexts = {}
    if with_torch:
        wheels = _pip_setting("find-links")
        if not wheels or not any(Path(wheels).glob(f"torch-{torch}-*.whl")):
            raise BuildError(f"the torch {torch} wheel is not in pip's find-links folder ({wheels}): "
                             "the local base installs it from there")
        build_args["TORCH_VERSION"] = torch
        contexts["wheels"] = Path(wheels)
    engine.build(IMAGE_DIR / "local-base.Dockerfile", IMAGE_DIR, [tag], build_args, contexts,
                 target=None if with_torch else "python")
    return tag


def build_pipeline_image(engine: Engine, image: str, local_base: bool) -> list[str]:
    """Build infra/image/Dockerfile; returns its tags (`image` first, then the commit tag)."""
    commit = git_commit(PIPELINE_IMAGE_SOURCES)
    tags = [image, commit_tag(image, commit)]
    build_args = {"GIT_COMMIT": commit}
    if local_base:
        build_args["BASE_IMAGE"] = ensure_local_base(engine, with_torch=True)
    engine.build(IMAGE_DIR / "Dockerfile", REPO, tags, build_args)
    return tags


def build_mlflow_image(engine: Engine, local_base: bool) -> list[str]:
    """Build infra/mlflow/Dockerfile, tagged with its mlflow version and the git commit."""
    commit = git_commit(["infra/mlflow"])
    version = locked_version("mlflow", MLFLOW_DIR / "requirements.txt")
    tags = [f"{MLFLOW_IMAGE}:{version}", commit_tag(MLFLOW_IMAGE, commit)]
    build_args = {"GIT_COMMIT": commit}
    if local_base:
        build_args["BASE_IMAGE"] = ensure_local_base(engine, with_torch=False)
    engine.build(MLFLOW_DIR / "Dockerfile", MLFLOW_DIR, tags, build_args)
    return tags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local-base", action="store_true",
                        help="build on a CPU base made here from Debian packages (no image pulls)")
    parser.add_argument("--mlflow", action="store_true", help="build the MLflow server image instead")
    parser.add_argument("--image", default=None, help="pipeline image name:tag (default: components._base.IMAGE)")
    args = parser.parse_args(argv)

    engine = Engine.find()
    if engine is None:
        print("no container engine: neither a running Docker engine nor podman as root", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        if args.mlflow:
            tags = build_mlflow_image(engine, args.local_base)
        else:
            if args.image is None:
                sys.path.insert(0, str(REPO))
                from components._base import IMAGE

                args.image = IMAGE
            tags = build_pipeline_image(engine, args.image, args.local_base)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"built {', '.join(tags)} with {engine.program} in {time.perf_counter() - started:.0f} s "
          f"({engine.inspect(tags[0], '{{.Size}}')} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
