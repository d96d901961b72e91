"""Clean-feature cache: the frozen encoder's features of every clean item, computed once.

Stage 1 needs them as targets and stage 2 as vocoder inputs; both would otherwise run the
encoder on every clean item at every step. Features depend only on the frozen encoder, so
the cache lives under a directory named by the encoder's identity: preset, source, feature
layer and a fingerprint of the encoder weights. Change any of them and the cache is a
different directory; a stale hit is impossible by construction.

    <cache>/features/<identity>/<2 hex>/<sha1(item key)>.safetensors   fp16 [frames, dim]

One small file per item: written atomically (temp file + rename), so concurrent writers
(stage 1 and stage 2 started side by side, or DDP ranks) never expose half a file, and a
reader needs no index.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from miipher2.files import atomic_file


def encoder_identity(preset: str, source: str, feature_layer: int, fingerprint: str) -> str:
    """A short, stable name for one frozen encoder."""
    description = json.dumps({"preset": preset, "source": source, "feature_layer": feature_layer,
                              "weights": fingerprint}, sort_keys=True)
    return hashlib.sha256(description.encode()).hexdigest()[:20]


class FeatureCache:
    def __init__(self, root: str | os.PathLike, identity: str):
        self.identity = identity
        self.directory = Path(root) / "features" / identity

    def path_for(self, key: str) -> Path:
        name = hashlib.sha1(key.encode()).hexdigest()
        return self.directory / name[:2] / f"{name}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if k not in self]

    def get(self, key: str) -> torch.Tensor | None:
        """Features as float32 [frames, dim], or None on a miss (or an unreadable file)."""
        path = self.path_for(key)
        try:
            tensors = load_file(str(path))
        except FileNotFoundError:
            return None
        except (SafetensorError, OSError):  # damaged by something outside our atomic writes
            return None
        return tensors["features"].float()

    def put(self, key: str, features: torch.Tensor) -> None:
        with atomic_file(self.path_for(key)) as tmp:
            save_file({"features": features.detach().to("cpu", torch.float16).contiguous()}, str(tmp),
                      metadata={"key": key, "encoder": self.identity})
