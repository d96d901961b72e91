"""The on-disk spool: order, acknowledgement, the bound, crash leftovers, and the ownership lock."""

import json

import pytest

from miipher2.tracking.spool import Spool, leftovers


def metric(step):
    return {"run": "r", "op": "metrics", "metrics": {"loss": 1.0 / (step + 1)}, "step": step, "ts": step}


def test_records_come_back_in_order_until_acknowledged(tmp_path):
    spool = Spool.for_run(tmp_path, "r")
    for step in range(5):
        assert spool.append(metric(step), droppable=True)
    pending = spool.pending(max_records=3)
    assert [r["step"] for _, r in pending] == [0, 1, 2]
    spool.acknowledge(pending[1][0])  # the first two reached MLflow
    assert [r["step"] for _, r in spool.pending()] == [2, 3, 4]
    spool.acknowledge(spool.pending()[-1][0])
    assert spool.empty and spool.pending() == [] and spool.path.stat().st_size == 0
    spool.close()
    assert not spool.path.exists(), "a fully delivered spool leaves nothing behind"


def test_only_metrics_are_dropped_when_full_and_they_are_counted(tmp_path):
    line = len(json.dumps(metric(0), separators=(",", ":"))) + 1
    spool = Spool.for_run(tmp_path, "r", max_bytes=3 * line)
    accepted = [spool.append(metric(0), droppable=True) for _ in range(5)]
    assert accepted == [True, True, True, False, False] and spool.dropped == 2
    assert spool.append({"run": "r", "op": "end", "status": "FINISHED", "ts": 0})  # never dropped
    assert [r["op"] for _, r in spool.pending()] == ["metrics"] * 3 + ["end"]
    # Delivery makes room again: the bound is on what is still undelivered.
    spool.acknowledge(spool.pending()[-1][0])
    assert spool.append(metric(9), droppable=True)
    spool.close()


def test_undelivered_records_outlive_the_process_and_are_adopted_once(tmp_path):
    first = Spool.for_run(tmp_path, "old-run")
    first.append(metric(7))
    assert list(leftovers(tmp_path)) == [], "a live spool is not anyone's leftover"
    first.close()  # e.g. the server stayed down until the step gave up waiting
    assert first.path.exists()

    adopted = list(leftovers(tmp_path))
    assert [s.path for s in adopted] == [first.path]
    assert [r["step"] for _, r in adopted[0].pending()] == [7]
    with pytest.raises(BlockingIOError):  # one adopter at a time
        Spool(first.path, adopt=True)
    adopted[0].acknowledge(adopted[0].pending()[-1][0])
    adopted[0].close()
    assert list(tmp_path.iterdir()) == []


def test_a_torn_last_line_waits_and_garbage_is_skipped(tmp_path):
    spool = Spool.for_run(tmp_path, "r")
    spool.append(metric(0))
    with open(spool.path, "ab") as handle:  # a crash mid-write, then someone appends garbage + a record
        handle.write(b"{not json}\n")
    spool.append(metric(2))
    with open(spool.path, "ab") as handle:
        handle.write(b'{"run": "r", "op"')
    assert [r["step"] for _, r in spool.pending()] == [0, 2]
    spool.close()


def test_compaction_keeps_every_undelivered_record(tmp_path, monkeypatch):
    monkeypatch.setattr("miipher2.tracking.spool._COMPACT_AFTER", 100)
    spool = Spool.for_run(tmp_path, "r")
    for step in range(10):
        spool.append(metric(step))
    pending = spool.pending()
    spool.acknowledge(pending[5][0])  # 6 delivered: the head is longer than the tail, so it is compacted
    assert spool.path.stat().st_size < pending[-1][0]
    assert [r["step"] for _, r in spool.pending()] == [6, 7, 8, 9]
    spool.close()
