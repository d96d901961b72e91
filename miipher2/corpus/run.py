"""The whole restoration in one process, shard after shard, sharing one loaded model.

This is `miipher2 restore-corpus`: the pipeline (pipelines/restoration.py) does the same work
with one pod per shard. Several processes can share a corpus too, each with its own
`shard_index`; whichever finishes the last shard merges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from miipher2.corpus.merge import IncompleteCorpusError, Summary, merge_shards
from miipher2.corpus.plan import Plan, Settings, plan_corpus
from miipher2.corpus.shard import ShardResult, model_loader, restore_shard

log = logging.getLogger(__name__)


@dataclass
class CorpusRun:
    plan: Plan
    results: list[ShardResult] = field(default_factory=list)
    summary: Summary | None = None      # None while other shards are still unfinished
    waiting_for: str = ""               # why there is no summary yet


def restore_corpus(manifest: str, model: str, out_dir, *, shards: int = 1, shard_index: int | None = None,
                   batch_size: int = 8, workers: int = 2, device: str | None = None, score: bool = True,
                   settings: Settings | None = None, replace_plan: bool = False) -> CorpusRun:
    """Plan `manifest` into `shards`, restore them all (or only `shard_index`), merge when complete.

    `replace_plan`: replace an unfinished plan of other inputs in `out_dir` (see `plan_corpus`)."""
    out_dir = Path(out_dir).absolute()
    plan = plan_corpus(manifest, model, out_dir, shards, settings, replace=replace_plan)
    if shard_index is not None and not 0 <= shard_index < shards:
        raise ValueError(f"--shard-index must be in 0..{shards - 1}, got {shard_index}")
    run = CorpusRun(plan)
    load = model_loader(plan, device, batch_size)  # loaded at most once, and only if needed
    for shard in [shard_index] if shard_index is not None else range(shards):
        result = restore_shard(out_dir, shard, batch_size=batch_size, workers=workers, score=score, load=load)
        log.info("shard %d: restored %d, reused %d, failed %d in %.1f s", shard, result.restored, result.reused,
                 len(result.failed), result.elapsed_s)
        run.results.append(result)
    try:
        run.summary = merge_shards(out_dir)
    except IncompleteCorpusError as err:
        run.waiting_for = str(err)
    return run
