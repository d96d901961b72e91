"""Training step time: the clean-feature cache, and vocoder windows encoded with context.

(GAN step time per vocoder kind: bench/vocoder_steps.py.)

    .venv/bin/python -m bench.train_steps [--preset mhubert-147] [--size base] [--batch 2] [--seconds 10]
                                          [--source-rate 48000] [--steps 3]

Real code paths throughout: `batch` files of `seconds` of speech-like audio recorded at
`source-rate` are written as a dataset, `TrainingDataset` builds every sample from the files
(decoding, resampling, content keys, cached features), and the step functions of
miipher2.train.stages train on them, with a randomly initialised backbone of the real width
(`base`: e.g. mHuBERT-147's 768-dim layers up to its feature layer 6) and a 24 kHz vocoder.
Each figure is the median of `--steps` timed (sample building + step) runs after one warm-up,
as wall time and as process CPU time (robust to other load).

Rows:
- stage 1 / stage 2, online vs cached clean features;
- stage 2 without the cache and stage 3: the window's features from the whole item (what the
  steps did before) vs from the window plus WINDOW_CONTEXT_SECONDS either side (now), for the
  sample building + encoder part alone (what changed) and for the whole step (+ the GAN update);
- sample building alone: decoding and resampling the whole source file at 16 kHz and at the
  vocoder's rate, then slicing (before) vs decoding only what the sample needs (now).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from miipher2.audio import read_audio, write_audio
from miipher2.data.manifest import COLUMNS, manifest_path, write_manifest
from miipher2.train.config import ENCODER_SAMPLE_RATE, load_config
from miipher2.train.data import TrainingDataset, collate, load_items
from miipher2.train.distributed import DistContext
from miipher2.train.feature_cache import FeatureCache
from miipher2.train.stages import (build_encoder, build_objective, build_vocoder, cut_windows, fill_feature_cache,
                                   optimizer_for, scheduler_for, stage1_step, vocoder_step, window_context)

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
NO_AUTOCAST = contextlib.nullcontext()


def timed(fn, steps: int) -> tuple[float, float]:
    fn()  # warm-up: allocator, oneDNN kernels, page cache
    wall, cpu = [], []
    for _ in range(steps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def write_dataset(root: Path, count: int, seconds: float, rate: int) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        t = np.arange(int(seconds * rate)) / rate
        phase = 2 * np.pi * np.cumsum(120 + 20 * i + 10 * np.sin(2 * np.pi * 0.7 * t)) / rate
        envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + i))
        wave = 0.2 * envelope * sum(np.sin(k * phase) / k for k in range(1, 8)) + 0.005 * rng.standard_normal(t.size)
        relative = f"clean/en/s/u{i}.wav"
        write_audio(root / relative, wave.astype(np.float32), rate)
        rows.append({"utt_id": f"u{i}", "path": relative, "duration_s": seconds, "sample_rate": rate, "channels": 1,
                     "language": "en", "speaker": "s", "split": "train", "transcript": ""})
    write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), manifest_path(root, "train"))


def noisy(wave: np.ndarray, rng: np.random.Generator):
    """A cheap degradation: the real simulator's cost scales with the audio degraded (see bench.degrade)."""
    return wave + 0.05 * rng.standard_normal(wave.size).astype(np.float32), []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mhubert-147")
    parser.add_argument("--size", default="base", choices=("tiny", "base"))
    parser.add_argument("--vocoder-size", default="paper", choices=("tiny", "paper"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="item length (the paper preset's data.max_seconds)")
    parser.add_argument("--source-rate", type=int, default=48000)
    parser.add_argument("--vocoder-rate", type=int, default=24000)
    parser.add_argument("--segment-frames", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_dataset(work / "data", args.batch, args.seconds, args.source_rate)
    config = load_config("demo-cpu", [f"encoder.preset={args.preset}", "encoder.source=random:" + args.size,
                                      "encoder.adapter_dim=1024", f"vocoder.sample_rate={args.vocoder_rate}",
                                      f"vocoder.size={args.vocoder_size}",
                                      f"stage2.segment_frames={args.segment_frames}",
                                      f"stage3.segment_frames={args.segment_frames}",
                                      "vocoder.kind=hifigan", "vocoder.discriminator=full"])  # as recorded
    encoder = build_encoder(config, work, CPU.device)
    cleaner = encoder.cleaner
    items = load_items(work / "data", "train", args.seconds, 0)
    cache = FeatureCache(work, encoder.identity, "fp32")
    fill_feature_cache(encoder, cache, work / "data", items, CPU, config.runtime, args.batch, 0)
    print(f"backbone {args.preset}/{args.size}: {sum(p.numel() for p in cleaner.encoder.parameters()) / 1e6:.1f}M "
          f"encoder parameters up to layer {cleaner.feature_layer}, feature dim {cleaner.feature_dim}; batch "
          f"{args.batch} x {args.seconds:g} s items from {args.source_rate} Hz files; {args.segment_frames}-frame "
          f"windows, {args.vocoder_size} vocoder at {args.vocoder_rate} Hz; {args.threads} thread(s)")

    def run(step, **fields):
        dataset = TrainingDataset(work / "data", items, seed=0, **fields)
        return lambda: step(collate([dataset[(i, 0)] for i in range(len(items))]))

    rows = []
    # ---- stage 1
    cleaner.train()
    optimizer = optimizer_for(cleaner.adapter_parameters(), config.stage1)
    step1 = stage1_step(cleaner, cleaner, optimizer, scheduler_for(optimizer, config.stage1), config.stage1, CPU,
                        NO_AUTOCAST)
    rows.append(("stage 1", "online clean features", timed(run(step1, degrade=noisy, clean=True), args.steps)))
    rows.append(("stage 1", "cached clean features", timed(run(step1, degrade=noisy, features=cache), args.steps)))

    # ---- stages 2 and 3 (the cleaner is frozen from here on)
    cleaner.eval().requires_grad_(False)
    whole_item = int(args.seconds * ENCODER_SAMPLE_RATE) // cleaner.hop_length * cleaner.hop_length
    for name, stage, use_adapters in (("stage 2", config.stage2, False), ("stage 3", config.stage3, True)):
        objective = build_objective(config, stage)
        vocoder, discriminator = build_vocoder(config, cleaner), objective.make_discriminator()
        opts = (optimizer_for(vocoder.parameters(), stage), optimizer_for(discriminator.parameters(), stage))
        step = vocoder_step(cleaner, vocoder, discriminator, vocoder, discriminator, objective, opts,
                            tuple(scheduler_for(o, stage) for o in opts), stage, CPU, NO_AUTOCAST,
                            use_adapters=use_adapters)
        windows = dict(target_rate=args.vocoder_rate, window_frames=stage.segment_frames, frame_hop=cleaner.hop_length)
        audio = dict(degrade=noisy) if use_adapters else dict(clean=True)
        wave_name = "degraded" if use_adapters else "clean"

        def features_only(batch, use_adapters=use_adapters, wave_name=wave_name, window=stage.segment_frames):
            with torch.no_grad():  # what the step does before the GAN: encode, cut the window
                features, _ = cleaner(batch[wave_name], batch[f"{wave_name}_lengths"], use_adapters=use_adapters)
            cut_windows(features, batch["window_offset"].tolist(), window)

        for variant, context in (("the whole item (before)", whole_item), ("window + context (now)",
                                                                             window_context(cleaner))):
            rows.append((f"{name}, sample + features only", variant,
                         timed(run(features_only, context=context, **audio, **windows), args.steps)))
            rows.append((f"{name}, whole step", variant, timed(run(step, context=context, **audio, **windows),
                                                               args.steps)))
        if not use_adapters:
            rows.append((f"{name}, whole step", "cached clean features", timed(run(step, features=cache, **windows),
                                                                              args.steps)))

    # ---- sample building alone (stage 3 fields)
    hop_out = cleaner.hop_length * args.vocoder_rate // ENCODER_SAMPLE_RATE

    def whole_file_reads():
        for item in items:  # what TrainingDataset.read did: decode + resample the whole file, then slice
            path = work / "data" / item.path
            read_audio(path, sample_rate=ENCODER_SAMPLE_RATE)[0][item.start: item.end]
            read_audio(path, sample_rate=args.vocoder_rate)[0][: config.stage3.segment_frames * hop_out]

    windowed = TrainingDataset(work / "data", items, seed=0, clean=True, target_rate=args.vocoder_rate,
                               window_frames=config.stage3.segment_frames, frame_hop=cleaner.hop_length,
                               context=window_context(cleaner))
    rows.append(("sample building", "whole files decoded and resampled (before)", timed(whole_file_reads, args.steps)))
    rows.append(("sample building", "window + context decoded (now)",
                 timed(lambda: [windowed[(i, 0)] for i in range(len(items))], args.steps)))

    print("\n| what | features | wall | CPU |\n|---|---|---:|---:|")
    for step_name, variant, (wall, cpu) in rows:
        print(f"| {step_name} | {variant} | {wall:.3f} s | {cpu:.3f} s |")
    print(f"\n/proc/loadavg at the end: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
