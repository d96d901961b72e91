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


def _w2v_bert(size: str, layers: int):
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    dims = {"tiny": dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, output_hidden_size=32,
                         conv_depthwise_kernel_size=7),
            "base": dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, output_hidden_size=1024)}[size]
    config = Wav2Vec2BertConfig(feature_projection_input_dim=160, add_adapter=False, num_hidden_layers=layers, **dims)
    return Wav2Vec2BertModel(config), SeamlessM4TFeatureExtractor()


def _conv_frontend(model_name: str, config_name: str):
    def build(size: str, layers: int):
        import transformers
        from transformers import Wav2Vec2FeatureExtractor

        dims = {"tiny": dict(hidden_size=32, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(32, 32, 32, 32, 32, 32, 32), num_conv_pos_embeddings=16,
                             num_conv_pos_embedding_groups=2),
                "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)}[size]
        config = getattr(transformers, config_name)(num_hidden_layers=layers, **dims)
        return getattr(transformers, model_name)(config), Wav2Vec2FeatureExtractor(do_normalize=False)

    return build


_BUILDERS = {
    "w2v-bert-2.0": _w2v_bert,
    "mhubert-147": _conv_frontend("HubertModel", "HubertConfig"),
    "hubert-large": _conv_frontend("HubertModel", "HubertConfig"),
    "wavlm-large": _conv_frontend("WavLMModel", "WavLMConfig"),
}


def make_random_backbone(preset: str, out_dir: str | os.PathLike, size: str = "tiny", seed: int = 0) -> Path:
    """Write a random `preset`-architecture model directory to `out_dir` (atomically) and return it."""
    if preset not in _BUILDERS:
        raise ValueError(f"no random backbone for preset {preset!r}; available: {sorted(_BUILDERS)}")
    if size not in SIZES:
        raise ValueError(f"unknown backbone size {size!r}; choose from {SIZES}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, feature_extractor = _BUILDERS[preset](size, _depth(preset))
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
