"""Clean-feature cache: the frozen encoder's features of every clean item, computed once.

Stage 1 needs them as targets and stage 2 as vocoder inputs; both would otherwise run the
encoder on every clean item at every step. Features depend on three things, and the cache keys
on each of them:

- the encoder: the directory is named by its identity (preset, source, feature layer and a
  fingerprint of the weights), the precision it runs at and `FEATURES_VERSION` (bumped when the
  frontends or the padding handling change what the cleaner computes);
- the audio: a file is named by the sha256 of the item's decoded 16 kHz samples, so a rewritten
  or re-processed file, or another corpus reusing utt_ids, is a miss, never a stale hit.

    <cache>/features/<identity>/<precision>-v<FEATURES_VERSION>/<2 hex>/<content key>.safetensors   fp16 [frames, dim]

One small file per item: written atomically (temp file + rename), so concurrent writers
(stage 1 and stage 2 started side by side, or DDP ranks) never expose half a file, and a
reader needs no index.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from miipher2.files import atomic_file
from miipher2.model.backbone import FEATURES_VERSION


def encoder_identity(preset: str, source: str, feature_layer: int, fingerprint: str) -> str:
    """A short, stable name for one frozen encoder."""
    description = json.dumps({"preset": preset, "source": source, "feature_layer": feature_layer,
                              "weights": fingerprint}, sort_keys=True)
    return hashlib.sha256(description.encode()).hexdigest()[:20]


def content_key(wave: np.ndarray) -> str:
    """The cache key of an item: sha256 of its decoded 16 kHz float32 samples (the encoder's input)."""
    return hashlib.sha256(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()


class FeatureCache:
    def __init__(self, root: str | os.PathLike, identity: str, precision: str):
        self.identity = identity
        self.directory = Path(root) / "features" / identity / f"{precision}-v{FEATURES_VERSION}"

    def path_for(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path_for(key).is_file()

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

    def put(self, key: str, features: torch.Tensor, item: str = "") -> None:
        """Store features under a content key; `item` (e.g. utt_id@start-end) is kept for people reading files."""
        with atomic_file(self.path_for(key)) as tmp:
            save_file({"features": features.detach().to("cpu", torch.float16).contiguous()}, str(tmp),
                      metadata={"item": item, "encoder": self.identity})
