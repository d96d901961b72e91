"""Split a manifest into shards: deterministic, every usable row exactly once, balanced in hours.

Rows are dealt longest first to the shard with the least audio so far (ties: lower index), so
shards finish together however skewed the durations are. Rows without a duration count as the
mean known duration. The plan is written to `OUTDIR/state/` and names everything a shard needs:
the manifest's rows, where the audio lives, the pinned model, the inference settings.

Planning again with the same manifest bytes, model, settings and shard count gives the same
`plan_id` and leaves existing shard results in place (a rerun resumes); any change gives a new
plan whose shards will be restored again, file by file, by their done-records.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import pandas as pd

from miipher2.corpus.models import ModelRef, resolve_model
from miipher2.corpus.records import Layout, recipe_fingerprint, write_json
from miipher2.corpus.sources import load_manifest, open_store
from miipher2.corpus.tracking import start_restoration_run
from miipher2.data.manifest import read_manifest, write_manifest
from miipher2.data.paths import UnsafePathError
from miipher2.model.restore_files import OUTPUT_FORMATS

PLAN_FORMAT = "miipher2-restoration-plan/1"
ROW_COLUMN = "row"  # position in the input manifest: keeps the merged manifest in input order


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


def plan_corpus(manifest_uri: str, model: str | ModelRef, out_dir, shards: int, settings: Settings | None = None) -> Plan:
    """Read the manifest, pin the model, assign rows to shards and write the plan under `out_dir`."""
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
    # Rows first, plan last: a plan on disk always has all its shard files.
    for shard in range(shards):
        write_manifest(usable[[a == shard for a in assignment]], layout.shard_rows(shard))
    write_json(layout.plan, plan.to_dict())
    start_restoration_run(plan, layout)
    return plan


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


def _duration(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
