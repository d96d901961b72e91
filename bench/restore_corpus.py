"""Corpus restoration throughput: batched vs file by file, and 1 vs 2 shards on 2 cores.

    .venv/bin/python -m bench.restore_corpus [--files 48] [--seconds 0.5 4] [--batch-sizes 1 4 16] [--repeats 2]

Corpus: `--files` excerpts of `--seconds` MIN MAX seconds cut (deterministically) from Debian's
pocketsphinx LibriVox recordings, 16 kHz. Model: a small one where batching matters on CPU (the tiny random mHuBERT-147
encoder, 4 layers x 32 wide, with the tiny HiFi-GAN at 24 kHz), built with the real code and
loaded from disk. The figure reported is audio hours restored per hour of the whole device (this
2-core CPU), through the real `restore_shard` path (fetch, hash, decode, restore, write, record).
The machine is shared, so wall time swings by up to 10x between identical runs; the in-process
runs are therefore also measured in CPU time of the process (all threads), and "per device hour"
is audio / (CPU time / 2 cores): what an otherwise idle 2-core machine would do. DNSMOS scoring is
timed separately because it runs beside the model.

1. file by file (batch size 1) vs batched (length-bucketed, each of `--batch-sizes` files per
   call), in one process with 2 torch threads, best of `--repeats`, a fresh output folder each time;
   then the best batch size with DNSMOS scoring on.
2. 1 shard in 1 process with 2 threads vs 2 shards in 2 concurrent processes with 1 thread each
   (`miipher2 restore-corpus --shard-index`), end to end (process start, imports and model load
   included, as a user would see them) and inside the shards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def build_corpus(root: Path, files: int, seconds: tuple[float, float] = (0.5, 4.0), seed: int = 0) -> tuple[str, float]:
    """`files` excerpts of seconds[0]..seconds[1] s; returns (manifest path, total seconds)."""
    from miipher2.audio import read_audio, write_audio
    from miipher2.data.manifest import COLUMNS, write_manifest

    speech = np.concatenate([read_audio(p, sample_rate=16000)[0] for p in sorted(LIBRIVOX.glob("*.wav"))])
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(files):
        length_s = float(rng.uniform(*seconds))
        length = int(length_s * 16000)
        start = int(rng.integers(0, speech.size - length))
        relative = f"clean/en/librivox/utt{index:04d}.wav"
        write_audio(root / relative, speech[start : start + length], 16000)
        rows.append({"utt_id": f"utt{index:04d}", "path": relative, "duration_s": round(length / 16000, 4),
                     "sample_rate": 16000, "channels": 1, "language": "en", "speaker": "librivox", "split": "test",
                     "transcript": ""})
    manifest = root / "manifests" / "test.csv"
    write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), manifest)
    return str(manifest), sum(r["duration_s"] for r in rows)


def build_model(root: Path) -> Path:
    import torch

    from miipher2.model.random_backbone import TINY_FEATURE_LAYER, save_random_backbone
    from miipher2.model.restorer import Restorer

    backbone = save_random_backbone(root / "backbone", "mhubert-147", size="tiny", seed=0)
    torch.manual_seed(0)
    restorer = Restorer.build(str(backbone), "mhubert-147", feature_layer=TINY_FEATURE_LAYER, adapter_dim=16,
                              vocoder_size="tiny")
    restorer.save_pretrained(root / "model")
    return root / "model"


def in_process(manifest: str, model: Path, work: Path, batch_size: int, score: bool, workers: int, threads: int = 2) -> dict:
    """One shard restored in this process into a fresh folder; the model is loaded beforehand."""
    import torch

    from miipher2.corpus import plan_corpus, restore_shard
    from miipher2.model.restorer import Restorer

    torch.set_num_threads(threads)

    out = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    restorer = Restorer.from_pretrained(model, "cpu", batch_size=batch_size)
    plan_corpus(manifest, str(model), out, 1)
    cpu = time.process_time()
    result = restore_shard(out, 0, batch_size=batch_size, workers=workers, score=score, load=lambda: restorer)
    cpu = time.process_time() - cpu
    shutil.rmtree(out)
    assert result.restored and not result.failed, result.failed
    return {"elapsed_s": result.elapsed_s, "model_s": result.restore_s, "cpu_s": round(cpu, 3),
            "audio_s": result.restored_input_s}


def processes(manifest: str, model: Path, work: Path, shards: int, threads: int, batch_size: int) -> dict:
    """`shards` concurrent `miipher2 restore-corpus --shard-index` processes, `threads` torch threads each."""
    out = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    cli = [sys.executable, "-m", "miipher2.cli", "restore-corpus", manifest, "--model", str(model), "-o", str(out),
           "--shards", str(shards), "--threads", str(threads), "--batch-size", str(batch_size), "--workers", "1",
           "--device", "cpu", "--no-score"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    running = [subprocess.Popen([*cli, "--shard-index", str(i)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for i in range(shards)]
    for process in running:
        _, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"restore-corpus failed ({process.returncode}):\n{err[-2000:]}")
    wall = time.perf_counter() - started
    results = [json.loads((out / "state" / "shards" / f"{i:05d}.result.json").read_text()) for i in range(shards)]
    shutil.rmtree(out)
    return {"wall_s": wall, "shard_elapsed_s": max(r["elapsed_s"] for r in results),
            "audio_s": sum(r["restored_input_s"] for r in results)}


def per_hour(audio_s: float, seconds: float) -> float:
    """Audio hours restored per hour of wall time."""
    return audio_s / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--seconds", type=float, nargs=2, default=(0.5, 4.0), metavar=("MIN", "MAX"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    sizes = sorted(set([1, *args.batch_sizes]))
    with tempfile.TemporaryDirectory(prefix="bench-restore-corpus-") as tmp:
        work = Path(tmp)
        manifest, total = build_corpus(work / "data", args.files, tuple(args.seconds))
        model = build_model(work)
        print(f"corpus: {args.files} files of {args.seconds[0]}-{args.seconds[1]} s, {total:.1f} s of audio; "
              f"model: tiny mHuBERT-147 + tiny HiFi-GAN (24 kHz)")
        in_process(manifest, model, work, sizes[-1], False, 1)  # warm-up: imports, first-call costs

        runs: dict[str, list[dict]] = {f"batch {b}": [] for b in sizes}
        one_thread = {f"batch {b}, 1 thread": [] for b in (1, sizes[-1])}
        for _ in range(args.repeats):  # interleaved, so load swings hit every variant alike
            for b in sizes:
                runs[f"batch {b}"].append(in_process(manifest, model, work, b, False, 1))
            for b in (1, sizes[-1]):  # no intra-op thread synchronisation: what batching saves besides it
                one_thread[f"batch {b}, 1 thread"].append(in_process(manifest, model, work, b, False, 1, threads=1))
        runs.update(one_thread)
        best = {name: min(results, key=lambda x: x["cpu_s"]) for name, results in runs.items()}
        fastest = min(sizes[1:] or sizes, key=lambda b: best[f"batch {b}"]["cpu_s"])
        runs[f"batch {fastest} + DNSMOS"] = [in_process(manifest, model, work, fastest, True, 2)]
        best[f"batch {fastest} + DNSMOS"] = runs[f"batch {fastest} + DNSMOS"][0]
        print("\n| files per model call (1 process, 2 threads unless said) | CPU time | audio h / device h (CPU time / 2 cores) "
              "| wall time | of which in the model | audio h / h (wall) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, r in best.items():
            print(f"| {name} | {r['cpu_s']:.1f} s | {per_hour(r['audio_s'], r['cpu_s'] / 2):.1f} | {r['elapsed_s']:.1f} s "
                  f"| {r['model_s']:.1f} s | {per_hour(r['audio_s'], r['elapsed_s']):.1f} |")
        one = best["batch 1"]
        print("\nbatched / file by file (CPU time; wall): " + ", ".join(
            f"batch {b}: {one['cpu_s'] / best[f'batch {b}']['cpu_s']:.2f}x; {one['elapsed_s'] / best[f'batch {b}']['elapsed_s']:.2f}x"
            for b in sizes[1:]))
        single, batched = best["batch 1, 1 thread"], best[f"batch {sizes[-1]}, 1 thread"]
        print(f"1 thread, batch {sizes[-1]} / batch 1 (CPU time; wall): {single['cpu_s'] / batched['cpu_s']:.2f}x; "
              f"{single['elapsed_s'] / batched['elapsed_s']:.2f}x")

        scaling: dict[str, list[dict]] = {"1 shard, 1 process x 2 threads": [], "2 shards, 2 processes x 1 thread": []}
        for _ in range(args.repeats):
            scaling["1 shard, 1 process x 2 threads"].append(processes(manifest, model, work, 1, 2, fastest))
            scaling["2 shards, 2 processes x 1 thread"].append(processes(manifest, model, work, 2, 1, fastest))
        print(f"\n| layout (batch {fastest}, no scoring) | best wall (end to end) | audio h / h (end to end) | slowest shard | audio h / h (shards) |")
        print("|---|---:|---:|---:|---:|")
        for name, results in scaling.items():
            r = min(results, key=lambda x: x["wall_s"])
            print(f"| {name} | {r['wall_s']:.1f} s | {per_hour(r['audio_s'], r['wall_s']):.1f} | {r['shard_elapsed_s']:.1f} s "
                  f"| {per_hour(r['audio_s'], r['shard_elapsed_s']):.1f} |")
        print(f"\nall runs: {json.dumps({**runs, **scaling})}")
        print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
