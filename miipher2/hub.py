"""Backbone weights from the Hugging Face Hub: fetched once into the shared cache, then read offline.

On a cluster `HF_HOME` points into the shared workspace (ConfigMap `miipher2-settings`), and the
validate step, which runs alone before the training steps, downloads the configured backbone
there (`prefetch`). The GPU steps that start side by side then find it in the cache and switch
the Hub client to offline mode (`offline_if_cached`): no parallel downloads, no rate limits, no
dependence on the Hub staying reachable during a multi-day run. Gated models (Gemma 3n's audio
encoder) need a token: `HF_TOKEN` from Secret `miipher2-huggingface`, which huggingface_hub reads
from the environment; it is never a parameter or a log line.

Sources that are not Hub ids (a local directory, `random:<size>`) are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV = "HF_HUB_OFFLINE"


def hub_repo(source: str) -> str | None:
    """`source` as a Hub repository id, or None when it is a local directory or a random backbone."""
    if source.startswith("random:") or Path(source).expanduser().exists() or source.startswith(("/", ".")):
        return None
    return source if source.count("/") == 1 else None


def prefetch(source: str, revision: str | None = None) -> str | None:
    """Download the backbone `source` into the Hub cache (HF_HOME) unless it is there; returns its
    local directory (None: not a Hub id). Uses HF_TOKEN from the environment for gated models."""
    repo = hub_repo(source)
    if repo is None:
        return None
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=repo, revision=revision)


def is_cached(source: str, revision: str | None = None) -> bool:
    """Whether a complete snapshot of `source` is in the Hub cache (nothing is downloaded)."""
    repo = hub_repo(source)
    if repo is None:
        return False
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(repo_id=repo, revision=revision, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return False
    return True


def offline_if_cached(source: str) -> bool:
    """Switch this process (and the processes it starts) to the Hub's offline mode when `source`
    is in the cache; True when it did."""
    if not is_cached(source):
        return False
    import huggingface_hub.constants

    os.environ[OFFLINE_ENV] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True  # read at call time; the variable only at import
    return True


def offline_environment() -> dict[str, str]:
    """The environment that keeps other processes (e.g. a PyTorchJob's pods) offline like this one."""
    return {OFFLINE_ENV: "1"} if os.environ.get(OFFLINE_ENV) == "1" else {}
