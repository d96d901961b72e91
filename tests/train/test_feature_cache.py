from __future__ import annotations

import dataclasses

import torch

from miipher2.train.data import TrainingDataset, collate, load_items
from miipher2.train.distributed import DistContext
from miipher2.model.backbone import weights_fingerprint
from miipher2.train.feature_cache import FeatureCache, encoder_identity
from miipher2.train.stages import build_encoder, fill_feature_cache

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_cache_misses_then_hits_and_stores_the_encoders_features(corpus, shared_cache, tiny_config, tmp_path):
    config = tiny_config()
    encoder = build_encoder(config, shared_cache, CPU.device)
    cache = FeatureCache(tmp_path, encoder.identity)
    items = load_items(corpus, "train", 1.0, 0.3)
    assert cache.get(items[0].key) is None and cache.missing([i.key for i in items]) == [i.key for i in items]

    assert fill_feature_cache(encoder, cache, corpus, items, CPU, config.runtime, 3, 0) == len(items)
    assert fill_feature_cache(encoder, cache, corpus, items, CPU, config.runtime, 3, 0) == 0  # all hits
    assert cache.missing([i.key for i in items]) == []

    sample = TrainingDataset(corpus, items, clean=True)[(0, 0)]
    batch = collate([sample])
    with torch.no_grad():
        expected, frames = encoder.cleaner(batch["clean"], batch["clean_lengths"], use_adapters=False)
    cached = cache.get(items[0].key)
    assert cached.dtype == torch.float32 and cached.shape == (frames.item(), expected.shape[-1])
    assert torch.allclose(cached, expected[0, : frames.item()], atol=1e-2, rtol=1e-2)  # stored as fp16
    assert cache.path_for(items[0].key).stat().st_size < cached.numel() * 2 + 1024


def test_identity_follows_weights_layer_and_source_but_not_adapters(shared_cache, tiny_config):
    encoder = build_encoder(tiny_config(), shared_cache, CPU.device)
    cleaner = encoder.cleaner
    base = weights_fingerprint(cleaner, exclude=cleaner.adapter_parameters())

    with torch.no_grad():
        cleaner.adapter_parameters()[0].add_(1.0)  # training adapters must not invalidate the cache
    assert weights_fingerprint(cleaner, exclude=cleaner.adapter_parameters()) == base

    with torch.no_grad():
        next(cleaner.encoder.parameters()).add_(1e-3)  # a different encoder checkpoint
    changed = weights_fingerprint(cleaner, exclude=cleaner.adapter_parameters())
    assert changed != base
    assert encoder_identity("p", "s", 3, base) != encoder_identity("p", "s", 3, changed)
    assert encoder_identity("p", "s", 3, base) != encoder_identity("p", "s", 4, base)
    assert encoder_identity("p", "s", 3, base) != encoder_identity("p", "other", 3, base)


def test_a_different_encoder_uses_a_different_cache(shared_cache, tiny_config):
    config = tiny_config()
    shallower = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, feature_layer=2))
    a = build_encoder(config, shared_cache, CPU.device)
    b = build_encoder(shallower, shared_cache, CPU.device)
    assert a.identity != b.identity
    assert FeatureCache(shared_cache, a.identity).directory != FeatureCache(shared_cache, b.identity).directory


def test_random_backbone_is_deterministic_and_materialised_once(tmp_path):
    from miipher2.train.backbone import make_random_backbone, resolve_source

    first = resolve_source("mhubert-147", "random:tiny", tmp_path, seed=0)
    stamp = (tmp_path / "backbones" / "mhubert-147-tiny-seed0" / "model.safetensors").stat().st_mtime_ns
    assert resolve_source("mhubert-147", "random:tiny", tmp_path, seed=0) == first  # reused, not rebuilt
    assert (tmp_path / "backbones" / "mhubert-147-tiny-seed0" / "model.safetensors").stat().st_mtime_ns == stamp
    again = make_random_backbone("mhubert-147", tmp_path / "again", seed=0)
    assert (again / "model.safetensors").read_bytes() == (tmp_path / "backbones" / "mhubert-147-tiny-seed0" /
                                                          "model.safetensors").read_bytes()
    assert resolve_source("mhubert-147", "org/model", tmp_path) == "org/model"
    assert not list((tmp_path / "backbones").glob(".*"))  # no temp dirs left behind
