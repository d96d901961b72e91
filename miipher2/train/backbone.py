"""Randomly initialised backbones of the real architectures, saved as local model directories.

Model hubs are unreachable on our CPU machines and in CI, yet every stage must run through the
real loading code (`FeatureCleaner.from_pretrained(<directory>)`). `make_random_backbone` writes a
transformers model directory (config, weights, feature-extractor settings) with deterministic
random weights: same preset, size and seed give the same bytes, hence the same encoder identity
in the feature cache. Such an encoder has learnt nothing; it exercises the machinery only.

Sizes: `tiny` (32-dim layers, tens of thousands of parameters: tests) and `base` (the preset's
real layer width, e.g. 768 for mHuBERT-147, 1024 for w2v-BERT 2.0: timing) have exactly as many
layers as the preset's default feature layer: the layers above it are never computed, so a `base`
backbone costs what the released model costs per step. `small` (w2v-BERT 2.0 only: 256 wide,
2 layers, so `feature_layer` must be at most 2) keeps its input recoverable in its features: the
encoder of the CPU presets that must learn (`learn-cpu`, `demo-cpu`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from miipher2.files import atomic_directory

RANDOM_PREFIX = "random:"
SIZES = ("tiny", "small", "base")


def _depth(preset: str) -> int:
    from miipher2.model.backbone import BACKBONE_PRESETS

    return BACKBONE_PRESETS[preset].feature_layer


def _build(preset: str, size: str):
    """The preset's architecture at `size`; `tiny` and `base` cut to the preset's feature layer."""
    from miipher2.model.random_backbone import architecture

    config, model_class, feature_extractor = architecture(preset, "full" if size == "base" else size)
    if size != "small":  # small has its own depth
        depth_field = "conf_num_hidden_layers" if hasattr(config, "conf_num_hidden_layers") else "num_hidden_layers"
        setattr(config, depth_field, _depth(preset))
    return model_class(config), feature_extractor


def make_random_backbone(preset: str, out_dir: str | os.PathLike, size: str = "tiny", seed: int = 0, *,
                         replace: bool = True) -> Path:
    """Write a random `preset`-architecture model directory to `out_dir` (atomically) and return it.

    An existing `out_dir` is replaced, or (`replace=False`) kept with FileExistsError raised."""
    if size not in SIZES:
        raise ValueError(f"unknown backbone size {size!r}; choose from {SIZES}")
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, replace=replace) as tmp:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, feature_extractor = _build(preset, size)
        model.save_pretrained(tmp, is_main_process=True)
        feature_extractor.save_pretrained(tmp)
        if not (tmp / "model.safetensors").is_file():
            raise RuntimeError(f"transformers did not write the weights of the random {preset} backbone "
                               "(in a process group, only rank 0 may create it)")
    return out_dir


def resolve_source(preset: str, source: str, cache_dir: str | os.PathLike, seed: int = 0) -> str:
    """`random:<size>` becomes a random backbone materialised once under the cache directory;
    anything else (hub id, local directory) is returned unchanged."""
    if not source.startswith(RANDOM_PREFIX):
        return source
    size = source[len(RANDOM_PREFIX):]
    target = Path(cache_dir) / "backbones" / f"{preset}-{size}-seed{seed}"
    if not target.is_dir():
        # Stages started side by side may both get here: each builds a private copy and the
        # first rename wins; the loser's identical copy is discarded, never swapped under a reader.
        try:
            make_random_backbone(preset, target, size=size, seed=seed, replace=False)
        except FileExistsError:
            pass
    return str(target.resolve())
