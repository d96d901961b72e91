"""Real servers on loopback for tests (moto S3, mlflow), free ports, waiting for health; DVC repositories."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_s3_endpoint() -> Iterator[str]:
    """An S3-protocol server (moto) on 127.0.0.1 with an ephemeral port; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    """Wait for `url`/health to answer 200; fail with the server's log if it dies or never does."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(urllib.error.URLError, OSError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    pytest.fail(f"server at {url} not healthy after {timeout_s} s:\n{log.read_text()[-3000:]}")


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 over a sqlite store in `root`, artifacts proxied to
    `artifacts_destination` (default: a folder in `root`).

    `kill()` is a crash (SIGKILL to its process group); `start()` again brings it back on the same
    port and store, as a restarted pod would.
    """

    def __init__(self, root: Path, port: int | None = None, artifacts_destination: str | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.artifacts_destination = artifacts_destination or str(self.root / "artifacts")
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        argv = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", self.artifacts_destination]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        # No background job runner (seven huey worker processes): tests use tracking and registry only.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=env,
                                            start_new_session=True)
        wait_healthy(self.url, self.process, self.log)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

@contextlib.contextmanager
def running_mlflow_server(root: Path, artifacts_destination: str) -> Iterator[str]:
    """A started `MlflowServer` with artifacts proxied to `artifacts_destination`; yields its URL."""
    with MlflowServer(root, artifacts_destination=artifacts_destination) as server:
        yield server.url


def new_dataset_repo(repo: Path, remote: str, url: str) -> Callable[..., None]:
    """`git init` + `dvc init` at `repo`, its default DVC remote `remote` at `url`; returns a runner of
    commands in it (`run("dvc", "push")`: "dvc" is this environment's)."""
    dvc = str(Path(sys.executable).with_name("dvc"))

    def run(*args: str) -> None:
        subprocess.run([dvc if args[0] == "dvc" else args[0], *args[1:]], cwd=repo, check=True, capture_output=True)

    repo.mkdir(parents=True, exist_ok=True)
    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.email", "tests@example.com")
    run("git", "config", "user.name", "tests")
    run("dvc", "init", "-q")
    run("dvc", "remote", "add", "-d", remote, url)
    return run
