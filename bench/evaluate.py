"""Time the evaluation of 100 utterances: `python -m bench.evaluate [--utterances 100] [--workers 1 2]`.

The evaluation set cycles the five LibriVox recordings of pocketsphinx-testdata (24.7 s of real
speech) under seeded noise / band-limit degradations, so it needs nothing but the installed
packages. Systems: clean, degraded, a tiny random Miipher-2 (the real model's restoration cost
is `bench/restore_rtf.py`'s business; here it is near zero) and DeepFilterNet3. Every metric
group runs: intrusive, DNSMOS, speaker similarity and Whisper tiny.en WER.

Reports wall time per phase (enhancement, scoring) and per utterance, for each worker count, and
the CPU seconds spent (this process + the scoring workers): on a shared machine wall time moves
with the neighbours' load, the CPU cost does not.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def build_set(root: Path, n: int, seed: int = 0) -> float:
    """n utterances in the evaluation layout; returns the total seconds of audio."""
    from miipher2.audio import read_audio, write_audio
    from miipher2.data.manifest import COLUMNS, write_manifest
    from tests.evaluate.builders import LIBRIVOX, band_limited, noisy

    transcripts = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, _, utt = line.rpartition("(")
        transcripts[utt.strip(") ")] = text.replace("<s>", "").replace("</s>", "").strip()
    clips = sorted(LIBRIVOX.glob("*.wav"))
    rng = np.random.default_rng(seed)
    rows, seconds = [], 0.0
    for index in range(n):
        clip = clips[index % len(clips)]
        clean, rate = read_audio(clip)
        utt_id = f"utt{index:04d}"
        snr = float(rng.uniform(0, 20))
        if index % 2:
            degraded, chain = noisy(clean, snr, rng), [{"effect": "noise", "snr_db": snr}]
        else:
            degraded = noisy(band_limited(clean, 3000.0), snr, rng)
            chain = [{"effect": "band_limit", "cutoff_hz": 3000.0}, {"effect": "noise", "snr_db": snr}]
        write_audio(root / f"clean/en/librivox/{utt_id}.wav", clean, rate)
        write_audio(root / f"degraded/test/{utt_id}.wav", degraded, rate)
        seconds += clean.size / rate
        rows.append({"utt_id": utt_id, "path": f"degraded/test/{utt_id}.wav", "duration_s": clean.size / rate,
                     "sample_rate": rate, "channels": 1, "language": "en", "speaker": "librivox", "split": "test",
                     "transcript": transcripts[clip.stem], "clean_path": f"clean/en/librivox/{utt_id}.wav",
                     "degradation": json.dumps(chain)})
    write_manifest(pd.DataFrame(rows, columns=[*COLUMNS, "clean_path", "degradation"]),
                   root / "manifests" / "test_degraded.csv")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    from miipher2.evaluate.run import evaluate_model
    from tests.evaluate.builders import build_tiny_restorer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio_s = build_set(tmp / "data", args.utterances)
        model = build_tiny_restorer(tmp / "model", tmp / "backbone")
        print(f"{args.utterances} utterances, {audio_s:.0f} s of audio, 4 systems, every metric")
        for workers in args.workers:
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            result = evaluate_model(str(model), tmp / "data", out_dir=tmp / f"out{workers}", workers=workers,
                                    tracking=False)
            wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
            phases = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items())
            print(f"workers={workers}: {wall:.1f} s wall ({wall / args.utterances:.2f} s per utterance; {phases}; "
                  f"report {wall - sum(result.timings_s.values()):.1f} s); CPU {cpu:.1f} s "
                  f"({cpu / args.utterances:.2f} s per utterance)")


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its finished children (the scoring pool)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
