"""Randomly initialised backbones of the real architectures, saved as local model directories.

Model hubs are unreachable on our CPU machines and in CI, yet every stage must run through the
real loading code (`FeatureCleaner.from_pretrained(<directory>)`). `make_random_backbone` writes a
transformers model directory (config, weights, feature-extractor settings) with deterministic
random weights: same preset, size and seed give the same bytes, hence the same encoder identity
in the feature cache. Such an encoder has learnt nothing; it exercises the machinery only.

Sizes: `tiny` (32-dim layers, tens of thousands of parameters: tests, the demo-cpu preset) and
`base` (the preset's real layer width, e.g. 768 for mHuBERT-147, 1024 for w2v-BERT 2.0: timing).
Both have exactly as many layers as the preset's default feature layer: the layers above it
are never computed, so a `base` backbone costs what the released model costs per step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

RANDOM_PREFIX = "random:"
SIZES = ("tiny", "base")


def _depth(preset: str) -> int:
    from miipher2.model.backbone import BACKBONE_PRESETS

    return BACKBONE_PRESETS[preset].feature_layer


def _build(preset: str, size: str):
    """The preset's architecture (`tiny` widths or the released ones) cut to its feature layer."""
    from miipher2.model.random_backbone import architecture

    config, model_class, feature_extractor = architecture(preset, "tiny" if size == "tiny" else "full")
    depth_field = "conf_num_hidden_layers" if hasattr(config, "conf_num_hidden_layers") else "num_hidden_layers"
    setattr(config, depth_field, _depth(preset))
    return model_class(config), feature_extractor


def make_random_backbone(preset: str, out_dir: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random `preset`-architecture model directory to `out_dir` (atomically) and return it."""
    if size not in SIZES:
        raise ValueError(f"unknown backbone size {size!r}; choose from {SIZES}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, feature_extractor = _build(preset, size)
        model.save_pretrained(tmp, is_main_process=True)
        feature_extractor.save_pretrained(tmp)
        if not (tmp / "model.safetensors").is_file():
            raise RuntimeError(f"transformers did not write the weights of the random {preset} backbone "
                               "(in a process group, only rank 0 may create it)")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
        target.parent.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            make_random_backbone(preset, private / "model", size=size, seed=seed)
            os.rename(private / "model", target)
        except OSError:
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(private, ignore_errors=True)
    return str(target.resolve())
