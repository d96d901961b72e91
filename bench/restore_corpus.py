"""Corpus restoration throughput: batched vs file by file, and 1 vs 2 shards on 2 cores.

    .venv/bin/python -m bench.restore_corpus [--files 32] [--repeats 2] [--batch-size 16]

Corpus: `--files` excerpts of 1-8 s cut (deterministically) from Debian's pocketsphinx LibriVox
recordings, 16 kHz. Model: a small one where batching matters on CPU (the tiny random mHuBERT-147
encoder, 4 layers x 32 wide, with the tiny HiFi-GAN at 24 kHz), built with the real code and
loaded from disk. The figure reported is audio hours restored per wall-clock hour of the whole
device (this 2-core CPU), through the real `restore_shard` path (fetch, hash, decode, restore,
write, record); DNSMOS scoring is timed separately because it runs beside the model.

1. file by file (batch_size=1) vs batched (length-bucketed, `--batch-size` files per call), in
   one process with 2 torch threads, best of `--repeats`, into a fresh output folder each time.
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


def build_corpus(root: Path, files: int, seed: int = 0) -> tuple[str, float]:
    """`files` excerpts of 1-8 s; returns (manifest path, total seconds)."""
    from miipher2.audio import read_audio, write_audio
    from miipher2.data.manifest import COLUMNS, write_manifest

    speech = np.concatenate([read_audio(p, sample_rate=16000)[0] for p in sorted(LIBRIVOX.glob("*.wav"))])
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(files):
        seconds = float(rng.uniform(1.0, 8.0))
        length = int(seconds * 16000)
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


def in_process(manifest: str, model: Path, work: Path, batch_size: int, score: bool, workers: int) -> dict:
    """One shard restored in this process into a fresh folder; the model is loaded beforehand."""
    from miipher2.corpus import plan_corpus, restore_shard
    from miipher2.model.restorer import Restorer

    out = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
    restorer = Restorer.from_pretrained(model, "cpu", batch_size=batch_size)
    plan_corpus(manifest, str(model), out, 1)
    result = restore_shard(out, 0, batch_size=batch_size, workers=workers, score=score, load=lambda: restorer)
    shutil.rmtree(out)
    assert result.restored and not result.failed, result.failed
    return {"elapsed_s": result.elapsed_s, "model_s": result.restore_s, "audio_s": result.restored_input_s}


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
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="bench-restore-corpus-") as tmp:
        work = Path(tmp)
        manifest, total = build_corpus(work / "data", args.files)
        model = build_model(work)
        print(f"corpus: {args.files} files, {total:.1f} s of audio; model: tiny mHuBERT-147 + tiny HiFi-GAN (24 kHz)")
        in_process(manifest, model, work, args.batch_size, False, 1)  # warm-up: imports, first-call costs

        runs: dict[str, list[dict]] = {"file by file": [], "batched": [], "batched + DNSMOS": []}
        for _ in range(args.repeats):  # interleaved, so load swings hit every variant alike
            runs["file by file"].append(in_process(manifest, model, work, 1, False, 1))
            runs["batched"].append(in_process(manifest, model, work, args.batch_size, False, 1))
            runs["batched + DNSMOS"].append(in_process(manifest, model, work, args.batch_size, True, 2))
        print("\n| mode (1 process, 2 threads) | best shard time | of which in the model | audio h / h (shard) | audio h / h (model) |")
        print("|---|---:|---:|---:|---:|")
        best = {}
        for name, results in runs.items():
            r = min(results, key=lambda x: x["elapsed_s"])
            best[name] = r
            print(f"| {name} | {r['elapsed_s']:.1f} s | {r['model_s']:.1f} s | {per_hour(r['audio_s'], r['elapsed_s']):.1f} "
                  f"| {per_hour(r['audio_s'], r['model_s']):.1f} |")
        speedup = best["file by file"]["elapsed_s"] / best["batched"]["elapsed_s"]
        print(f"\nbatched / file by file: {speedup:.2f}x (shard time), "
              f"{best['file by file']['model_s'] / best['batched']['model_s']:.2f}x (model time)")

        scaling: dict[str, list[dict]] = {"1 shard, 1 process x 2 threads": [], "2 shards, 2 processes x 1 thread": []}
        for _ in range(args.repeats):
            scaling["1 shard, 1 process x 2 threads"].append(processes(manifest, model, work, 1, 2, args.batch_size))
            scaling["2 shards, 2 processes x 1 thread"].append(processes(manifest, model, work, 2, 1, args.batch_size))
        print("\n| layout (batched, no scoring) | best wall (end to end) | audio h / h (end to end) | slowest shard | audio h / h (shards) |")
        print("|---|---:|---:|---:|---:|")
        for name, results in scaling.items():
            r = min(results, key=lambda x: x["wall_s"])
            print(f"| {name} | {r['wall_s']:.1f} s | {per_hour(r['audio_s'], r['wall_s']):.1f} | {r['shard_elapsed_s']:.1f} s "
                  f"| {per_hour(r['audio_s'], r['shard_elapsed_s']):.1f} |")
        print(f"\nall runs: {json.dumps({**runs, **scaling})}")
        print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
