"""A learning run on 2 CPU cores: all three stages of a preset on the demo corpus, then the
standard evaluation on the test split and the checks docs/benchmarks.md records.

    nice -n 5 .venv/bin/python -m bench.learning [--data data] [--out runs/learning] [--preset learn-cpu]
        [--set stage1.steps=100 ...] [--workers 2] [--figure docs/learning-spectrograms.png] [--skip-training]

1. Stages 1 and 2 run side by side (one process and one CPU thread each, as the pipeline runs
   them), then stage 3, which writes the model directory; each is the `miipher2 train` command,
   tracked in `<out>/mlflow.db` (experiment `learning`), so their validation curves overlay in
   `mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db` (and are in `<out>/stageN/validation/`).
2. The standard evaluation (`miipher2.evaluate.evaluate_model`) of the model on the test split:
   clean / degraded / restored / DeepFilterNet3, every metric, 95 % bootstrap intervals.
3. Vocoder resynthesis: the stage-2 vocoder on the frozen encoder's features of the *clean* test
   utterances, scored with ESTOI against them (can the vocoder speak from these features at all?).
4. Gap closed by the published (best) adapters on the whole val split, with a bootstrap interval.
5. The goals: gap closed >= 40 %, resynthesis ESTOI >= 0.6, restored better than degraded on
   DNSMOS OVRL and ESTOI (paired bootstrap of the per-utterance difference).

Wall time, process CPU time and /proc/loadavg samples (every 30 s) are recorded beside the
numbers: the CPUs are shared, so wall time says as much about the neighbours as about the run.
Everything lands in `<out>/summary.json`; the Markdown printed at the end is what goes into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

GOAL_GAP_CLOSED, GOAL_RESYNTHESIS_ESTOI = 0.40, 0.60
EXPERIMENT = "learning"


class LoadSampler(threading.Thread):
    """/proc/loadavg's 1-minute figure every `every` seconds while the run lasts."""

    def __init__(self, every: float = 30.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stopped = every, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stopped.wait(self.every)

    def summary(self) -> dict[str, float]:
        values = np.asarray(self.samples or [float("nan")])
        return {"samples": len(self.samples), "min": float(values.min()), "mean": float(values.mean()),
                "max": float(values.max())}


def train_command(stage: str, args, out: Path, *extra: str) -> list[str]:
    sets = [a for item in args.overrides for a in ("--set", item)]
    return [sys.executable, "-m", "miipher2.cli", "train", stage, "--config", args.preset, "--data", str(args.data),
            "--out", str(out / stage), "--cache", str(out / "cache"), *sets, *extra]


def run_stages(args, out: Path) -> dict[str, float]:
    """Stages 1 and 2 side by side, then stage 3 (which exports the model); wall seconds of each."""
    import mlflow

    tracking = f"sqlite:///{out / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment(EXPERIMENT)  # created here, not by two stages racing to create it
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
           "MIIPHER2_NO_PROGRESS": "1"}
    seconds = {}

    def run(stages: list[str], *extra: str) -> None:
        started = time.perf_counter()
        logs = {stage: (out / f"{stage}.log").open("w") for stage in stages}
        processes = {stage: subprocess.Popen(train_command(stage, args, out, *extra), env=env, stdout=logs[stage],
                                             stderr=subprocess.STDOUT) for stage in stages}
        for stage, process in processes.items():
            if process.wait() != 0:
                raise SystemExit(f"{stage} failed (exit {process.returncode}); see {out / f'{stage}.log'}")
            seconds[stage] = time.perf_counter() - started
            logs[stage].close()

    run(["stage1", "stage2"])
    run(["stage3"], "--stage1", str(out / "stage1"), "--stage2", str(out / "stage2"), "--model-out", str(out / "model"))
    return seconds


def resynthesis_estoi(out: Path, data: Path, max_utterances: int | None = None) -> dict[str, float]:
    """ESTOI of the stage-2 vocoder speaking from the frozen encoder's features of clean test speech."""
    import torch

    from miipher2.audio import read_audio
    from miipher2.evaluate.aggregate import bootstrap_ci
    from miipher2.evaluate.evalset import load_evaluation_set
    from miipher2.evaluate.metrics import METRIC_RATE, estoi
    from miipher2.train.checkpoint import load_weights
    from miipher2.train.config import load_config
    from miipher2.train.stages import VOCODER_FILE, build_encoder, build_vocoder

    config = load_config(out / "stage2" / "config.yaml")
    cleaner = build_encoder(config, out / "cache", torch.device("cpu")).cleaner.eval()
    vocoder = build_vocoder(config, cleaner).eval()
    load_weights(vocoder, out / "stage2" / VOCODER_FILE)
    scores = []
    for row in load_evaluation_set(data, "test", max_utterances).itertuples():
        clean, _ = read_audio(row.clean_file, sample_rate=METRIC_RATE)
        with torch.no_grad():
            features, frames = cleaner(torch.from_numpy(clean)[None], use_adapters=False)
            wave = vocoder(features[:, : int(frames[0])])[0].numpy()
        if vocoder.sample_rate != METRIC_RATE:
            from miipher2.audio import resample

            wave = resample(wave, vocoder.sample_rate, METRIC_RATE)
        scores.append(estoi(clean, wave[: len(clean)], METRIC_RATE))
    n, (mean, low, high) = len(scores), bootstrap_ci(scores)
    return {"n": n, "mean": mean, "ci_low": low, "ci_high": high}


def val_gap_closed(out: Path, data: Path) -> dict[str, float]:
    """Gap closed by the published (best) adapters on the WHOLE val split, with a 95 % bootstrap
    interval over utterances (training validated on a fixed subset of it)."""
    import contextlib
    import dataclasses

    import torch

    from miipher2.train.checkpoint import load_weights
    from miipher2.train.config import load_config
    from miipher2.train.stages import ADAPTERS_FILE, build_encoder
    from miipher2.train.validation import FeatureScorer, gap_closed, load_pairs

    config = load_config(out / "stage1" / "config.yaml")
    cleaner = build_encoder(config, out / "cache", torch.device("cpu")).cleaner.eval()
    load_weights(cleaner.adapters, out / "stage1" / ADAPTERS_FILE)
    everything = dataclasses.replace(config.validation, utterances=10**6)
    distances = [FeatureScorer(cleaner, [pair], torch.device("cpu"), contextlib.nullcontext()).sums()
                 for pair in load_pairs(data, everything)]
    cleaned = np.array([d["l1"] for d in distances])
    untouched = np.array([d["untouched_l1"] for d in distances])
    resamples = np.random.default_rng(0).integers(len(cleaned), size=(2000, len(cleaned)))
    low, high = np.percentile(1 - cleaned[resamples].mean(1) / untouched[resamples].mean(1), [2.5, 97.5])
    return {"n": len(cleaned), "mean": gap_closed(cleaned.mean(), untouched.mean()), "ci_low": low, "ci_high": high}


def restored_vs_degraded(table, metric: str) -> dict[str, float]:
    """Paired bootstrap of restored - degraded per utterance (positive: restored is better)."""
    from miipher2.evaluate.aggregate import paired_bootstrap
    from miipher2.evaluate.metrics import METRICS

    pivot = table.pivot_table(index="utt_id", columns="system", values=metric)
    n, mean, low, high = paired_bootstrap(pivot["miipher2"].to_numpy(), pivot["degraded"].to_numpy(),
                                          higher_is_better=METRICS[metric].higher_is_better)
    return {"n": n, "mean": mean, "ci_low": low, "ci_high": high}


def write_figure(evaluation: Path, figure: Path, utt_id: str | None) -> str:
    """Spectrograms of clean / degraded / restored for one test utterance (the first LibriVox
    recording unless named: real speech the model never heard in any split it trained on)."""
    import base64

    import pandas as pd

    from miipher2.audio import read_audio
    from miipher2.evaluate.metrics import METRIC_RATE
    from miipher2.evaluate.report import spectrogram_png

    table = pd.read_csv(evaluation / "utterances.csv")
    if utt_id is None:
        restored = table[table["system"] == "miipher2"]
        librivox = restored[restored["speaker"] == "en-librivox"]
        utt_id = str((librivox if len(librivox) else restored).iloc[0]["utt_id"])
    files = table[table["utt_id"] == utt_id].set_index("system")["audio_file"]
    waves = {name: read_audio(files[system], sample_rate=METRIC_RATE)[0]
             for name, system in (("clean", "clean"), ("degraded", "degraded"), ("restored", "miipher2"))}
    figure.parent.mkdir(parents=True, exist_ok=True)
    figure.write_bytes(base64.b64decode(spectrogram_png(waves, METRIC_RATE)))
    return utt_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path("runs/learning"))
    parser.add_argument("--preset", default="learn-cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", type=int, default=2, help="evaluation scoring processes")
    parser.add_argument("--max-utterances", type=int, help="evaluate a subset of the test split (smoke runs)")
    parser.add_argument("--figure", type=Path, help="write the clean / degraded / restored spectrogram PNG here")
    parser.add_argument("--figure-utterance", help="test utt_id for the figure (default: the first LibriVox one)")
    parser.add_argument("--skip-training", action="store_true", help="evaluate the model already in --out")
    args = parser.parse_args(argv)

    from miipher2.evaluate.run import evaluate_model
    from miipher2.train.validation import read_history

    out = args.out.resolve()
    if not (args.data / "manifests" / "test_degraded.csv").is_file():
        raise SystemExit(f"{args.data}: no demo corpus; build it with `miipher2 data build-demo --root {args.data}`")
    out.mkdir(parents=True, exist_ok=True)
    load = LoadSampler()
    load.start()
    summary: dict = {"preset": args.preset, "overrides": args.overrides, "machine": f"{platform.machine()}, "
                     f"{os.cpu_count()} cores", "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.skip_training:
        started, cpu_before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        summary["stage_wall_s"] = run_stages(args, out)
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        summary["training"] = {"wall_s": time.perf_counter() - started,
                               "cpu_s": cpu.ru_utime + cpu.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime,
                               "load": load.summary()}
    started = time.perf_counter()
    result = evaluate_model(out / "model", args.data, split="test", out_dir=out / "evaluation", workers=args.workers,
                            max_utterances=args.max_utterances, tracking=False)
    summary["evaluation_wall_s"] = time.perf_counter() - started
    summary["load"] = load.summary()
    load.stopped.set()

    overall = result.aggregates[result.aggregates["group_by"] == "all"]
    summary["test"] = {f"{r.system}.{r.metric}": {"n": int(r.n), "mean": r.mean, "ci_low": r.ci_low,
                                                   "ci_high": r.ci_high} for r in overall.itertuples()}
    summary["restored_minus_degraded"] = {m: restored_vs_degraded(result.table, m) for m in ("dnsmos_ovrl", "estoi")}
    summary["resynthesis_estoi"] = resynthesis_estoi(out, args.data, args.max_utterances)
    summary["validation"] = {stage: json.loads((out / stage / "result.json").read_text())["validation"]
                             for stage in ("stage1", "stage2", "stage3")}
    summary["gap_closed"] = val_gap_closed(out, args.data)
    summary["curves"] = {stage: read_history(out / stage) for stage in ("stage1", "stage2", "stage3")}
    if args.figure:
        summary["figure"] = {"path": str(args.figure), "utt_id": write_figure(out / "evaluation", args.figure,
                                                                               args.figure_utterance)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(markdown(summary))
    return 0


def markdown(summary: dict) -> str:
    def ci(entry: dict, digits: int = 2) -> str:
        return f"{entry['mean']:.{digits}f} [{entry['ci_low']:.{digits}f}, {entry['ci_high']:.{digits}f}]"

    test, diff = summary["test"], summary["restored_minus_degraded"]
    lines = ["| goal | measured (95 % interval) | met |", "|---|---|---|",
             f"| gap closed on val (all {summary['gap_closed']['n']} utterances) >= {GOAL_GAP_CLOSED:.0%} | "
             f"{ci(summary['gap_closed'], 3)} (adapters of step {summary['validation']['stage1']['best']['step']}) | "
             f"{'yes' if summary['gap_closed']['mean'] >= GOAL_GAP_CLOSED else 'no'} |",
             f"| resynthesis ESTOI >= {GOAL_RESYNTHESIS_ESTOI} | {ci(summary['resynthesis_estoi'])} | "
             f"{'yes' if summary['resynthesis_estoi']['mean'] >= GOAL_RESYNTHESIS_ESTOI else 'no'} |"]
    for metric, label in (("dnsmos_ovrl", "DNSMOS OVRL"), ("estoi", "ESTOI")):
        better = diff[metric]["ci_low"] > 0
        lines.append(f"| restored beats degraded on {label} | restored {ci(test[f'miipher2.{metric}'])}, degraded "
                     f"{ci(test[f'degraded.{metric}'])}; paired difference {ci(diff[metric], 3)} | "
                     f"{'yes' if better else 'no'} |")
    lines += ["", "| system | " + " | ".join(m for m in ("pesq", "estoi", "dnsmos_ovrl", "speaker_similarity", "wer")) + " |",
              "|---|" + "---|" * 5]
    for system in ("clean", "degraded", "miipher2", "deepfilternet3"):
        cells = [ci(test[f"{system}.{m}"]) if f"{system}.{m}" in test else "" for m in
                 ("pesq", "estoi", "dnsmos_ovrl", "speaker_similarity", "wer")]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    training = summary.get("training")
    if training:
        stages = ", ".join(f"{k} {v / 60:.1f}" for k, v in summary["stage_wall_s"].items())
        lines += ["", f"Training wall time {training['wall_s'] / 60:.1f} min (ends: {stages} min), CPU time "
                  f"{training['cpu_s'] / 60:.1f} min; 1-min load average min/mean/max "
                  f"{training['load']['min']:.1f} / {training['load']['mean']:.1f} / {training['load']['max']:.1f} "
                  f"({training['load']['samples']} samples). Evaluation {summary['evaluation_wall_s'] / 60:.1f} min."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
