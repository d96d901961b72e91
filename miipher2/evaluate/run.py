"""Evaluate systems on the fixed degraded evaluation set: enhance, score, aggregate, report.

Two phases, sharing one pool of `workers` processes (the CLI and the pipeline step use one per CPU
this process may use, each single-threaded: the cores are busy without oversubscription):
1. enhancement, writing each system's outputs under `out_dir/audio/<system>/`: Miipher-2 runs in
   this process (one copy of a large model, free to use all threads or a GPU); small,
   single-threaded systems that say so (`runs_in_workers`: DeepFilterNet3) run utterance by
   utterance across the pool;
2. scoring: every (utterance, system) pair is scored against the clean reference in the pool,
   each worker loading DNSMOS, the speaker encoder and Whisper once.
Rows `clean` (the reference scored against itself: the upper bound) and `degraded` (the input)
are always present.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from miipher2.audio import read_audio, resample, write_audio
from miipher2.data.paths import resolve_inside
from miipher2.evaluate.aggregate import aggregate_all
from miipher2.evaluate.asr import DEFAULT_ASR
from miipher2.evaluate.baseline import DeepFilterNet3, Enhancer, RestorerEnhancer
from miipher2.evaluate.evalset import load_evaluation_set
from miipher2.evaluate.metrics import (CORPUS_METRICS, HIGH_BAND_RATE, METRIC_RATE, REPORTED_METRICS, has_high_band,
                                       high_band_metrics, intrusive_metrics)
from miipher2.files import atomic_write_text

CLEAN, DEGRADED, MODEL = "clean", "degraded", "miipher2"
# Metrics come in groups that share a model (or none): asking for one metric computes its group.
GROUP_METRICS = {
    "intrusive": ("pesq", "estoi", "si_sdr", "lsd", "lsd_8_12k", "mcd"),
    "dnsmos": ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"),
    "speaker": ("speaker_similarity",),
    "asr": ("wer", "cer", "wer_corpus", "cer_corpus"),
}
METRIC_GROUPS = tuple(GROUP_METRICS)
TABLE_FILE, AGGREGATES_FILE, HEADLINE_FILE = "utterances.csv", "aggregates.csv", "headline.json"


@dataclass(frozen=True)
class ScoringConfig:
    """What the scoring workers compute; picklable, so each worker can rebuild its models."""

    groups: tuple[str, ...] = METRIC_GROUPS
    asr: str = DEFAULT_ASR

    def __post_init__(self):
        unknown = set(self.groups) - set(METRIC_GROUPS)
        if unknown:
            raise ValueError(f"unknown metric groups {sorted(unknown)}; choose from {list(METRIC_GROUPS)}")

    @property
    def metrics(self) -> list[str]:
        """Reported metrics in report order: per-utterance ones, then corpus-level rates."""
        return [m for m in REPORTED_METRICS if any(m in GROUP_METRICS[g] for g in self.groups)]


def groups_for(metrics: Iterable[str]) -> tuple[str, ...]:
    """The metric groups that compute `metrics`."""
    metrics = set(metrics)
    unknown = metrics - set(REPORTED_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(REPORTED_METRICS)}")
    return tuple(g for g, names in GROUP_METRICS.items() if metrics & set(names))


@dataclass
class EvaluationResult:
    table: pd.DataFrame  # one row per (utterance, system)
    aggregates: pd.DataFrame  # see aggregate.AGGREGATE_COLUMNS
    headline: dict[str, float]  # mean of each metric for the main system
    out_dir: Path
    systems: list[str]
    metrics: list[str]
    main_system: str | None = None
    html_path: Path | None = None
    markdown_path: Path | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    title: str = "Miipher-2 evaluation"


# ---- public API -----------------------------------------------------------------------------


def evaluate_model(model, data_root: str | Path, split: str = "test", out_dir: str | Path = "evaluation", *,
                   max_utterances: int | None = None, baseline: bool = True, asr: str = DEFAULT_ASR,
                   workers: int = 1, metric_groups: Iterable[str] = METRIC_GROUPS, system_name: str = MODEL,
                   report: bool = True, tracking: bool = True) -> EvaluationResult:
    """Evaluate a Miipher-2 model (directory or `Restorer`) against the baselines.

    `model=None` evaluates only the clean/degraded rows (and the baseline): useful to
    characterise an evaluation set before any model exists.
    """
    systems: list[Enhancer] = []
    if model is not None:
        systems.append(RestorerEnhancer(load_restorer(model), name=system_name))
    if baseline:
        systems.append(DeepFilterNet3())
    result = evaluate_systems(systems, data_root, split, out_dir, max_utterances=max_utterances,
                              config=ScoringConfig(tuple(metric_groups), asr), workers=workers,
                              main_system=system_name if model is not None else None)
    if report:
        from miipher2.evaluate.report import write_report

        result.html_path, result.markdown_path = write_report(result, result.out_dir)
    if tracking:
        log_to_mlflow(result, params={"split": split, "data_root": str(data_root), "asr": asr,
                                      "max_utterances": max_utterances, "baseline": baseline})
    return result


def evaluate_systems(systems: list[Enhancer], data_root: str | Path, split: str, out_dir: str | Path, *,
                     max_utterances: int | None = None, config: ScoringConfig = ScoringConfig(),
                     workers: int = 1, main_system: str | None = None,
                     reference_rows: bool = True) -> EvaluationResult:
    """Enhance the evaluation set with every system, score all of them, aggregate; writes CSV/JSON.

    `workers`: processes of the pool (1: everything in this process; the CLI and the pipeline
    step pass `available_cpus()`). `reference_rows=False` skips scoring the clean and degraded
    rows (the promotion gate compares two models and needs neither).
    """
    names = [s.name for s in systems]
    if len(set(names)) != len(names) or {CLEAN, DEGRADED} & set(names):
        raise ValueError(f"system names must be unique and not {CLEAN!r}/{DEGRADED!r}, got {names}")
    out_dir = Path(out_dir)
    evalset = load_evaluation_set(data_root, split, max_utterances)
    timings: dict[str, float] = {}
    outputs: dict[str, dict[str, str | Exception]] = {}
    with worker_pool(config, workers, len(evalset)) as pool:
        for system in systems:
            start = time.perf_counter()
            outputs[system.name] = enhance_all(system, evalset, out_dir / "audio" / system.name, pool)
            timings[f"enhance.{system.name}"] = time.perf_counter() - start

        jobs = [_scoring_job(row, outputs, reference_rows) for row in evalset.to_dict("records")]
        start = time.perf_counter()
        rows = [r for job_rows in score_jobs(jobs, config, pool) for r in job_rows]
        timings["scoring"] = time.perf_counter() - start

    table = pd.DataFrame(rows)
    for metric in config.metrics:  # a column per metric even when every value failed
        if metric not in table and metric not in CORPUS_METRICS:
            table[metric] = math.nan
    all_systems = [CLEAN, DEGRADED, *names] if reference_rows else names
    aggregates = aggregate_all(table, config.metrics)
    headline = headline_metrics(aggregates, main_system) if main_system else {}
    result = EvaluationResult(table, aggregates, headline, out_dir, all_systems, config.metrics, main_system,
                              timings_s=timings)
    save_tables(result)
    return result


def load_restorer(model):
    """A `Restorer` from a model directory, or passed through when already loaded.

    Evaluation knows nothing of the registry (which itself evaluates, to gate promotions): the
    caller loads a `models:/` URI with `miipher2.registry.load_registered_restorer`."""
    if hasattr(model, "restore"):
        return model
    text = str(model)
    if text.startswith(("models:/", "runs:/")):
        raise ValueError(f"{text} is an MLflow model URI: load it with miipher2.registry.load_registered_restorer "
                         "and pass the restorer")
    from miipher2.model.restorer import Restorer

    return Restorer.from_pretrained(text)


def headline_metrics(aggregates: pd.DataFrame, system: str) -> dict[str, float]:
    overall = aggregates[(aggregates["system"] == system) & (aggregates["group_by"] == "all")]
    return {row.metric: float(row.mean) for row in overall.itertuples()}


# ---- phase 1: enhancement ---------------------------------------------------------------------


def enhance_all(system: Enhancer, evalset: pd.DataFrame, audio_dir: Path,
                pool: ProcessPoolExecutor | None = None) -> dict[str, str | Exception]:
    """utt_id -> output file, or the exception that utterance raised (the others still run).

    In this process, or across `pool` for systems with `runs_in_workers` (picklable, small and
    single-threaded, so one copy per worker costs little)."""
    targets = [resolve_inside(audio_dir, f"{utt_id}.wav") for utt_id in evalset["utt_id"]]
    sources = list(evalset["degraded_file"])
    if pool is not None and getattr(system, "runs_in_workers", False):
        results = _mapped(pool, enhance_file, [system] * len(sources), sources, targets)
    else:
        results = [enhance_file(system, source, target) for source, target in zip(sources, targets)]
    return dict(zip(evalset["utt_id"], results))


def enhance_file(system: Enhancer, source: str, target: Path) -> str | Exception:
    """Enhance one file into `target`; the exception instead when it fails."""
    try:
        wave, rate = read_audio(source)
        enhanced, out_rate = system.enhance(wave, rate)
        if not np.isfinite(enhanced).all():
            raise ValueError("output contains NaN or infinite samples")
        write_audio(target, np.clip(enhanced, -1.0, 1.0), out_rate)
        return str(target)
    except Exception as err:  # noqa: BLE001 — one bad utterance must not sink the evaluation
        return err


def _scoring_job(row: Mapping, outputs: Mapping[str, Mapping[str, str | Exception]], reference_rows: bool) -> dict:
    files = {CLEAN: row["clean_file"], DEGRADED: row["degraded_file"]} if reference_rows else {}
    errors: dict[str, str] = {}
    for system, per_utt in outputs.items():
        produced = per_utt[row["utt_id"]]
        if isinstance(produced, Exception):
            errors[system] = f"enhancement failed: {type(produced).__name__}: {produced}"
        else:
            files[system] = produced
    keep = ("utt_id", "language", "speaker", "transcript", "degradation", "degradation_types")
    return {"meta": {k: row[k] for k in keep if k in row}, "reference": row["clean_file"], "files": files,
            "errors": errors}


# ---- phase 2: scoring -------------------------------------------------------------------------


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a container's CPU quota, which
    os.cpu_count() ignores (inside a pod it reports the node's cores)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs the cgroup's CFS quota allows (v2 `cpu.max`, else v1); None when unlimited or unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    return max(1, math.ceil(int(quota) / int(period)))


@contextmanager
def worker_pool(config: ScoringConfig, workers: int, jobs: int) -> Iterator[ProcessPoolExecutor | None]:
    """A spawn pool (torch threads and fork don't mix) of single-threaded workers that load the
    scoring models once each; None (work in this process) for one worker or one job."""
    if workers <= 1 or jobs <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=min(workers, jobs), mp_context=get_context("spawn"),
                             initializer=_init_worker, initargs=(config,)) as pool:
        yield pool


def score_jobs(jobs: list[dict], config: ScoringConfig, pool: ProcessPoolExecutor | None = None) -> list[list[dict]]:
    """Score every job, across `pool` when there is one."""
    if pool is None:
        return [score_utterance(job, config) for job in jobs]
    return _mapped(pool, score_utterance, jobs, [config] * len(jobs))


def _mapped(pool: ProcessPoolExecutor, fn, *iterables) -> list:
    try:
        return list(pool.map(fn, *iterables))
    except BrokenProcessPool as err:
        raise RuntimeError("an evaluation worker died (out of memory?); retry with fewer --workers") from err


def _init_worker(config: ScoringConfig) -> None:
    """Load each model once per worker, before the first job, with one thread each."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    _models(config)


def _models(config: ScoringConfig) -> dict:
    from miipher2.evaluate import asr, quality

    models = {}
    if "dnsmos" in config.groups:
        models["dnsmos"] = quality.dnsmos()
    if "speaker" in config.groups:
        models["speaker"] = quality.speaker_encoder()
    if "asr" in config.groups:
        models["asr"] = asr.transcriber(config.asr)
    return models


def score_utterance(job: dict, config: ScoringConfig) -> list[dict]:
    """One row per system of one utterance; a failure fills `error` and leaves the metrics NaN."""
    meta = job["meta"]
    rows = [{**meta, "system": system, "audio_file": None, "error": error} for system, error in job["errors"].items()]
    try:
        models = _models(config)
        reference, reference_rate = read_audio(job["reference"])
        clean = resample(reference, reference_rate, METRIC_RATE)
        clean_embedding = models["speaker"].embed(clean) if "speaker" in models else None
        # The band a 16 kHz comparison cannot see, where the reference has it.
        clean_high = (resample(reference, reference_rate, HIGH_BAND_RATE)
                      if "intrusive" in config.groups and has_high_band(reference, reference_rate) else None)
    except Exception as err:  # noqa: BLE001
        reason = f"clean reference unusable: {type(err).__name__}: {err}"
        return rows + [{**meta, "system": s, "audio_file": f, "error": reason} for s, f in job["files"].items()]
    for system, path in job["files"].items():
        row = {**meta, "system": system, "audio_file": path, "error": None}
        try:
            wave, _ = read_audio(path, sample_rate=METRIC_RATE)
            row.update(_score_wave(clean, wave, clean_embedding, meta, models, config))
            if clean_high is not None:
                row.update(high_band_metrics(clean_high, read_audio(path, sample_rate=HIGH_BAND_RATE)[0]))
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {err}"
            row["traceback"] = traceback.format_exc(limit=3)
        rows.append(row)
    return rows


def _score_wave(clean: np.ndarray, wave: np.ndarray, clean_embedding, meta: Mapping, models: Mapping,
                config: ScoringConfig) -> dict:
    scores: dict = {}
    if "intrusive" in config.groups:
        scores.update(intrusive_metrics(clean, wave))
    if "dnsmos" in models:
        scores.update(models["dnsmos"](wave))
    if "speaker" in models:
        scores["speaker_similarity"] = models["speaker"].similarity(clean_embedding, models["speaker"].embed(wave))
    if "asr" in models:
        result = models["asr"].score(wave, meta.get("transcript", ""), meta.get("language", ""))
        scores.update(wer=result.wer, cer=result.cer, hypothesis=result.hypothesis, asr_note=result.note,
                      word_errors=result.word_errors, reference_words=result.reference_words,
                      char_errors=result.char_errors, reference_chars=result.reference_chars)
    return scores


# ---- outputs ----------------------------------------------------------------------------------


def save_tables(result: EvaluationResult) -> None:
    from miipher2.data.manifest import write_manifest  # atomic CSV writer

    result.out_dir.mkdir(parents=True, exist_ok=True)
    table = result.table.copy()
    if "degradation_types" in table:
        table["degradation_types"] = table["degradation_types"].map(lambda v: "+".join(v) if isinstance(v, list) else v)
    write_manifest(table, result.out_dir / TABLE_FILE)
    write_manifest(result.aggregates, result.out_dir / AGGREGATES_FILE)
    _write_json(result.out_dir / HEADLINE_FILE, {"system": result.main_system, "metrics": result.headline,
                                                 "timings_s": result.timings_s})


def log_to_mlflow(result: EvaluationResult, params: Mapping | None = None) -> None:
    """Metrics `<system>.<metric>` (overall means) and the report/tables as artifacts; no-op untracked."""
    from miipher2.tracking import tracked_run

    overall = result.aggregates[result.aggregates["group_by"] == "all"]
    metrics = {f"{r.system}.{r.metric}": r.mean for r in overall.itertuples() if np.isfinite(r.mean)}
    with tracked_run("evaluate", tags={"miipher2.step": "evaluate"}) as tracker:
        tracker.log_params({**(params or {}), "n_utterances": result.table["utt_id"].nunique(),
                            "systems": ",".join(result.systems)})
        tracker.log_metrics(metrics)
        for path in (result.html_path, result.markdown_path, result.out_dir / TABLE_FILE,
                     result.out_dir / AGGREGATES_FILE, result.out_dir / HEADLINE_FILE):
            if path is not None and Path(path).exists():
                tracker.log_artifact(path, "evaluation")


def _write_json(path: Path, payload) -> None:
    def finite(value):  # JSON has no NaN: a metric that could not be computed is null
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        return None if isinstance(value, float) and not math.isfinite(value) else value

    atomic_write_text(path, json.dumps(finite(payload), indent=2))
