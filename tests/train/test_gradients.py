"""Stage 1 trains only the adapters; stages 2 and 3 only the vocoder (and its discriminator)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from miipher2.train.data import TrainingDataset, collate, load_items
from miipher2.train.distributed import DistContext
from miipher2.train.stages import (build_encoder, build_vocoder, optimizer_for, scheduler_for, stage1_step,
                                   vocoder_step, window_context)

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def noisy(wave, rng):
    return wave + 0.05 * rng.standard_normal(wave.size).astype(np.float32), []


def _batch(corpus, **fields):
    items = load_items(corpus, "train", 1.0, 0.3)[:2]
    dataset = TrainingDataset(corpus, items, **fields)
    return collate([dataset[(i, 0)] for i in range(2)])


def test_stage1_step_updates_only_adapters(corpus, shared_cache, tiny_config):
    config = tiny_config()
    cleaner = build_encoder(config, shared_cache, CPU.device).cleaner.train()
    frozen = {k: v.clone() for k, v in cleaner.encoder.state_dict().items()}
    optimizer = optimizer_for(cleaner.adapter_parameters(), config.stage1)
    step = stage1_step(cleaner, cleaner, optimizer, scheduler_for(optimizer, config.stage1), config.stage1, CPU,
                       torch.autocast("cpu", enabled=False))
    step(_batch(corpus, degrade=noisy, clean=True))

    adapter_ids = {id(p) for p in cleaner.adapter_parameters()}
    for name, parameter in cleaner.named_parameters():
        if id(parameter) in adapter_ids:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None and not parameter.requires_grad, name
    ups = [a.up.weight.grad for a in cleaner.adapters.adapters]
    assert all(g.abs().sum() > 0 for g in ups)  # the zero-initialised output projections learn first
    for key, value in cleaner.encoder.state_dict().items():
        assert torch.equal(value, frozen[key]), key


@pytest.mark.parametrize("kind", ["hifigan", "vocos", "wavefit"])
@pytest.mark.parametrize("use_adapters", [False, True], ids=["stage2", "stage3"])
def test_vocoder_step_leaves_the_cleaner_untouched(corpus, shared_cache, tiny_config, use_adapters, kind):
    from miipher2.train.stages import build_objective

    config = tiny_config(f"vocoder.kind={kind}")
    stage = config.stage3 if use_adapters else config.stage2
    cleaner = build_encoder(config, shared_cache, CPU.device).cleaner.eval()
    cleaner.requires_grad_(False)
    before = {k: v.clone() for k, v in cleaner.state_dict().items()}
    objective = build_objective(config, stage)
    vocoder, discriminator = build_vocoder(config, cleaner), objective.make_discriminator()
    vocoder_before = [p.clone() for p in vocoder.parameters()]
    discriminator_before = [p.clone() for p in discriminator.parameters()]
    opts = (optimizer_for(vocoder.parameters(), stage), optimizer_for(discriminator.parameters(), stage))
    step = vocoder_step(cleaner, vocoder, discriminator, vocoder, discriminator, objective,
                        opts, tuple(scheduler_for(o, stage) for o in opts), stage, CPU,
                        torch.autocast("cpu", enabled=False), use_adapters=use_adapters)
    fields = dict(degrade=noisy) if use_adapters else dict(clean=True)
    metrics = step(_batch(corpus, target_rate=config.vocoder.sample_rate, window_frames=stage.segment_frames,
                          frame_hop=cleaner.hop_length, context=window_context(cleaner), **fields))

    assert vocoder.kind == kind
    assert {"loss", "mel", "adversarial", "feature_matching", "reconstruction", "discriminator"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(p.grad is None for p in cleaner.parameters())
    for key, value in cleaner.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is not None for p in vocoder.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(vocoder_before, vocoder.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(discriminator_before, discriminator.parameters()))
    assert all(p.requires_grad for p in discriminator.parameters())  # unfrozen again after the generator step


def test_discriminators_join_after_adversarial_start(corpus, shared_cache, tiny_config):
    """Steps before `adversarial_start` train the generator on the reconstruction loss alone and
    leave the discriminators (and their schedule) untouched; from then on both train."""
    from miipher2.train.stages import build_objective

    config = tiny_config("vocoder.kind=vocos", "stage2.adversarial_start=1")
    stage = config.stage2
    cleaner = build_encoder(config, shared_cache, CPU.device).cleaner.eval()
    cleaner.requires_grad_(False)
    objective = build_objective(config, stage)
    vocoder, discriminator = build_vocoder(config, cleaner), objective.make_discriminator()
    opts = (optimizer_for(vocoder.parameters(), stage), optimizer_for(discriminator.parameters(), stage))
    schedulers = tuple(scheduler_for(o, stage) for o in opts)
    step = vocoder_step(cleaner, vocoder, discriminator, vocoder, discriminator, objective, opts, schedulers, stage,
                        CPU, torch.autocast("cpu", enabled=False), use_adapters=False)
    batch = _batch(corpus, clean=True, target_rate=config.vocoder.sample_rate, window_frames=stage.segment_frames,
                   frame_hop=cleaner.hop_length, context=window_context(cleaner))

    vocoder_before = [p.clone() for p in vocoder.parameters()]
    discriminator_before = [p.clone() for p in discriminator.parameters()]
    warm = step(batch)
    assert set(warm) == {"loss", "reconstruction", "mel", "lr"}
    assert warm["loss"] == pytest.approx(objective.reconstruction_weight * warm["reconstruction"])
    assert any(not torch.equal(a, b) for a, b in zip(vocoder_before, vocoder.parameters()))
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(discriminator_before, discriminator.parameters()))
    assert schedulers[1].last_epoch == 0

    adversarial = step(batch)
    assert {"adversarial", "feature_matching", "discriminator"} <= set(adversarial)
    assert any(not torch.equal(a, b) for a, b in zip(discriminator_before, discriminator.parameters()))
    assert schedulers[1].last_epoch == 1
