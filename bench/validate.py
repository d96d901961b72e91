"""How fast `validate_dataset` checks a corpus, by number of worker threads.

    .venv/bin/python -m bench.validate               # a synthetic 400-file corpus (~32 min of audio)
    .venv/bin/python -m bench.validate data          # an existing dataset, e.g. the demo corpus

Each setting runs after one warm-up pass, so the numbers measure decoding and checking with the
files in the page cache (the usual case right after a corpus is built or pulled).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from miipher2.audio import write_audio
from miipher2.data.manifest import COLUMNS, SPLITS, manifest_path, write_manifest
from miipher2.data.validate import validate_dataset


def synthetic_corpus(root: Path, files: int = 400, seconds: float = 4.8, rate: int = 16000) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(files):
        split = SPLITS[i % len(SPLITS)]
        wave = (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
        path = f"clean/xx/{split}_spk{i % 7}/utt{i:04d}.wav"
        write_audio(root / path, wave, rate)
        rows.append({"utt_id": f"utt{i:04d}", "path": path, "duration_s": seconds, "sample_rate": rate, "channels": 1,
                     "language": "xx", "speaker": f"{split}_spk{i % 7}", "split": split, "transcript": ""})
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for split in SPLITS:
        write_manifest(frame[frame["split"] == split], manifest_path(root, split))


def bench(root: Path, repeats: int = 3) -> None:
    validate_dataset(root)  # warm-up: page cache, imports
    for workers in (1, 2, 4):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            report = validate_dataset(root, workers=workers)
            times.append(time.perf_counter() - start)
        best = min(times)
        audio_s = sum(pd.to_numeric(pd.read_csv(manifest_path(root, s))["duration_s"]).sum() for s in report.rows)
        print(f"workers={workers}: {report.rows_checked} files, {audio_s / 60:.1f} min of audio, best of {repeats} "
              f"{best:.3f} s ({report.rows_checked / best:.0f} files/s, {audio_s / best:.0f}x real time), "
              f"ok={report.ok}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", nargs="?", type=Path, help="dataset to validate (default: a synthetic one)")
    args = parser.parse_args()
    print(f"CPUs: {os.cpu_count()}")
    if args.dataset_dir is not None:
        bench(args.dataset_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_corpus(Path(tmp))
        bench(Path(tmp))


if __name__ == "__main__":
    main()
