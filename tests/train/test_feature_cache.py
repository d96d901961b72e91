from __future__ import annotations

import dataclasses

import torch

from miipher2.train.data import TrainingDataset, collate, load_items
from miipher2.train.distributed import DistContext
from miipher2.train.feature_cache import FeatureCache, encoder_identity
from miipher2.train.stages import build_encoder, fill_feature_cache

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def test_cache_misses_then_hits_and_stores_the_encoders_features(corpus, shared_cache, tiny_config, tmp_path):
    config = tiny_config()
    encoder = build_encoder(config, shared_cache, CPU.device)
    cache = FeatureCache(tmp_path, encoder.identity, "fp32")
    items = load_items(corpus, "train", 1.0, 0.3)
    dataset = TrainingDataset(corpus, items, clean=True)
    keys = [dataset[(i, 0)]["clean_key"] for i in range(len(items))]
    assert cache.get(keys[0]) is None and not any(key in cache for key in keys)

    assert fill_feature_cache(encoder, cache, corpus, items, CPU, config.runtime, 3, 0) == len(set(keys))
    assert fill_feature_cache(encoder, cache, corpus, items, CPU, config.runtime, 3, 0) == 0  # all hits
    assert all(key in cache for key in keys)

    batch = collate([dataset[(0, 0)]])
    with torch.no_grad():
        expected, frames = encoder.cleaner(batch["clean"], batch["clean_lengths"], use_adapters=False)
    cached = cache.get(keys[0])
    assert cached.dtype == torch.float32 and cached.shape == (frames.item(), expected.shape[-1])
    assert torch.allclose(cached, expected[0, : frames.item()], atol=1e-2, rtol=1e-2)  # stored as fp16
    assert cache.path_for(keys[0]).stat().st_size < cached.numel() * 2 + 1024


def test_a_rewritten_file_is_a_miss_not_a_stale_hit(corpus, shared_cache, tiny_config, tmp_path):
    """Same utt_id, same path, same length, other audio (a re-processed dataset): new features."""
    import shutil

    from miipher2.audio import read_audio, write_audio

    root = tmp_path / "data"
    shutil.copytree(corpus, root)
    config = tiny_config()
    encoder = build_encoder(config, shared_cache, CPU.device)
    cache = FeatureCache(tmp_path / "cache", encoder.identity, "fp32")
    items = load_items(root, "train", 10.0, 0.3)
    assert fill_feature_cache(encoder, cache, root, items, CPU, config.runtime, 4, 0) == len(items)
    before = TrainingDataset(root, items, features=cache)[(0, 0)]["features"]

    wave, rate = read_audio(root / items[0].path)
    write_audio(root / items[0].path, 0.5 * wave[::-1].copy(), rate)  # re-processed in place
    assert TrainingDataset(root, items, features=cache)[(0, 0)] is None  # a miss is reported, not served stale
    assert fill_feature_cache(encoder, cache, root, items, CPU, config.runtime, 4, 0) == 1  # only that file
    after = TrainingDataset(root, items, features=cache)[(0, 0)]["features"]
    assert after.shape == before.shape and not torch.allclose(after, before, atol=1e-2)


def test_precision_and_features_version_name_the_cache_directory(tmp_path):
    from miipher2.model.backbone import FEATURES_VERSION

    fp32, bf16 = FeatureCache(tmp_path, "abc", "fp32"), FeatureCache(tmp_path, "abc", "bf16")
    assert fp32.directory == tmp_path / "features" / "abc" / f"fp32-v{FEATURES_VERSION}"
    assert fp32.directory != bf16.directory
    fp32.put("ff" * 32, torch.ones(3, 2))
    assert "ff" * 32 in fp32 and "ff" * 32 not in bf16


def test_identity_follows_weights_layer_and_source_but_not_adapters(shared_cache, tiny_config):
    encoder = build_encoder(tiny_config(), shared_cache, CPU.device)
    cleaner = encoder.cleaner
    base = cleaner.encoder_fingerprint()

    with torch.no_grad():
        cleaner.adapter_parameters()[0].add_(1.0)  # training adapters must not invalidate the cache
    assert cleaner.encoder_fingerprint() == base

    with torch.no_grad():
        next(cleaner.encoder.parameters()).add_(1e-3)  # a different encoder checkpoint
    changed = cleaner.encoder_fingerprint()
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
    assert FeatureCache(shared_cache, a.identity, "fp32").directory != FeatureCache(shared_cache, b.identity, "fp32").directory


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
