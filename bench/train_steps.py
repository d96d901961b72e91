"""Training step time: the clean-feature cache vs online features, and the GAN step per vocoder kind.

    .venv/bin/python -m bench.train_steps [--preset mhubert-147] [--size base] [--batch 2] [--seconds 4] [--steps 5]
    .venv/bin/python -m bench.train_steps --vocoders [--rate 24000] [--segment-frames 32] [--batch 2] [--rounds 5]

`--vocoders`: one GAN step (discriminator step + generator step, `stages.vocoder_step`) per vocoder
kind (paper-size generators, or `--vocoder-size tiny` as in demo-cpu) with its full discriminator
set and with the small one, on the same batch of cached 768-dim features (mHuBERT-147's width) and
waves. Kinds run interleaved, one step each per round, so all see the same load; medians of
`--rounds` after a warm-up round.

Stage 1: the cache replaces the frozen encoder's forward pass on the clean wave (the target)
by a file read; the adapted forward + backward on the degraded wave remain. Stage 2: the cache
replaces the encoder's forward pass on the whole clean item by a read of its features; the
HiFi-GAN step on a window remains. Both use the real step functions of miipher2.train.stages,
a randomly initialised backbone of the real width (`base`: mHuBERT-147's 768-dim layers up to
its feature layer 6), real safetensors cache files, and report the median of `--steps` timed
steps after one warm-up, as wall time and as process CPU time (robust to other load).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from miipher2.train.config import load_config
from miipher2.train.distributed import DistContext
from miipher2.train.feature_cache import FeatureCache
from miipher2.train.stages import (build_encoder, build_objective, build_vocoder, cut_windows, optimizer_for,
                                   scheduler_for, stage1_step, vocoder_step)

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
NO_AUTOCAST = contextlib.nullcontext()


def timed(fn, steps: int) -> tuple[float, float]:
    fn()  # warm-up: allocator, oneDNN kernels
    wall, cpu = [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def vocoder_steps(rate: int, segment_frames: int, batch: int, rounds: int, generator_size: str,
                  feature_dim: int = 768) -> None:
    """GAN step time per vocoder kind and discriminator size, interleaved rounds."""
    from types import SimpleNamespace

    kinds = [(kind, size) for kind in ("hifigan", "vocos", "wavefit") for size in ("full", "small")]
    cleaner = SimpleNamespace(feature_dim=feature_dim, hop_length=320)  # 50 Hz frames, like every backbone but USM
    torch.manual_seed(0)
    features = torch.randn(batch, segment_frames, feature_dim)
    steps, generators, params = {}, {}, {}
    for kind, size in kinds:
        config = load_config("paper", [f"vocoder.kind={kind}", f"vocoder.sample_rate={rate}",
                                       f"vocoder.size={generator_size}", f"vocoder.discriminator={size}",
                                       f"stage2.segment_frames={segment_frames}"])
        stage = config.stage2
        objective = build_objective(config, stage)
        vocoder, discriminator = build_vocoder(config, cleaner), objective.make_discriminator()
        opts = (optimizer_for(vocoder.parameters(), stage), optimizer_for(discriminator.parameters(), stage))
        step = vocoder_step(None, vocoder, discriminator, vocoder, discriminator, objective, opts,
                            tuple(scheduler_for(o, stage) for o in opts), stage, CPU, NO_AUTOCAST,
                            use_adapters=False, hop_out=vocoder.hop_length)
        wave = 0.1 * torch.randn(batch, segment_frames * vocoder.hop_length)
        steps[kind, size] = lambda step=step, wave=wave: step({"features": features, "target_wave": wave})
        generators[kind, size] = lambda objective=objective, vocoder=vocoder: torch.stack(
            [w.pow(2).mean() for w in objective.generate(vocoder, features)]).sum().backward()
        params[kind, size] = (sum(p.numel() for p in vocoder.parameters()) / 1e6,
                              sum(p.numel() for p in discriminator.parameters()) / 1e6)
    times = {key: [] for key in kinds}
    generator_cpu = {key: [] for key in kinds}
    for round_ in range(rounds + 1):  # round 0 warms up
        for key in kinds:
            w, c = time.perf_counter(), time.process_time()
            steps[key]()
            if round_:
                times[key].append((time.perf_counter() - w, time.process_time() - c))
            if key[1] == "full":  # the generator alone: forward + backward, no discriminator
                c = time.process_time()
                generators[key]()
                generator_cpu[key].append(time.process_time() - c)
    print(f"GAN step, {generator_size} generators, {rate} Hz, batch {batch} x {segment_frames} frames "
          f"({segment_frames * 0.02:.2f} s), {torch.get_num_threads()} threads, median of {rounds} interleaved rounds")
    print("\n| kind | discriminators | params G / D | step wall | step CPU | CPU vs HiFi-GAN (full) "
          "| generator alone, fwd + bwd CPU |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base = statistics.median(c for _, c in times["hifigan", "full"])
    for kind, size in kinds:
        wall = statistics.median(w for w, _ in times[kind, size])
        cpu = statistics.median(c for _, c in times[kind, size])
        g, d = params[kind, size]
        alone = f"{statistics.median(generator_cpu[kind, size]):.2f} s" if generator_cpu[kind, size] else ""
        print(f"| {kind} | {size} | {g:.1f}M / {d:.1f}M | {wall:.2f} s | {cpu:.2f} s | {base / cpu:.2f}x cheaper "
              f"| {alone} |")
    print(f"load average: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocoders", action="store_true", help="GAN step time per vocoder kind instead")
    parser.add_argument("--rate", type=int, default=24000, help="--vocoders: output sample rate")
    parser.add_argument("--segment-frames", type=int, default=32, help="--vocoders: feature frames per window")
    parser.add_argument("--rounds", type=int, default=5, help="--vocoders: timed rounds")
    parser.add_argument("--preset", default="mhubert-147")
    parser.add_argument("--size", default="base", choices=("tiny", "base"))
    parser.add_argument("--vocoder-size", default="paper", choices=("tiny", "paper"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.vocoders:
        vocoder_steps(args.rate, args.segment_frames, args.batch, args.rounds, args.vocoder_size)
        return

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    config = load_config("demo-cpu", [f"encoder.preset={args.preset}", "encoder.source=random:" + args.size,
                                      "encoder.adapter_dim=1024", "vocoder.sample_rate=16000",
                                      f"vocoder.size={args.vocoder_size}", "stage2.segment_frames=32",
                                      "vocoder.kind=hifigan", "vocoder.discriminator=full"])  # as recorded
    encoder = build_encoder(config, work, CPU.device)
    cleaner = encoder.cleaner
    rng = np.random.default_rng(0)
    samples = int(args.seconds * 16000)
    clean = torch.from_numpy(rng.standard_normal((args.batch, samples)).astype(np.float32) * 0.1)
    degraded = clean + 0.05 * torch.randn_like(clean)
    lengths = torch.full((args.batch,), samples)
    keys = [f"utt{i}@0-{samples}" for i in range(args.batch)]
    cache = FeatureCache(work, encoder.identity)
    with torch.no_grad():
        features, frames = cleaner(clean, lengths, use_adapters=False)
    for key, feats, n in zip(keys, features, frames.tolist()):
        cache.put(key, feats[:n])
    print(f"backbone {args.preset}/{args.size}: {sum(p.numel() for p in cleaner.encoder.parameters()) / 1e6:.1f}M "
          f"encoder parameters up to layer {cleaner.feature_layer}, feature dim {cleaner.feature_dim}; "
          f"batch {args.batch} x {args.seconds:g} s; {args.threads} threads")

    # ---- stage 1
    cleaner.train()
    optimizer = optimizer_for(cleaner.adapter_parameters(), config.stage1)
    step1 = stage1_step(cleaner, cleaner, optimizer, scheduler_for(optimizer, config.stage1), config.stage1, CPU,
                        NO_AUTOCAST)

    def stage1_cached():
        cached = [cache.get(k) for k in keys]
        step1({"degraded": degraded, "degraded_lengths": lengths,
               "features": torch.nn.utils.rnn.pad_sequence(cached, batch_first=True),
               "features_lengths": torch.tensor([c.shape[0] for c in cached])})

    def stage1_online():
        step1({"degraded": degraded, "degraded_lengths": lengths, "clean": clean, "clean_lengths": lengths})

    rows = [("stage 1", timed(stage1_online, args.steps), timed(stage1_cached, args.steps))]

    # ---- stage 2 (the cleaner is frozen from here on)
    cleaner.eval().requires_grad_(False)
    stage = config.stage2
    objective = build_objective(config, stage)
    vocoder, discriminator = build_vocoder(config, cleaner), objective.make_discriminator()
    opts = (optimizer_for(vocoder.parameters(), stage), optimizer_for(discriminator.parameters(), stage))
    step2 = vocoder_step(cleaner, vocoder, discriminator, vocoder, discriminator, objective, opts,
                         tuple(scheduler_for(o, stage) for o in opts), stage, CPU, NO_AUTOCAST,
                         use_adapters=False, hop_out=vocoder.hop_length)
    window = torch.full((args.batch,), 0.5, dtype=torch.float64)

    def stage2_cached():
        cached = [cache.get(k) for k in keys]
        padded = torch.nn.utils.rnn.pad_sequence(cached, batch_first=True)
        feats, wave = cut_windows(padded, torch.tensor([c.shape[0] for c in cached]), clean, window,
                                  stage.segment_frames, vocoder.hop_length)
        step2({"features": feats, "target_wave": wave})

    def stage2_online():
        step2({"clean": clean, "clean_lengths": lengths, "target_wave": clean, "window": window})

    rows.append(("stage 2", timed(stage2_online, args.steps), timed(stage2_cached, args.steps)))
    print("\n| step | online clean features (wall / CPU) | cached (wall / CPU) | speed-up (wall / CPU) |")
    print("|---|---:|---:|---:|")
    for name, (ow, oc), (cw, cc) in rows:
        print(f"| {name} | {ow:.3f} s / {oc:.3f} s | {cw:.3f} s / {cc:.3f} s | {ow / cw:.2f}x / {oc / cc:.2f}x |")


if __name__ == "__main__":
    main()
