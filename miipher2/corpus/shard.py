"""Restore one shard: skip what is done, restore the rest in length-bucketed batches, score, record.

    check   every row (thread pool): fetch the input's bytes, sha256 them, compare with its
            done-record (`records.valid_record`). Done files are reused as they are.
    restore the rest sorted by duration, `batch_size` files per `Restorer.restore_batch` call
            (similar lengths pad little); the next batch is fetched and decoded while the
            model runs. A batch that fails is retried file by file, so one bad input fails alone.
    finish  (thread pool, overlapping the model) write the output atomically, hash it, score
            it with DNSMOS, then write the done-record: last, so a record implies a whole file.

The model is loaded only when something is left to restore: a finished shard costs a hash
pass over its inputs and no accelerator time. The shard's result (every done file's record
and every failure) is written to `state/shards/NNNNN.result.json` for the merge.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from miipher2.audio import AudioError, read_audio, resample, write_audio
from miipher2.corpus.models import load_restorer, resolve_model
from miipher2.corpus.plan import ROW_COLUMN, Plan, load_plan, read_shard_rows
from miipher2.corpus.records import FileRecord, Layout, sha256_file, valid_record, write_json, write_record
from miipher2.corpus.sources import audio_duration, decode_audio, open_store
from miipher2.corpus.tracking import log_shard, shard_run

log = logging.getLogger(__name__)
SCORE_RATE = 16000  # DNSMOS's rate


@dataclass
class ShardResult:
    plan_id: str
    shard: int
    recipe: str
    records: list[dict] = field(default_factory=list)  # every done file: FileRecord dicts + "row"
    restored: int = 0            # files restored by this run
    reused: int = 0              # files found done (by their records)
    failed: list[dict] = field(default_factory=list)   # {row, source, reason}
    elapsed_s: float = 0.0
    restore_s: float = 0.0       # inside the model (restore_batch)
    restored_input_s: float = 0.0  # seconds of input audio restored by this run

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShardResult:
        return cls(**data)


@dataclass
class _Done:
    row: int
    record: FileRecord


@dataclass
class _Pending:
    row: int
    relative: str
    location: str
    duration: float
    sha256: str = ""
    wave: np.ndarray | None = None
    rate: int = 0
    input_seconds: float = 0.0


def model_loader(plan: Plan, device: str | None = None, batch_size: int = 8) -> Callable[[], object]:
    """A function that loads the plan's model, once, after checking it is still the planned one."""
    loaded = []

    def load():
        if not loaded:
            current = resolve_model(plan.model.uri)
            if current.identity != plan.model.identity:
                raise RuntimeError(f"model {plan.model.uri} changed since the corpus was planned "
                                   f"(identity {current.identity[:12]} != {plan.model.identity[:12]}); plan again")
            loaded.append(load_restorer(plan.model, device, chunk_seconds=plan.settings.chunk_seconds,
                                        overlap_seconds=plan.settings.overlap_seconds, batch_size=batch_size))
        return loaded[0]

    return load


def restore_shard(out_dir, shard: int, *, batch_size: int = 8, workers: int = 2, device: str | None = None,
                  score: bool = True, load: Callable[[], object] | None = None) -> ShardResult:
    """Restore shard `shard` of the plan under `out_dir`; returns (and writes) its result.

    `load` returns the Restorer (default: the plan's model on `device`); it is called only when
    a file needs restoring, so callers restoring several shards can share one loaded model. The
    shard is a child run of the plan's MLflow run (`miipher2.corpus.tracking`).
    """
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be >= 1, got {batch_size} and {workers}")
    layout = Layout(out_dir)
    plan = load_plan(layout.root)
    if not 0 <= shard < plan.shards:
        raise ValueError(f"shard {shard} does not exist: the plan has shards 0..{plan.shards - 1}")
    load = load or model_loader(plan, device, batch_size)
    with shard_run(layout, plan.plan_id, shard) as tracker:
        result = _restore_shard(layout, plan, shard, batch_size, workers, score, load)
        log_shard(tracker, result)
    return result


def _restore_shard(layout: Layout, plan: Plan, shard: int, batch_size: int, workers: int, score: bool,
                   load: Callable[[], object]) -> ShardResult:
    started = time.perf_counter()
    rows = read_shard_rows(layout.root, shard)
    store = open_store(plan.audio_root)
    result = ShardResult(plan.plan_id, shard, plan.recipe)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"shard{shard}") as pool:
        checked = list(pool.map(lambda r: _check(r, store, layout, plan), rows.to_dict("records")))
        pending, done = [], []
        for outcome in checked:
            if isinstance(outcome, _Pending):
                pending.append(outcome)
            elif isinstance(outcome, _Done):
                done.append(outcome)
            else:
                result.failed.append(outcome)
        result.reused = len(done)
        log.info("shard %d: %d file(s) done before, %d to restore, %d failed", shard, result.reused, len(pending),
                 len(result.failed))
        # Restored earlier without scores (--no-score): score them now, without restoring again.
        unscored = [d for d in done if score and not d.record.scores and not d.record.score_error]
        rescoring = [pool.submit(_score_existing, d.record, layout) for d in unscored]
        if pending:
            _restore_pending(pending, load(), store, layout, plan, result, pool, batch_size, score)
        for item, future in zip(unscored, rescoring):
            try:
                future.result()
            except (OSError, ValueError) as err:  # kept as restored, just without scores
                log.warning("shard %d: cannot score %s (%s)", shard, item.record.output, err)
        result.records.extend({"row": d.row, **d.record.to_dict()} for d in done)

    result.records.sort(key=lambda r: r["row"])
    result.failed.sort(key=lambda f: f["row"])
    result.elapsed_s = round(time.perf_counter() - started, 3)
    write_json(layout.shard_result(shard), result.to_dict())
    return result


def _check(row: dict, store, layout: Layout, plan: Plan):
    relative, index = row["path"], int(row[ROW_COLUMN])
    location = store.location(relative)
    try:
        data = store.read(relative)
        record = valid_record(layout, relative, hashlib.sha256(data).hexdigest(), plan.recipe)
        if record is not None:
            return _Done(index, record)
        duration = _positive(row.get("duration_s")) or audio_duration(data, location)
    except AudioError as err:
        return _failure(index, location, err)
    return _Pending(index, relative, location, duration)


def _restore_pending(pending: list[_Pending], restorer, store, layout: Layout, plan: Plan, result: ShardResult,
                     pool: ThreadPoolExecutor, batch_size: int, score: bool) -> None:
    pending.sort(key=lambda p: (p.duration, p.relative))  # length buckets: neighbours have similar lengths
    batches = [pending[i : i + batch_size] for i in range(0, len(pending), batch_size)]
    finishing: list[tuple[_Pending, Future]] = []
    loading = pool.submit(_load_batch, batches[0], store)
    for number in range(len(batches)):
        ready, failures = loading.result()
        if number + 1 < len(batches):
            loading = pool.submit(_load_batch, batches[number + 1], store)  # overlaps the model
        result.failed.extend(failures)
        if not ready:
            continue
        tick = time.perf_counter()
        outcomes = _restore_isolating(restorer, ready)
        result.restore_s += time.perf_counter() - tick
        for item, outcome in zip(ready, outcomes):
            if isinstance(outcome, Exception):
                result.failed.append(_failure(item.row, item.location, outcome, prefix="restoration failed: "))
            else:
                finishing.append((item, pool.submit(_finish, item, *outcome, layout, plan, score)))
            item.wave = None  # the batch's input audio is no longer needed
    for item, future in finishing:
        try:
            record = future.result()
        except (OSError, ValueError) as err:
            result.failed.append(_failure(item.row, item.location, err, prefix="cannot write output: "))
            continue
        result.records.append({"row": item.row, **record.to_dict()})
        result.restored += 1
        result.restored_input_s += record.input_seconds
    result.restore_s = round(result.restore_s, 3)
    result.restored_input_s = round(result.restored_input_s, 3)


def _load_batch(batch: list[_Pending], store) -> tuple[list[_Pending], list[dict]]:
    ready, failures = [], []
    for item in batch:
        try:
            data = store.read(item.relative)  # hash what is restored: the input may have changed since the check
            item.sha256 = hashlib.sha256(data).hexdigest()
            item.wave, item.rate = decode_audio(data, item.location)
            item.input_seconds = item.wave.size / item.rate
            ready.append(item)
        except AudioError as err:
            failures.append(_failure(item.row, item.location, err))
    return ready, failures


def _restore_isolating(restorer, items: list[_Pending]) -> list[tuple[np.ndarray, int] | Exception]:
    """restore_batch on all items; when the batch fails, each item alone, so only the culprit fails."""
    try:
        return list(restorer.restore_batch([i.wave for i in items], [i.rate for i in items]))
    except (RuntimeError, ValueError) as err:  # includes CUDA out-of-memory
        if len(items) == 1:
            return [err]
        return [outcome for item in items for outcome in _restore_isolating(restorer, [item])]


def _finish(item: _Pending, wave: np.ndarray, rate: int, layout: Layout, plan: Plan, score: bool) -> FileRecord:
    wave = np.clip(wave, -1.0, 1.0)
    target = layout.output(item.relative, plan.settings.output_format)
    write_audio(target, wave, rate)
    record = FileRecord(source=item.relative, source_sha256=item.sha256, recipe=plan.recipe,
                        output=target.relative_to(layout.root).as_posix(), output_sha256=sha256_file(target),
                        input_seconds=round(item.input_seconds, 4), output_seconds=round(len(wave) / rate, 4),
                        sample_rate=int(rate))
    if score:
        _score(record, wave, rate)
    write_record(layout, record)  # last: a record means the output above is whole
    return record


def _score(record: FileRecord, wave: np.ndarray, rate: int) -> None:
    from miipher2.evaluate.quality import dnsmos

    try:
        record.scores = dnsmos()(resample(wave.astype(np.float32), rate, SCORE_RATE))
    except ValueError as err:  # e.g. shorter than DNSMOS accepts: restored, but unscored
        record.score_error = str(err)


def _score_existing(record: FileRecord, layout: Layout) -> None:
    wave, rate = read_audio(layout.root / record.output)
    _score(record, wave, rate)
    write_record(layout, record)  # same output, same hash: only the scores are new


def _failure(row: int, location: str, err: Exception, prefix: str = "") -> dict:
    return {"row": row, "source": location, "reason": prefix + str(err).removeprefix(f"{location}: ")}


def _positive(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if number > 0 and np.isfinite(number) else 0.0
