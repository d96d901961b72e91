"""GAN step time per vocoder kind and discriminator size.

    .venv/bin/python -m bench.vocoder_steps [--rate 24000] [--segment-frames 32] [--batch 2] [--rounds 5]
                                            [--vocoder-size paper|tiny]

One GAN step (discriminator step + generator step, `stages.vocoder_step`) per vocoder kind
(paper-size generators, or `--vocoder-size tiny` as in demo-cpu) with its full discriminator set
and with the small one, on the same batch of cached 768-dim features (mHuBERT-147's width) and
waves. Kinds run interleaved, one step each per round, so all see the same load; medians of
`--rounds` after a warm-up round, as wall time and as process CPU time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from types import SimpleNamespace

import torch

from miipher2.train.config import load_config
from miipher2.train.distributed import DistContext
from miipher2.train.stages import build_objective, build_vocoder, optimizer_for, scheduler_for, vocoder_step

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
NO_AUTOCAST = contextlib.nullcontext()


def vocoder_steps(rate: int, segment_frames: int, batch: int, rounds: int, generator_size: str,
                  feature_dim: int = 768) -> None:
    """GAN step time per vocoder kind and discriminator size, interleaved rounds."""
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
                            use_adapters=False)
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
    parser.add_argument("--rate", type=int, default=24000, help="output sample rate")
    parser.add_argument("--segment-frames", type=int, default=32, help="feature frames per window")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument("--vocoder-size", default="paper", choices=("tiny", "paper"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocoder_steps(args.rate, args.segment_frames, args.batch, args.rounds, args.vocoder_size)


if __name__ == "__main__":
    main()
