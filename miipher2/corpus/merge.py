"""Merge the shards' results into the restored-corpus manifest and a summary (JSON + Markdown).

The manifest (`OUTDIR/manifests/<input manifest name>`) has the dataset COLUMNS with `path`
naming the restored file relative to OUTDIR (so OUTDIR is a dataset root like any other), its
duration and rate, the input row's ids, speaker, language, split and transcript, and then
`source_path`, `source_sha256` and the DNSMOS scores. Rows keep the input manifest's order.

Every shard of the plan must have a result of this plan: a missing or foreign one stops the
merge with the shard named, so a corpus is never published with a shard silently missing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from miipher2.corpus.plan import ROW_COLUMN, Plan, load_plan, read_shard_rows
from miipher2.corpus.records import Layout, write_json
from miipher2.corpus.shard import ShardResult
from miipher2.corpus.sources import open_store
from miipher2.corpus.tracking import record_summary
from miipher2.data.manifest import COLUMNS, write_manifest
from miipher2.files import atomic_write_text

SCORE_COLUMNS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
EXTRA_COLUMNS = ("source_path", "source_sha256", *SCORE_COLUMNS)
PERCENTILES = (5, 25, 50, 75, 95)
MARKDOWN_LIST_LIMIT = 50  # the Markdown stays readable; summary.json lists everything


class IncompleteCorpusError(RuntimeError):
    """Some shard has no result for the current plan."""


@dataclass
class Summary:
    plan_id: str
    manifest: str
    output_manifest: str
    model: dict
    recipe: str
    shards: int
    files: dict[str, int]           # total, restored, restored_now, reused, failed
    hours: dict[str, float]         # in, out, restored_now
    scores: dict[str, dict[str, float]]   # metric -> count, mean, std, min, p5..p95, max
    unscored: list[dict] = field(default_factory=list)   # {source, reason}
    failures: list[dict] = field(default_factory=list)   # {row, source, reason}
    throughput: dict[str, float] = field(default_factory=dict)
    per_shard: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def merge_shards(out_dir) -> Summary:
    layout = Layout(out_dir)
    plan = load_plan(layout.root)
    results = [_shard_result(layout, plan, shard) for shard in range(plan.shards)]
    store = open_store(plan.audio_root)

    inputs = pd.concat([read_shard_rows(layout.root, s) for s in range(plan.shards)], ignore_index=True)
    by_row = {int(r[ROW_COLUMN]): r for r in inputs.to_dict("records")}
    records = sorted((r for result in results for r in result.records), key=lambda r: r["row"])
    rows = [_manifest_row(by_row[r["row"]], r, store) for r in records]
    frame = pd.DataFrame(rows, columns=[*COLUMNS, *EXTRA_COLUMNS])
    output_manifest = layout.manifest(plan.manifest_name)
    write_manifest(frame, output_manifest)

    failures = sorted([*plan.rejected, *(f for r in results for f in r.failed)], key=lambda f: f["row"])
    restored_now = sum(r.restored for r in results)
    device_s = sum(r.restore_s for r in results)
    now_s = sum(r.restored_input_s for r in results)
    summary = Summary(
        plan_id=plan.plan_id, manifest=plan.manifest, output_manifest=str(output_manifest), model=plan.model.to_dict(),
        recipe=plan.recipe, shards=plan.shards,
        files={"total": plan.rows, "restored": len(records), "restored_now": restored_now,
               "reused": len(records) - restored_now, "failed": len(failures)},
        hours={"in": _hours(r["input_seconds"] for r in records), "out": _hours(r["output_seconds"] for r in records),
               "restored_now": round(now_s / 3600, 6)},
        scores={name: distribution(frame[name]) for name in SCORE_COLUMNS},
        unscored=[{"source": r["source"], "reason": r["score_error"] or "not scored"} for r in records if not r["scores"]],
        failures=failures,
        throughput={"model_seconds": round(device_s, 3),
                    "audio_hours_per_model_hour": round(now_s / device_s, 3) if device_s > 0 else 0.0},
        per_shard=[{"shard": r.shard, "files": len(r.records) + len(r.failed), "restored_now": r.restored,
                    "reused": r.reused, "failed": len(r.failed), "elapsed_s": r.elapsed_s, "model_s": r.restore_s}
                   for r in results],
    )
    write_json(layout.summary_json, summary.to_dict())
    atomic_write_text(layout.summary_markdown, summary_markdown(summary))
    record_summary(layout, summary)
    return summary


def distribution(values) -> dict[str, float]:
    """count, mean, std, min, p5, p25, p50, p75, p95, max of the finite values (NaN when none)."""
    data = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    data = data[np.isfinite(data)]
    stats = {"count": int(data.size)}
    if data.size == 0:
        return stats | {k: math.nan for k in ("mean", "std", "min", *(f"p{p}" for p in PERCENTILES), "max")}
    stats |= {"mean": float(data.mean()), "std": float(data.std()), "min": float(data.min())}
    stats |= {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(data, PERCENTILES))}
    stats["max"] = float(data.max())
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in stats.items()}


def summary_markdown(summary: Summary) -> str:
    files, hours = summary.files, summary.hours
    lines = [
        "# Restored corpus",
        "",
        f"- input manifest: `{summary.manifest}`",
        f"- restored manifest: `{summary.output_manifest}`",
        f"- model: `{summary.model['uri']}` (asked for `{summary.model['spec']}`, identity `{summary.model['identity'][:12]}`)",
        f"- plan `{summary.plan_id}`, {summary.shards} shard(s)",
        "",
        "| files | restored | of which now | reused | failed | hours in | hours out |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {files['total']} | {files['restored']} | {files['restored_now']} | {files['reused']} | {files['failed']} "
        f"| {hours['in']:.4f} | {hours['out']:.4f} |",
        "",
        "## DNSMOS of the restored files",
        "",
        "| score | n | mean | std | min | p5 | p25 | p50 | p75 | p95 | max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.scores.items():
        cells = [s["count"], *(s[k] for k in ("mean", "std", "min", "p5", "p25", "p50", "p75", "p95", "max"))]
        lines.append(f"| {name} | " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    if summary.unscored:
        lines += ["", f"{len(summary.unscored)} restored file(s) have no scores:", ""]
        lines += _capped([f"- `{u['source']}`: {u['reason']}" for u in summary.unscored])
    lines += ["", f"## Failures ({len(summary.failures)})", ""]
    lines += _capped([f"- `{f['source']}`: {f['reason']}" for f in summary.failures]) or ["none"]
    lines += ["", "## Shards", "", "| shard | files | restored now | reused | failed | elapsed s | model s |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s['shard']} | {s['files']} | {s['restored_now']} | {s['reused']} | {s['failed']} | {s['elapsed_s']:.1f} "
              f"| {s['model_s']:.1f} |" for s in summary.per_shard]
    return "\n".join(lines) + "\n"


def _capped(items: list[str]) -> list[str]:
    if len(items) <= MARKDOWN_LIST_LIMIT:
        return items
    return [*items[:MARKDOWN_LIST_LIMIT], f"- ... and {len(items) - MARKDOWN_LIST_LIMIT} more (see summary.json)"]


def _shard_result(layout: Layout, plan: Plan, shard: int) -> ShardResult:
    path = layout.shard_result(shard)
    try:
        result = ShardResult.from_dict(json.loads(path.read_text()))
    except FileNotFoundError as err:
        raise IncompleteCorpusError(f"shard {shard} has not finished (no {path})") from err
    except (ValueError, TypeError) as err:
        raise IncompleteCorpusError(f"shard {shard}: unreadable result {path} ({err})") from err
    if result.plan_id != plan.plan_id or result.recipe != plan.recipe:
        raise IncompleteCorpusError(f"shard {shard} has not finished under the current plan {plan.plan_id} "
                                    f"(its result is from plan {result.plan_id})")
    return result


def _manifest_row(source_row: dict, record: dict, store) -> dict:
    row = {column: source_row.get(column, "") for column in COLUMNS}
    if not row["utt_id"]:
        row["utt_id"] = Path(record["source"]).stem
    row.update(path=record["output"], duration_s=record["output_seconds"], sample_rate=record["sample_rate"], channels=1,
               source_path=store.location(record["source"]), source_sha256=record["source_sha256"])
    row.update({name: record["scores"].get(name, math.nan) for name in SCORE_COLUMNS})
    return row


def _hours(seconds) -> float:
    return round(sum(seconds) / 3600, 6)
