"""The three Miipher-2 training stages and the export of the final model directory.

    stage 1  adapters:  cleaner(degraded) -> frozen encoder's features of the clean item
    stage 2  vocoder pretraining on clean features (independent of stage 1: run side by side)
    stage 3  vocoder fine-tuning on adapter-cleaned features of degraded items (needs 1 and 2)
    export   stage-1 adapters + stage-3 vocoder -> a `Restorer` model directory

Each stage is a plain function, `train_stageN(config, data_root, out_dir, ...) -> StageResult`,
usable from a notebook, the CLI or a pipeline component, on one process or under torchrun.
A stage's output directory holds its checkpoints, the resolved config, `encoder.json` and, once
complete, its final weights (`adapters.safetensors`; `vocoder.safetensors` +
`discriminator.safetensors`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from miipher2.files import atomic_write_text
from miipher2.train.backbone import resolve_source
from miipher2.train.checkpoint import Resumable, load_weights, save_weights
from miipher2.train.config import ENCODER_SAMPLE_RATE, StageConfig, TrainConfig, VocoderStageConfig
from miipher2.train.data import LengthBucketBatchSampler, TrainingDataset, collate, load_items, make_degrader
from miipher2.train.distributed import DistContext, barrier, init_distributed, per_rank_batch_size
from miipher2.train.feature_cache import FeatureCache, encoder_identity
from miipher2.train.loop import (StageResult, StepFn, autocast_for, configure_backends, lr_multiplier, prepare_out_dir,
                                 run_loop)
from miipher2.train.losses import feature_cleaner_loss
from miipher2.train.validation import feature_validation, vocoder_validation

ENCODER_FILE = "encoder.json"
# Audio encoded on each side of a vocoder training window when features are computed online
# (stage 3; stage 2 without the cache), instead of the whole item (up to data.max_seconds, 10 s in
# the paper preset) for a 0.64 s window. No family's features of a window are exactly those of the
# whole item (global attention; utterance-level normalisation of w2v-BERT's fbanks, mHuBERT's first
# CNN layer and HuBERT-large / WavLM inputs; USM's cumulative normalisation from the first frame),
# but the difference shrinks with context: with 1 s, on every family it is below half of what
# white noise at 30 dB SNR (the mildest noise the paper trains with) changes in the same features
# (tests/train/test_windows.py; docs/training.md has the measured figures).
WINDOW_CONTEXT_SECONDS = 1.0
ADAPTERS_FILE, VOCODER_FILE, DISCRIMINATOR_FILE = "adapters.safetensors", "vocoder.safetensors", "discriminator.safetensors"


class StageInputError(ValueError):
    """A stage's inputs (earlier stages' outputs) are missing or were trained for another encoder."""


# --------------------------------------------------------------------------- building blocks

@dataclasses.dataclass
class Encoder:
    """The feature cleaner plus what identifies its frozen part."""

    cleaner: nn.Module
    source: str
    identity: str


def cache_dir_for(config: TrainConfig, out_dir: Path) -> Path:
    return Path(config.cache.dir) if config.cache.dir else out_dir.parent / "cache"


def feature_cache_for(config: TrainConfig, out_dir: Path, encoder: Encoder, ctx: DistContext) -> FeatureCache:
    """The cache of this encoder's features at the precision its forward pass runs at here."""
    precision = "bf16" if ctx.device.type == "cuda" and config.runtime.precision == "bf16" else "fp32"
    return FeatureCache(cache_dir_for(config, out_dir), encoder.identity, precision)


def window_context(cleaner: nn.Module) -> int:
    """WINDOW_CONTEXT_SECONDS in 16 kHz samples, rounded up to whole frames."""
    hop = cleaner.hop_length
    return -(-int(WINDOW_CONTEXT_SECONDS * ENCODER_SAMPLE_RATE) // hop) * hop


def build_encoder(config: TrainConfig, cache_dir: Path, device: torch.device, ctx: DistContext | None = None) -> Encoder:
    from miipher2.model.backbone import FeatureCleaner

    enc = config.encoder
    if ctx is not None and ctx.distributed:
        # transformers writes weights from rank 0 only once a process group exists, so rank 0
        # alone materialises a random backbone and the others wait for it.
        if ctx.is_main:
            resolve_source(enc.preset, enc.source, cache_dir, seed=config.runtime.seed)
        barrier(ctx)
    source = resolve_source(enc.preset, enc.source, cache_dir, seed=config.runtime.seed)
    cleaner = FeatureCleaner.from_pretrained(source, enc.preset, enc.feature_layer, enc.adapter_dim)
    identity = encoder_identity(enc.preset, enc.source, cleaner.feature_layer, cleaner.encoder_fingerprint())
    return Encoder(cleaner.to(device), source, identity)


def build_vocoder(config: TrainConfig, cleaner: nn.Module) -> nn.Module:
    """The configured kind of vocoder for the cleaner's features: forward(features [B, F, D]) -> wave."""
    from miipher2.model.vocoders import build_vocoder as build, vocoder_config

    voc = config.vocoder
    model_config = vocoder_config(voc.kind, cleaner.feature_dim, cleaner.hop_length, voc.sample_rate,
                                  ENCODER_SAMPLE_RATE, voc.size)
    changes = {"upsample_initial_channel": voc.upsample_initial_channel, "iterations": voc.iterations,
               "frame_upsample": voc.frame_upsample if voc.frame_upsample != 1 else None}
    return build(dataclasses.replace(model_config, **{k: v for k, v in changes.items() if v is not None}))


def build_objective(config: TrainConfig, stage: VocoderStageConfig):
    """The kind's GAN recipe (`GanObjective`): `make_discriminator()`, `generate`, and the losses."""
    from miipher2.model.vocoders.objectives import objective_for

    voc = config.vocoder
    return objective_for(voc.kind, voc.sample_rate, discriminator_size=voc.discriminator,
                         discriminator_bf16=voc.discriminator_precision == "bf16",
                         reconstruction_weight=stage.reconstruction_weight,
                         feature_matching_weight=stage.feature_matching_weight)


def optimizer_for(parameters, stage: StageConfig, lr: float | None = None) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr or stage.lr, betas=stage.betas, weight_decay=stage.weight_decay)


def scheduler_for(optimizer: torch.optim.Optimizer, stage: StageConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(stage))


def ddp(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DDP only across several processes; frozen parameters are ignored by DDP."""
    if not ctx.distributed:
        return module
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def clip(parameters, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)


@contextlib.contextmanager
def stage_session(config: TrainConfig, stage: str, out_dir: Path, tracker) -> Iterator[tuple[DistContext, Any]]:
    """Process group, seeds, backends and (on rank 0) an MLflow run for one stage."""
    from miipher2.tracking import Tracker, tracked_run

    threads = torch.get_num_threads()
    if config.runtime.threads is not None:
        torch.set_num_threads(config.runtime.threads)
    try:
        ctx = init_distributed(config.runtime.device)
        configure_backends(ctx, config.runtime)
        torch.manual_seed(config.runtime.seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        if ctx.is_main:
            atomic_write_text(out_dir / "config.yaml", config.to_yaml())
        if tracker is not None or not ctx.is_main:
            yield ctx, tracker if ctx.is_main else Tracker()
            return
        # Records MLflow cannot take yet wait in the stage's directory: a resumed stage delivers them.
        with tracked_run(f"{config.name}-{stage}", tags={"stage": stage, "preset": config.name},
                         spool_dir=out_dir) as run_tracker:
            run_tracker.log_params({"world_size": ctx.world_size, **config.tracked_params(stage)})
            yield ctx, run_tracker
    finally:
        torch.set_num_threads(threads)  # a library call leaves the caller's process as it found it


def fill_feature_cache(encoder: Encoder, cache: FeatureCache, dataset_root: Path, items, ctx: DistContext,
                       runtime, batch_size: int, num_workers: int) -> int:
    """Compute the clean features of every item missing from the cache; ranks share the work.

    Returns how many items this process computed. Every item is decoded (its content is its
    key); the missing ones are encoded in length-sorted batches (little padding, and padding
    does not change features) without adapters: these are the frozen encoder's own features.
    """
    mine = sorted(items[ctx.rank:: ctx.world_size], key=lambda item: item.end - item.start)
    dataset = TrainingDataset(dataset_root, mine, clean=True)
    batches = [[(i, 0) for i in range(b, min(b + batch_size, len(mine)))] for b in range(0, len(mine), batch_size)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)
    computed = 0
    with torch.no_grad(), autocast_for(ctx, runtime):
        for batch in loader:
            rows = [row for row, key in enumerate(batch["clean_keys"]) if key not in cache]
            if not rows:
                continue
            lengths = batch["clean_lengths"][rows]
            wave = batch["clean"][rows, : int(lengths.max())]
            features, frames = encoder.cleaner(wave.to(ctx.device), lengths.to(ctx.device), use_adapters=False)
            for row, feats, n in zip(rows, features, frames.tolist()):
                cache.put(batch["clean_keys"][row], feats[:n], item=batch["keys"][row])
            computed += len(rows)
    barrier(ctx)
    return computed


def _write_encoder_record(out_dir: Path, encoder: Encoder, config: TrainConfig, ctx: DistContext) -> None:
    if ctx.is_main:
        record = {"identity": encoder.identity, "preset": config.encoder.preset, "source": config.encoder.source,
                  "feature_layer": encoder.cleaner.feature_layer, "adapter_dim": config.encoder.adapter_dim}
        atomic_write_text(out_dir / ENCODER_FILE, json.dumps(record, indent=2))


def _require_same_encoder(stage_dir: Path, encoder: Encoder, what: str) -> None:
    record_file = Path(stage_dir) / ENCODER_FILE
    if not record_file.is_file():
        raise StageInputError(f"{stage_dir}: no {ENCODER_FILE}; is this a finished {what} output directory?")
    recorded = json.loads(record_file.read_text())["identity"]
    if recorded != encoder.identity:
        raise StageInputError(f"{stage_dir}: {what} was trained for encoder {recorded}, this config builds "
                              f"{encoder.identity} (preset, source, feature layer or weights differ)")


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise StageInputError(f"{path} is missing: run {what} to completion first")
    return path


def _audio_seconds(encoder: Encoder):
    hop = encoder.cleaner.hop_length

    def seconds(batch: dict) -> float:
        for name in ("degraded", "clean"):
            if name in batch:
                return float(batch[f"{name}_lengths"].sum()) / ENCODER_SAMPLE_RATE
        return float(batch["features_lengths"].sum()) * hop / ENCODER_SAMPLE_RATE

    return seconds


# --------------------------------------------------------------------------- stage 1

def train_stage1(config: TrainConfig, data_root: str | os.PathLike, out_dir: str | os.PathLike, *,
                 tracker=None, resume: bool = False, degrade=None) -> StageResult:
    """Train the parallel adapters so that degraded input gives the clean input's features."""
    out_dir, data_root = Path(out_dir), Path(data_root)
    prepare_out_dir(out_dir, resume)
    stage = config.stage1
    with stage_session(config, "stage1", out_dir, tracker) as (ctx, tracker):
        encoder = build_encoder(config, cache_dir_for(config, out_dir), ctx.device, ctx)
        _write_encoder_record(out_dir, encoder, config, ctx)
        items = load_items(data_root, config.data.split, config.data.max_seconds, config.data.min_seconds,
                           min_rate=ENCODER_SAMPLE_RATE)
        batch = per_rank_batch_size(ctx, stage.batch_size, "stage1.batch_size")
        cache = None
        if config.cache.enabled:
            cache = feature_cache_for(config, out_dir, encoder, ctx)
            fill_feature_cache(encoder, cache, data_root, items, ctx, config.runtime, batch, config.data.num_workers)
        dataset = TrainingDataset(data_root, items, seed=config.runtime.seed,
                                  degrade=degrade or make_degrader(data_root, _degradation(config)),
                                  clean=cache is None, features=cache)
        cleaner = encoder.cleaner.train()
        model = ddp(cleaner, ctx)
        optimizer = optimizer_for(cleaner.adapter_parameters(), stage)
        scheduler = scheduler_for(optimizer, stage)
        autocast = autocast_for(ctx, config.runtime)

        step = stage1_step(cleaner, model, optimizer, scheduler, stage, ctx, autocast)

        sampler = LengthBucketBatchSampler(dataset.lengths(), stage.batch_size, rank=ctx.rank, world_size=ctx.world_size,
                                           seed=config.runtime.seed, bucket_window=config.data.bucket_window)
        state = Resumable({"adapters": cleaner.adapters}, {"adapters": optimizer}, {"adapters": scheduler})
        weights = {ADAPTERS_FILE: cleaner.adapters}
        validation = feature_validation(config, data_root, out_dir, ctx, tracker, cleaner=cleaner, weights=weights,
                                        autocast=autocast)
        result = run_loop(stage="stage1", stage_config=stage, ctx=ctx, runtime=config.runtime, out_dir=out_dir,
                          state=state, dataset=dataset, sampler=sampler, step=step, tracker=tracker,
                          num_workers=config.data.num_workers, resume=resume, seconds_of=_audio_seconds(encoder),
                          validation=validation)
        result.encoder_identity = encoder.identity
        if not result.interrupted:
            result.weights = _finish(ctx, out_dir, weights, result, tracker, validation)
        return result


# --------------------------------------------------------------------------- stages 2 and 3

def train_stage2(config: TrainConfig, data_root: str | os.PathLike, out_dir: str | os.PathLike, *,
                 tracker=None, resume: bool = False) -> StageResult:
    """Pretrain the vocoder (`vocoder.kind`) on the frozen encoder's features of clean items."""
    return _train_vocoder("stage2", config, Path(data_root), Path(out_dir), tracker=tracker, resume=resume)


def train_stage3(config: TrainConfig, data_root: str | os.PathLike, out_dir: str | os.PathLike, *,
                 stage1_dir: str | os.PathLike, stage2_dir: str | os.PathLike, tracker=None, resume: bool = False,
                 degrade=None) -> StageResult:
    """Fine-tune the stage-2 vocoder on stage-1-cleaned features of degraded items."""
    return _train_vocoder("stage3", config, Path(data_root), Path(out_dir), tracker=tracker, resume=resume,
                          stage1_dir=Path(stage1_dir), stage2_dir=Path(stage2_dir), degrade=degrade)


def _train_vocoder(name: str, config: TrainConfig, data_root: Path, out_dir: Path, *, tracker, resume: bool,
                   stage1_dir: Path | None = None, stage2_dir: Path | None = None, degrade=None) -> StageResult:
    prepare_out_dir(out_dir, resume)
    stage: VocoderStageConfig = getattr(config, name)
    if name == "stage3":  # fail before loading any model when an earlier stage is missing
        for directory, files, what in ((stage1_dir, (ENCODER_FILE, ADAPTERS_FILE), "stage 1"),
                                       (stage2_dir, (ENCODER_FILE, VOCODER_FILE, DISCRIMINATOR_FILE), "stage 2")):
            for file in files:
                _require_file(directory / file, what)
    with stage_session(config, name, out_dir, tracker) as (ctx, tracker):
        encoder = build_encoder(config, cache_dir_for(config, out_dir), ctx.device, ctx)
        cleaner = encoder.cleaner.eval()
        cleaner.requires_grad_(False)  # frozen here, adapters included
        objective = build_objective(config, stage)
        vocoder, discriminator = build_vocoder(config, cleaner), objective.make_discriminator()
        if name == "stage3":
            _require_same_encoder(stage1_dir, encoder, "stage 1")
            _require_same_encoder(stage2_dir, encoder, "stage 2")
            load_weights(cleaner.adapters, _require_file(stage1_dir / ADAPTERS_FILE, "stage 1"))
            load_weights(vocoder, _require_file(stage2_dir / VOCODER_FILE, "stage 2"))
            load_weights(discriminator, _require_file(stage2_dir / DISCRIMINATOR_FILE, "stage 2"))
        _write_encoder_record(out_dir, encoder, config, ctx)
        vocoder, discriminator = vocoder.to(ctx.device).train(), discriminator.to(ctx.device).train()

        # Targets are waves at the vocoder's rate: sources recorded below it are left out.
        items = load_items(data_root, config.data.split, config.data.max_seconds, config.data.min_seconds,
                           min_rate=config.vocoder.sample_rate)
        batch_size = per_rank_batch_size(ctx, stage.batch_size, f"{name}.batch_size")
        common = dict(seed=config.runtime.seed, target_rate=config.vocoder.sample_rate,
                      window_frames=stage.segment_frames, frame_hop=cleaner.hop_length)
        online = dict(context=window_context(cleaner), **common)  # the step encodes window + context
        if name == "stage3":
            dataset = TrainingDataset(data_root, items, degrade=degrade or make_degrader(data_root, _degradation(config)),
                                      **online)
        elif config.cache.enabled:
            cache = feature_cache_for(config, out_dir, encoder, ctx)
            fill_feature_cache(encoder, cache, data_root, items, ctx, config.runtime, batch_size, config.data.num_workers)
            dataset = TrainingDataset(data_root, items, features=cache, **common)
        else:
            dataset = TrainingDataset(data_root, items, clean=True, **online)

        generator, critic = ddp(vocoder, ctx), ddp(discriminator, ctx)
        objective = objective.to(ctx.device)
        opt_g = optimizer_for(vocoder.parameters(), stage)
        opt_d = optimizer_for(discriminator.parameters(), stage, lr=stage.discriminator_lr)
        sched_g, sched_d = scheduler_for(opt_g, stage), scheduler_for(opt_d, stage)
        autocast = autocast_for(ctx, config.runtime)

        step = vocoder_step(cleaner, vocoder, discriminator, generator, critic, objective, (opt_g, opt_d), (sched_g, sched_d),
                            stage, ctx, autocast, use_adapters=name == "stage3")

        sampler = LengthBucketBatchSampler(dataset.lengths(), stage.batch_size, rank=ctx.rank, world_size=ctx.world_size,
                                           seed=config.runtime.seed, bucket_window=config.data.bucket_window)
        window_seconds = stage.segment_frames * cleaner.hop_length / ENCODER_SAMPLE_RATE
        state = Resumable({"vocoder": vocoder, "discriminator": discriminator},
                          {"vocoder": opt_g, "discriminator": opt_d}, {"vocoder": sched_g, "discriminator": sched_d})
        weights = {VOCODER_FILE: vocoder, DISCRIMINATOR_FILE: discriminator}
        validation = vocoder_validation(config, name, data_root, out_dir, ctx, tracker, cleaner=cleaner,
                                        vocoder=vocoder, weights=weights, autocast=autocast)
        result = run_loop(stage=name, stage_config=stage, ctx=ctx, runtime=config.runtime, out_dir=out_dir, state=state,
                          dataset=dataset, sampler=sampler, step=step, tracker=tracker,
                          num_workers=config.data.num_workers, resume=resume,
                          seconds_of=lambda batch: window_seconds * len(batch["keys"]), validation=validation)
        result.encoder_identity = encoder.identity
        if not result.interrupted:
            result.weights = _finish(ctx, out_dir, weights, result, tracker, validation)
        return result



# --------------------------------------------------------------------------- one training step

def stage1_step(cleaner: nn.Module, model: nn.Module, optimizer, scheduler, stage: StageConfig, ctx: DistContext,
                autocast) -> StepFn:
    """Adapters only: `model` is the cleaner (DDP-wrapped across processes); targets come from
    the batch (cached features) or from the frozen encoder without adapters."""

    def step(batch: dict) -> dict[str, float]:
        degraded, lengths = batch["degraded"].to(ctx.device), batch["degraded_lengths"].to(ctx.device)
        if "features" in batch:
            target, target_frames = batch["features"].to(ctx.device), batch["features_lengths"].to(ctx.device)
        else:
            with torch.no_grad(), autocast:
                target, target_frames = cleaner(batch["clean"].to(ctx.device), batch["clean_lengths"].to(ctx.device),
                                                use_adapters=False)
        with autocast:
            predicted, frames = model(degraded, lengths, use_adapters=True)
        loss = feature_cleaner_loss(predicted, target, torch.minimum(frames, target_frames))
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        clip(cleaner.adapter_parameters(), stage.grad_clip)
        optimizer.step()
        scheduler.step()
        return {**loss.metrics(), "lr": scheduler.get_last_lr()[0]}

    return step


def vocoder_step(cleaner: nn.Module, vocoder: nn.Module, discriminator: nn.Module, generator: nn.Module,
                 critic: nn.Module, objective, optimizers, schedulers, stage: VocoderStageConfig, ctx: DistContext,
                 autocast, *, use_adapters: bool) -> StepFn:
    """One GAN step (discriminator, then generator) on a window of features, any vocoder kind.
    The first `stage.adversarial_start` steps train the generator on the reconstruction loss alone.

    `objective` is the kind's `GanObjective` (`build_objective`). Features come cut from the batch
    (stage 2 with the cache) or from the frozen cleaner, run without gradients on the window and
    its context: with adapters on degraded audio (stage 3), without on clean audio (stage 2
    without the cache). `generator` / `critic` are the DDP-wrapped `vocoder` / `discriminator`
    when several processes train.
    """
    opt_g, opt_d = optimizers
    sched_g, sched_d = schedulers

    def features_and_targets(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "features" in batch:
            return batch["features"].to(ctx.device), batch["target_wave"].to(ctx.device)
        wave_name = "degraded" if "degraded" in batch else "clean"
        with torch.no_grad(), autocast:
            features, _ = cleaner(batch[wave_name].to(ctx.device), batch[f"{wave_name}_lengths"].to(ctx.device),
                                  use_adapters=use_adapters)
        return cut_windows(features.float(), batch["window_offset"].tolist(), stage.segment_frames), \
            batch["target_wave"].to(ctx.device)

    def step(batch: dict) -> dict[str, float]:
        features, real = features_and_targets(batch)
        with autocast:
            fakes = objective.generate(generator, features)  # fp32 waves; WaveFit: one per iterate
        real = real[:, : fakes[-1].shape[1]]
        if sched_g.last_epoch < stage.adversarial_start:  # the step count, restored on resume
            return generator_update(objective.reconstruction_loss(fakes, real))
        d_terms = objective.discriminator_loss(critic, fakes, real)
        opt_d.zero_grad(set_to_none=True)
        d_terms["loss"].backward()
        clip(discriminator.parameters(), stage.grad_clip)
        opt_d.step()
        sched_d.step()
        with critic.no_sync() if isinstance(critic, DistributedDataParallel) else contextlib.nullcontext():
            g_terms = objective.generator_loss(critic, fakes, real)  # the discriminator is frozen inside
        return {**generator_update(g_terms), "discriminator": d_terms["loss"].item()}

    def generator_update(g_terms: dict[str, torch.Tensor]) -> dict[str, float]:
        opt_g.zero_grad(set_to_none=True)
        g_terms["loss"].backward()
        clip(vocoder.parameters(), stage.grad_clip)
        opt_g.step()
        sched_g.step()
        return {**{name: value.item() for name, value in g_terms.items()}, "lr": sched_g.get_last_lr()[0]}

    return step


def cut_windows(features: torch.Tensor, offsets: list[int], window: int) -> torch.Tensor:
    """`window` frames of each item's features from its offset, zero-padded past the item's end
    (the features are zero there already: the cleaner zeroes padding)."""
    features = nn.functional.pad(features, (0, 0, 0, max(0, max(offsets) + window - features.shape[1])))
    return torch.stack([feats[offset: offset + window] for feats, offset in zip(features, offsets)])


def _degradation(config: TrainConfig):
    if config.data.degradation is None:
        return None
    import yaml

    from miipher2.data.degrade import DegradationConfig

    return DegradationConfig.from_dict(yaml.safe_load(Path(config.data.degradation).read_text()) or {})


def _finish(ctx: DistContext, out_dir: Path, modules: dict[str, nn.Module], result: StageResult, tracker,
            validation=None) -> dict[str, Path]:
    """Final weights beside the checkpoints, then `result.json`: its presence means 'complete'.

    With validation, the final weights are the best-scoring ones (the last are in the last checkpoint)."""
    paths = {name: out_dir / name for name in modules}
    if validation is not None:
        result.validation = validation.finish()
    if ctx.is_main:
        for name, module in modules.items():
            save_weights(module, paths[name])
        result.weights = paths
        atomic_write_text(out_dir / "result.json", result.to_json())
        tracker.log_artifact(out_dir / "result.json")
        tracker.log_artifact(out_dir / "config.yaml")
    barrier(ctx)
    return paths


# --------------------------------------------------------------------------- export

def export_model(config: TrainConfig, stage1_dir: str | os.PathLike, stage3_dir: str | os.PathLike,
                 model_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """Compose stage-1 adapters and the stage-3 vocoder into a `Restorer` model directory."""
    from miipher2.model.restorer import Restorer

    stage1_dir, stage3_dir, model_dir = Path(stage1_dir), Path(stage3_dir), Path(model_dir)
    encoder = build_encoder(config, Path(cache_dir) if cache_dir else cache_dir_for(config, stage3_dir), torch.device("cpu"))
    _require_same_encoder(stage1_dir, encoder, "stage 1")
    _require_same_encoder(stage3_dir, encoder, "stage 3")
    vocoder = build_vocoder(config, encoder.cleaner)
    load_weights(encoder.cleaner.adapters, _require_file(stage1_dir / ADAPTERS_FILE, "stage 1"))
    load_weights(vocoder, _require_file(stage3_dir / VOCODER_FILE, "stage 3"))
    Restorer(encoder.cleaner, vocoder, encoder.source).save_pretrained(model_dir)
    return model_dir
