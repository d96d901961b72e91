"""Restore audio files in bulk: collect inputs (files, folders, manifests), restore them in
batches, write outputs atomically under an output folder that mirrors the inputs' layout.

One unreadable or unusable file is recorded as a failure with its reason; the rest go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import soundfile as sf

from miipher2.audio import AudioError, read_audio, write_audio
from miipher2.data.manifest import MANIFEST_DIR, read_manifest
from miipher2.data.paths import UnsafePathError, resolve_inside

# Extensions libsndfile decodes (its format names, plus common aliases).
AUDIO_SUFFIXES = frozenset({f".{name.lower()}" for name in sf.available_formats()} | {".aif", ".oga", ".opus", ".sph", ".wave"})
OUTPUT_FORMATS = ("wav", "flac")


@dataclass(frozen=True)
class RestoreJob:
    source: Path  # file to read
    relative: PurePosixPath  # where its output goes under the output folder (suffix replaced)


@dataclass
class RestoreReport:
    restored: list[Path] = field(default_factory=list)  # output files written
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)


def collect_jobs(inputs: Iterable[str | os.PathLike], report: RestoreReport) -> list[RestoreJob]:
    """Files map to their name, folders to their audio files' paths inside the folder (recursive),
    manifest CSVs to their `path` column (resolved inside the dataset root the manifest lives in)."""
    jobs: list[RestoreJob] = []
    for item in map(Path, inputs):
        if item.is_dir():
            for file in sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
                jobs.append(RestoreJob(file, PurePosixPath(file.relative_to(item).as_posix())))
        elif item.suffix.lower() == ".csv":
            jobs.extend(_manifest_jobs(item, report))
        elif item.is_file():
            jobs.append(RestoreJob(item, PurePosixPath(item.name)))
        else:
            report.failed.append((str(item), "no such file or directory"))
    return _without_collisions(jobs, report)


def _manifest_jobs(manifest: Path, report: RestoreReport) -> list[RestoreJob]:
    # A manifest in <root>/manifests/ names paths relative to <root>; elsewhere, to its own folder.
    root = manifest.parent.parent if manifest.parent.name == MANIFEST_DIR else manifest.parent
    try:
        frame = read_manifest(manifest)
    except Exception as err:  # pandas raises many types for a broken CSV
        report.failed.append((str(manifest), f"cannot read manifest ({err})"))
        return []
    if "path" not in frame.columns:
        report.failed.append((str(manifest), "manifest has no 'path' column"))
        return []
    jobs = []
    for row, relative in enumerate(frame["path"], start=2):  # row 1 is the header
        try:
            jobs.append(RestoreJob(resolve_inside(root, relative), PurePosixPath(relative.replace("\\", "/"))))
        except UnsafePathError as err:
            report.failed.append((f"{manifest}:{row}", str(err)))
    return jobs


def _without_collisions(jobs: list[RestoreJob], report: RestoreReport) -> list[RestoreJob]:
    claimed: dict[PurePosixPath, Path] = {}
    kept = []
    for job in jobs:
        key = job.relative.with_suffix("")
        if key in claimed:
            report.failed.append((str(job.source), f"output name {key} is already taken by {claimed[key]}"))
            continue
        claimed[key] = job.source
        kept.append(job)
    return kept


def restore_files(restorer, jobs: list[RestoreJob], output_dir: str | os.PathLike, *, files_per_batch: int = 8,
                  output_format: str = "wav", report: RestoreReport | None = None,
                  progress: Callable[[int], None] | None = None) -> RestoreReport:
    """Restore `jobs` with `restorer` (a Restorer), `files_per_batch` files loaded at a time."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    report = report or RestoreReport()
    output_dir = Path(output_dir)
    for first in range(0, len(jobs), files_per_batch):
        loaded = []
        for job in jobs[first : first + files_per_batch]:
            try:
                loaded.append((job, *_load(job.source)))
            except AudioError as err:
                report.failed.append((str(job.source), str(err).removeprefix(f"{job.source}: ")))
        _restore_group(restorer, loaded, output_dir, output_format, report)
        if progress:
            progress(len(jobs[first : first + files_per_batch]))
    return report


def _load(path: Path) -> tuple[np.ndarray, int]:
    wave, rate = read_audio(path, mono=True)
    if wave.size == 0:
        raise AudioError(f"{path}: no samples")
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    return wave, rate


def _restore_group(restorer, loaded: list, output_dir: Path, output_format: str, report: RestoreReport) -> None:
    if not loaded:
        return
    try:
        results = restorer.restore_batch([wave for _, wave, _ in loaded], [rate for _, _, rate in loaded])
    except (RuntimeError, ValueError) as err:
        if len(loaded) == 1:
            report.failed.append((str(loaded[0][0].source), f"restoration failed ({err})"))
            return
        for item in loaded:  # isolate the item that broke the batch
            _restore_group(restorer, [item], output_dir, output_format, report)
        return
    for (job, _, _), (wave, rate) in zip(loaded, results):
        target = output_dir / Path(*job.relative.with_suffix(f".{output_format}").parts)
        try:
            write_audio(target, np.clip(wave, -1.0, 1.0), rate)
        except (OSError, sf.LibsndfileError) as err:
            report.failed.append((str(job.source), f"cannot write {target} ({err})"))
            continue
        report.restored.append(target)
