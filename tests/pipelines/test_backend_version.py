"""The KFP backend's version, read by the real kfp.Client from a fake API server's healthz answer.

The server answers `GET /apis/v2beta1/healthz` exactly as the KFP API server does
(backend/src/apiserver/main.go: commit_sha, tag_name, multi_user, pipeline_store); the SDK's own
`get_kfp_healthz()` drops `tag_name`, which is why `backend_version` reads the raw answer.
"""

from __future__ import annotations

import contextlib
import http.server
import json

import kfp
import pytest

from pipelines.run import BackendTooOld, backend_version, require_backend
from tests.servers import serving


@contextlib.contextmanager
def fake_kfp_api(tag_name: str):
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 — the http.server API
            requests.append(self.path)
            if self.path.rstrip("/") != "/apis/v2beta1/healthz":
                self.send_error(404)
                return
            body = json.dumps({"commit_sha": "0123abc", "tag_name": tag_name, "multi_user": False,
                               "pipeline_store": "database"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with serving(Handler) as url:
        yield url, requests


@pytest.fixture
def client_for(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no kfp context file from the user's home

    def make(host: str) -> kfp.Client:
        with pytest.warns(FutureWarning):  # kfp.Client warns on every construction
            return kfp.Client(host=host)

    return make


@pytest.mark.parametrize("tag, ok", [("2.15.0", True), ("2.17.3", True), ("v2.16.1", True), ("3.0.0-rc.1", True),
                                     ("2.14.0", False), ("2.0.5", False), ("1.8.5", False)])
def test_backend_version_gate(client_for, tag, ok):
    with fake_kfp_api(tag) as (url, requests):
        client = client_for(url)
        assert backend_version(client) == tag
        if ok:
            assert require_backend(client, url) == tag
        else:
            with pytest.raises(BackendTooOld, match=rf"version {tag}; these pipelines need >= 2\.15"):
                require_backend(client, url)
    assert all(path.startswith("/apis/v2beta1/healthz") for path in requests)


def test_an_unreleased_backend_only_warns(client_for):
    with fake_kfp_api("unknown") as (url, _):
        with pytest.warns(UserWarning, match="cannot check"):
            assert require_backend(client_for(url), url) == "unknown"
