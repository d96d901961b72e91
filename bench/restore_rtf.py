"""Inference speed of the restorer on CPU, against the machine's own matmul limit.

    .venv/bin/python -m bench.restore_rtf [--presets w2v-bert-2.0 mhubert-147] [--kinds hifigan vocos wavefit]
                                          [--seconds 10] [--threads 2] [--repeats 3]

For each preset and vocoder kind: a real-sized model (the released architecture, random weights,
encoder built only up to its feature layer since nothing above it is computed) + the paper-size
vocoder of that kind at 24 kHz restores one clip. Reported: real-time factor (wall time / audio
time), model FLOPs per second of audio (torch FlopCounterMode), achieved GFLOP/s, and the ratio
of the measured time to the FLOP-bound time (FLOPs / the best matmul GFLOP/s measured in the
same run). Repeats are interleaved across the kinds of a preset, so all see the same load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def matmul_peak_gflops(repeats: int = 5, device: str = "cpu") -> float:
    """Best GEMM throughput over a few square sizes (float32 on CPU, bf16 on CUDA, as the restorer
    runs there): the practical FLOP-bound ceiling."""
    cuda = device.startswith("cuda")
    dtype, sizes = (torch.bfloat16, (4096, 8192)) if cuda else (torch.float32, (1024, 2048))
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if cuda:
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def build_restorer(preset: str, output_rate: int, vocoder_size: str, kind: str = "hifigan"):
    import transformers

    from miipher2.model.backbone import BACKBONE_PRESETS, FAMILIES, FeatureCleaner
    from miipher2.model.random_backbone import architecture
    from miipher2.model.restorer import Restorer
    from miipher2.model.vocoders import build_vocoder, vocoder_config

    spec = BACKBONE_PRESETS[preset]
    config, model_class, extractor = architecture(preset, "full")
    depth_key = "conf_num_hidden_layers" if spec.family == "gemma3n-audio" else "num_hidden_layers"
    setattr(config, depth_key, spec.feature_layer)  # the layers above are dropped unbuilt, never computed
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    cleaner = FeatureCleaner(model_class(config).eval(), extractor, preset, spec.feature_layer, source=f"random:{preset}")
    assert len(FAMILIES[spec.family].layers(cleaner.encoder)) == spec.feature_layer
    torch.manual_seed(0)
    settings = vocoder_config(kind, cleaner.feature_dim, cleaner.hop_length, output_rate, size=vocoder_size)
    vocoder = build_vocoder(settings)
    vocoder.prepare_for_inference()  # as Restorer.from_pretrained does
    return Restorer(cleaner, vocoder, chunk_seconds=30.0).eval()


def count_flops(restorer, wave: np.ndarray) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.from_numpy(wave)[None]
    with torch.inference_mode():
        with FlopCounterMode(display=False) as cleaner_counter:
            features, _ = restorer.cleaner(x)
        with FlopCounterMode(display=False) as vocoder_counter:
            restorer.vocoder(features)
    return {"cleaner": cleaner_counter.get_total_flops(), "vocoder": vocoder_counter.get_total_flops()}


def time_restore(restorers: dict, waves: list[np.ndarray], repeats: int, device: str) -> tuple[dict, list[float]]:
    """Restore times per restorer and matmul peaks, interleaved so all see the same load on a shared machine."""
    rates = [16000] * len(waves)
    for restorer in restorers.values():
        restorer.restore_batch(waves, rates)  # warm-up: allocator, oneDNN / cuDNN kernel selection
    times, peaks = {name: [] for name in restorers}, []
    for _ in range(repeats):
        peaks.append(matmul_peak_gflops(repeats=2, device=device))
        for name, restorer in restorers.items():
            start = time.perf_counter()
            restorer.restore_batch(waves, rates)  # returns numpy: includes the device synchronisation
            times[name].append(time.perf_counter() - start)
    return times, peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["w2v-bert-2.0", "mhubert-147"])
    parser.add_argument("--kinds", nargs="+", default=["hifigan", "vocos", "wavefit"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-rate", type=int, default=24000)
    parser.add_argument("--vocoder-size", default="paper", choices=("paper", "tiny"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast, as Restorer runs there)")
    parser.add_argument("--batch", type=int, default=1, help="clips restored together (the paper: 8 x 30 s on a TPU)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(int(args.seconds * 16000))).astype(np.float32) for _ in range(args.batch)]
    audio_seconds = args.seconds * args.batch
    print(f"torch {torch.__version__}, {args.device}, {args.threads} threads, {args.batch} x {args.seconds:g} s, "
          f"best of {args.repeats}, load average {os.getloadavg()[0]:.1f}")
    print("| preset | vocoder | params (encoder to feature layer + adapters / vocoder) "
          "| GFLOP per audio second (cleaner + vocoder) | best (median) time | RTF | achieved GFLOP/s "
          "| matmul peak GFLOP/s | time / FLOP-bound time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets:
        restorers = {kind: build_restorer(preset, args.output_rate, args.vocoder_size, kind) for kind in args.kinds}
        flops = {kind: count_flops(restorer, waves[0]) for kind, restorer in restorers.items()}
        for restorer in restorers.values():
            restorer.batch_size = args.batch
            restorer.to(args.device)
        times, peaks = time_restore(restorers, waves, args.repeats, args.device)
        peak = max(peaks)
        for kind, restorer in restorers.items():
            per_second = {k: v / args.seconds / 1e9 for k, v in flops[kind].items()}
            total = sum(flops[kind].values()) / 1e9 * args.batch
            best, median = min(times[kind]), statistics.median(times[kind])
            encoder_params = sum(p.numel() for p in restorer.cleaner.parameters()) / 1e6
            vocoder_params = sum(p.numel() for p in restorer.vocoder.parameters()) / 1e6
            print(f"| {preset} | {kind} | {encoder_params:.0f}M / {vocoder_params:.1f}M "
                  f"| {per_second['cleaner']:.1f} + {per_second['vocoder']:.1f} = {sum(per_second.values()):.1f} "
                  f"| {best:.2f} s ({median:.2f} s) | {best / audio_seconds:.4f} | {total / best:.1f} | {peak:.0f} "
                  f"| {best / (total / peak):.2f}x |", flush=True)
        del restorers
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
