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


@contextlib.contextmanager
def serving(handler: type) -> Iterator[str]:
    """An `http.server` request handler class served on a free loopback port; yields its URL."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def private_git_server(repo_dir: Path, username: str, token: str) -> Iterator[str]:
    """A git smart-HTTP server (dulwich) on 127.0.0.1 serving `repo_dir` only to `username:token`
    (HTTP Basic, as GitHub/GitLab take tokens); yields the clone URL. Records what clients sent."""
    import base64
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from dulwich.repo import Repo
    from dulwich.server import DictBackend
    from dulwich.web import make_wsgi_chain

    git = make_wsgi_chain(DictBackend({"/": Repo(str(repo_dir))}))
    expected = "Basic " + base64.b64encode(f"{username}:{token}".encode()).decode()
    seen: list[str] = []

    def app(environ, start_response):
        seen.append(environ.get("PATH_INFO", "") + "?" + environ.get("QUERY_STRING", ""))
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Length", "0")])
            return [b""]
        return git(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def fake_hub(files: dict[str, bytes], repo_id: str, token: str | None = None) -> Iterator[tuple[str, list[str]]]:
    """A Hugging Face Hub on 127.0.0.1 serving one model repository (`files`, at one commit) through
    the endpoints `huggingface_hub.snapshot_download` uses: revision info, tree listing, and
    HEAD/GET of resolved files. With `token`, it answers 401 to requests without that bearer token
    (a gated model). Yields (endpoint for HF_ENDPOINT, request log "METHOD path")."""
    import hashlib
    import http.server
    import json

    commit = hashlib.sha1(b"".join(sorted(files.values()))).hexdigest()
    blobs = {name: hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() for name, data in files.items()}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bytes = b"", headers: dict | None = None, status: int = 200, send_body: bool = True):
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _route(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            seen.append(f"{self.command} {path}")
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                self._answer(b'{"error": "Access to model is restricted"}', {"X-Error-Code": "GatedRepo"}, 401,
                             send_body)
                return
            if path.startswith(f"/api/models/{repo_id}/revision/"):
                info = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": name} for name in files]}
                self._answer(json.dumps(info).encode(), {"Content-Type": "application/json"}, send_body=send_body)
            elif path.startswith(f"/api/models/{repo_id}/tree/"):
                tree = [{"type": "file", "path": name, "size": len(data), "oid": blobs[name]}
                        for name, data in files.items()]
                self._answer(json.dumps(tree).encode(), {"Content-Type": "application/json"}, send_body=send_body)
            elif path.startswith(f"/{repo_id}/resolve/"):
                name = path.split("/resolve/", 1)[1].split("/", 1)[1]
                if name not in files:
                    self._answer(b"", {"X-Error-Code": "EntryNotFound"}, 404, send_body)
                    return
                self._answer(files[name], {"X-Repo-Commit": commit, "ETag": f'"{blobs[name]}"'}, send_body=send_body)
            else:
                self._answer(b"", {}, 404, send_body)

        def do_GET(self):  # noqa: N802 — the http.server API
            self._route(send_body=True)

        def do_HEAD(self):  # noqa: N802
            self._route(send_body=False)

        def log_message(self, *args):
            pass

    with serving(Handler) as url:
        yield url, seen


SERVER_SETTINGS = {"MLFLOW_S3_ENDPOINT_URL", "MLFLOW_S3_IGNORE_TLS"}


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
        # The server is not a client of itself: no client settings (tracking URI, credentials), but
        # its own S3 endpoint (MLFLOW_S3_ENDPOINT_URL: where it proxies artifacts).
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") or k in SERVER_SETTINGS}
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
        _forget_global_tracking_uri(self.url)
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


def _forget_global_tracking_uri(url: str) -> None:
    """mlflow keeps a process-global tracking URI, which the library sets (registry.client) and no test
    restores: pointing at a stopped server, it made later tests' fluent calls fail with 'connection refused'."""
    from mlflow.tracking._tracking_service import utils

    if utils._tracking_uri == url:
        utils._tracking_uri = None


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
