"""Re-checking a materialised dataset version: hashing every file vs. trusting the verification record.

    .venv/bin/python -m bench.verify_dataset                       # 4,000 files x 256 KiB (1 GiB)
    .venv/bin/python -m bench.verify_dataset --files 20000 --kib 64

A pipeline run fetches a DVC version once into `<workspace>/datasets/<md5>` and verifies every
file's md5; `miipher2.data.versioning.verify_copy` records each verified file's size, mtime and
inode, so a later run hashes only files that changed since. This writes a synthetic dataset (its
"manifest" of expected md5s computed while writing), then times: the first verification (every
file hashed), a re-check with the record (stat only), and a re-check after 1% of the files were
rewritten (those hashed again). The files sit in the page cache, so hashing runs at memory speed:
on network storage the first pass is slower and the gain larger.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from miipher2.data.versioning import verify_copy

MD5 = "0123456789abcdef0123456789abcdef.dir"


def synthetic_dataset(root: Path, files: int, kib: int) -> dict[str, str]:
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(files):
        relative = f"clean/xx/spk{i % 50:02d}/utt{i:06d}.wav"
        data = rng.integers(0, 256, kib * 1024, dtype=np.uint8).tobytes()
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        expected[relative] = hashlib.md5(data).hexdigest()
    return expected


def timed(root: Path, expected: dict[str, str]) -> float:
    started = time.perf_counter()
    mismatches = verify_copy(root, MD5, expected)
    elapsed = time.perf_counter() - started
    assert mismatches == [], mismatches[:5]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4000)
    parser.add_argument("--kib", type=int, default=256, help="size of each file")
    args = parser.parse_args()
    print(f"CPUs: {os.cpu_count()}; load average: {open('/proc/loadavg').read().split()[:3]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "datasets" / MD5
        expected = synthetic_dataset(root, args.files, args.kib)
        gib = args.files * args.kib / 1024 ** 2
        first = timed(root, expected)
        trusted = min(timed(root, expected) for _ in range(3))
        for name in list(expected)[:: 100]:  # 1%: rewritten with the same bytes (new mtime)
            (root / name).write_bytes((root / name).read_bytes())
        partial = timed(root, expected)
        print(f"{args.files} files, {gib:.2f} GiB")
        print(f"first verification (hash every file): {first:.2f} s ({gib / first:.2f} GiB/s)")
        print(f"re-check with the record (stat only):  {trusted:.3f} s ({args.files / trusted:,.0f} files/s), "
              f"{first / trusted:.0f}x faster")
        print(f"re-check after 1% rewritten:          {partial:.3f} s")
        files_per_tib = 1024 ** 3 / args.kib
        print(f"per TiB at this file size ({files_per_tib:,.0f} files): {first / gib * 1024 / 60:.1f} min hashing vs "
              f"{trusted / args.files * files_per_tib / 60:.1f} min re-checking")


if __name__ == "__main__":
    main()
