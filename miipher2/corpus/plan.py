"""Split a manifest into shards: deterministic, every usable row exactly once, balanced in hours.

Rows are dealt longest first to the shard with the least audio so far (ties: lower index), so
shards finish together however skewed the durations are. Rows without a duration count as the
mean known duration. The plan is written to `OUTDIR/state/` and names everything a shard needs:
the manifest's rows, where the audio lives, the pinned model, the inference settings.

Planning again with the same manifest bytes, model, settings and shard count gives the same
`plan_id` and leaves existing shard results in place (a rerun resumes); any change gives a new
plan whose shards will be restored again, file by file, by their done-records.

One output folder holds one plan at a time. A different plan replaces it only once it is
finished (merged) or when asked to (`replace=True`): a second run pointed at a folder whose
corpus is still being restored is refused (`PlanConflict`) instead of swapping the plan under
the first run's shards, and planning itself happens under a lock. A pipeline run writes to its
own folder by default (`run_output_dir`: per corpus, per run), so runs do not meet at all.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from miipher2.corpus.models import ModelRef, resolve_model
from miipher2.corpus.records import Layout, recipe_fingerprint, write_json
from miipher2.corpus.sources import load_manifest, open_store
from miipher2.corpus.tracking import start_restoration_run
from miipher2.data.manifest import MANIFEST_DIR, read_manifest, write_manifest
from miipher2.data.paths import UnsafePathError, path_component
from miipher2.locking import LockHeld, exclusive_lock
from miipher2.model.restore_files import OUTPUT_FORMATS

PLAN_FORMAT = "miipher2-restoration-plan/1"
ROW_COLUMN = "row"  # position in the input manifest: keeps the merged manifest in input order
RESTORED_DIR = "restored"


class PlanConflict(ValueError):
    """The output folder holds another, unfinished plan (or is being planned right now)."""


@dataclass
class Settings:
    chunk_seconds: float = 30.0
    overlap_seconds: float = 1.0
    output_format: str = "wav"

    def __post_init__(self):
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {self.output_format!r}")
        if not 0 <= self.overlap_seconds < self.chunk_seconds:
            raise ValueError(f"need 0 <= overlap_seconds < chunk_seconds, got {self.overlap_seconds} and {self.chunk_seconds}")


@dataclass
class Plan:
    plan_id: str
    manifest: str
    manifest_sha256: str
    manifest_name: str
    audio_root: str
    model: ModelRef
    settings: Settings
    recipe: str
    shards: int
    rows: int
    shard_files: list[int]
    shard_seconds: list[float]
    rejected: list[dict] = field(default_factory=list)  # {row, source, reason}: never reach a shard
    format: str = PLAN_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        data = dict(data)
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"not a restoration plan (format {data.get('format')!r}, expected {PLAN_FORMAT!r})")
        data["model"] = ModelRef(**data["model"])
        data["settings"] = Settings(**data["settings"])
        return cls(**data)


def assign_shards(durations: Sequence[float], keys: Sequence[str], shards: int) -> list[int]:
    """Shard index of each row: longest-first to the least-loaded shard; deterministic given `keys`."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    known = [d for d in durations if d > 0 and math.isfinite(d)]
    fallback = sum(known) / len(known) if known else 1.0
    weights = [d if d > 0 and math.isfinite(d) else fallback for d in durations]
    order = sorted(range(len(weights)), key=lambda i: (-weights[i], keys[i], i))
    loads = [(0.0, shard) for shard in range(shards)]  # a heap of (audio so far, shard index)
    assignment = [0] * len(weights)
    for i in order:
        load, shard = heapq.heappop(loads)
        assignment[i] = shard
        heapq.heappush(loads, (load + weights[i], shard))
    return assignment


def run_output_dir(workspace, manifest_uri: str, run_id: str, output_dir: str = "") -> Path:
    """Where a pipeline run restores to: `output_dir` (a relative one inside the workspace), by
    default `<workspace>/restored/<corpus>/<run id>`, so that runs of one corpus never share it.

    A folder outside the workspace is refused: in a pod it would vanish with the pod."""
    workspace = Path(workspace).absolute()
    if not output_dir:
        return workspace / RESTORED_DIR / _corpus_name(manifest_uri) / path_component(run_id)
    target = Path(os.path.normpath(workspace / output_dir))  # an absolute output_dir replaces the workspace
    if target != workspace and workspace not in target.parents:
        raise ValueError(f"output folder {output_dir!r} is outside the workspace {workspace}: the shard pods "
                         "share only the workspace volume, anything else is lost with its pod")
    return target


def plan_corpus(manifest_uri: str, model: str | ModelRef, out_dir, shards: int, settings: Settings | None = None,
                *, replace: bool = False) -> Plan:
    """Read the manifest, pin the model, assign rows to shards and write the plan under `out_dir`.

    Raises `PlanConflict` when `out_dir` holds another plan that is not finished yet, unless `replace`."""
    settings = settings or Settings()
    manifest = load_manifest(manifest_uri)
    ref = model if isinstance(model, ModelRef) else resolve_model(model)
    frame = manifest.frame.reset_index(drop=True)
    frame.insert(0, ROW_COLUMN, range(len(frame)))
    usable, rejected = _usable_rows(frame, manifest)
    durations = [_duration(value) for value in usable.get("duration_s", pd.Series([float("nan")] * len(usable)))]
    assignment = assign_shards(durations, list(usable["path"]), shards)
    recipe = recipe_fingerprint(ref.identity, settings.chunk_seconds, settings.overlap_seconds, settings.output_format)
    identity = {"manifest_sha256": manifest.sha256, "audio_root": manifest.audio_root, "model": ref.uri,
                "recipe": recipe, "shards": shards}
    plan = Plan(
        plan_id=hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16],
        manifest=manifest.uri, manifest_sha256=manifest.sha256, manifest_name=manifest.name,
        audio_root=manifest.audio_root, model=ref, settings=settings, recipe=recipe, shards=shards,
        rows=len(frame), shard_files=[assignment.count(s) for s in range(shards)],
        shard_seconds=[round(sum(d for d, a in zip(durations, assignment) if a == s and d > 0), 3) for s in range(shards)],
        rejected=rejected)
    layout = Layout(out_dir)
    try:
        with exclusive_lock(layout.state / ".plan.lock", wait=False):
            _refuse_unfinished_other_plan(layout, plan, replace)
            # Rows first, plan last: a plan on disk always has all its shard files.
            for shard in range(shards):
                write_manifest(usable[[a == shard for a in assignment]], layout.shard_rows(shard))
            write_json(layout.plan, plan.to_dict())
    except LockHeld as err:
        raise PlanConflict(f"{layout.root} is being planned by another process right now ({err})") from err
    start_restoration_run(plan, layout)
    return plan


def _refuse_unfinished_other_plan(layout: Layout, plan: Plan, replace: bool) -> None:
    if replace or not layout.plan.is_file():
        return
    try:
        current = json.loads(layout.plan.read_text())
    except (OSError, ValueError):
        return  # an unreadable plan belongs to nobody
    if current.get("plan_id") == plan.plan_id:
        return  # the same work: a rerun resumes it
    try:
        finished = json.loads(layout.summary_json.read_text()).get("plan_id") == current.get("plan_id")
    except (OSError, ValueError):
        finished = False
    if not finished:
        raise PlanConflict(
            f"{layout.root} holds plan {current.get('plan_id')} ({current.get('manifest')} with "
            f"{current.get('model', {}).get('uri')}, {current.get('shards')} shard(s)), which is not finished: "
            "another run may still be restoring it. Use another output folder, or replace that plan on "
            "purpose (restore-corpus --replace-plan)")


def load_plan(out_dir) -> Plan:
    layout = Layout(out_dir)
    try:
        return Plan.from_dict(json.loads(layout.plan.read_text()))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{layout.plan}: no restoration plan here; plan the corpus first") from err
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{layout.plan}: unreadable plan ({err})") from err


def read_shard_rows(out_dir, shard: int) -> pd.DataFrame:
    return read_manifest(Layout(out_dir).shard_rows(shard))


def _usable_rows(frame: pd.DataFrame, manifest) -> tuple[pd.DataFrame, list[dict]]:
    """Rows whose path is safe and whose output name is free; the rest with the reason."""
    store = open_store(manifest.audio_root)
    keep, rejected, claimed = [], [], {}
    for index, relative in zip(frame.index, frame["path"]):
        row = int(frame.at[index, ROW_COLUMN])
        where = f"{manifest.uri}:{row + 2}"  # line number: the header is line 1
        try:
            store.location(relative)
        except UnsafePathError as err:
            rejected.append({"row": row, "source": where, "reason": str(err)})
            continue
        key = Layout.output_key(relative)
        if key in claimed:
            rejected.append({"row": row, "source": where,
                             "reason": f"output name {key} is already taken by {claimed[key]!r}"})
            continue
        claimed[key] = relative
        keep.append(index)
    return frame.loc[keep].reset_index(drop=True), rejected


def _corpus_name(manifest_uri: str) -> str:
    """`<corpus folder>-<manifest stem>`, e.g. s3://b/libritts/manifests/train.csv -> libritts-train."""
    path = PurePosixPath(manifest_uri.removeprefix("s3://"))
    parent = path.parent.parent if path.parent.name == MANIFEST_DIR else path.parent
    return path_component(f"{parent.name}-{path.stem}" if parent.name else path.stem)


def _duration(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
