"""Backbones from the Hub: fetched once (with a token for gated models) into the shared cache,
then read offline. Against a fake Hub on loopback, through the real huggingface_hub client."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from miipher2 import hub
from tests.servers import fake_hub

REPO = "acme/tiny-encoder"
FILES = {"config.json": b'{"model_type": "tiny"}', "model.safetensors": b"\x00" * 4096,
         "preprocessor_config.json": b"{}"}


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A fresh HF_HOME (the workspace's cache on a cluster), online, no token; restored after."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")

    def point_at(endpoint: str) -> None:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        importlib.reload(huggingface_hub.constants)  # paths and endpoint are read at import

    yield point_at
    monkeypatch.undo()
    importlib.reload(huggingface_hub.constants)


def test_which_sources_are_hub_repositories(tmp_path):
    assert hub.hub_repo("facebook/w2v-bert-2.0") == "facebook/w2v-bert-2.0"
    for local in ("random:tiny", str(tmp_path), "/models/w2v", "./backbones/x", "w2v-bert-2.0"):
        assert hub.hub_repo(local) is None, local
    assert hub.prefetch("random:tiny") is None


def test_a_gated_backbone_is_fetched_once_with_the_token_then_read_offline(hub_cache, monkeypatch):
    with fake_hub(FILES, REPO, token="hf_canary_token") as (endpoint, requests):
        hub_cache(endpoint)
        assert not hub.is_cached(REPO)
        with pytest.raises(Exception, match="401|restricted|gated|Gated"):
            hub.prefetch(REPO)  # no token: refused, like a gated model on the Hub
        monkeypatch.setenv("HF_TOKEN", "hf_canary_token")  # from Secret miipher2-huggingface
        local = hub.prefetch(REPO)
        assert {p.name: p.read_bytes() for p in Path(local).iterdir()} == FILES
        fetched = len(requests)
        assert hub.prefetch(REPO) == local  # a second step: nothing downloaded again
        assert not any(r.startswith("GET /acme") for r in requests[fetched:])

        assert hub.offline_if_cached(REPO) is True
        assert hub.offline_environment() == {"HF_HUB_OFFLINE": "1"}
        before = len(requests)
        from huggingface_hub import hf_hub_download

        assert open(hf_hub_download(REPO, "config.json"), "rb").read() == FILES["config.json"]
        assert len(requests) == before, "offline mode: the cached file is served without asking the Hub"


def test_an_uncached_backbone_stays_online(hub_cache, monkeypatch):
    with fake_hub(FILES, REPO) as (endpoint, requests):
        hub_cache(endpoint)
        assert hub.offline_if_cached(REPO) is False
        assert hub.offline_environment() == {}
        assert requests == []  # asking whether it is cached asks nobody
