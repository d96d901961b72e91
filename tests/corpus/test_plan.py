"""Sharding: deterministic, every usable row exactly once, balanced; unsafe rows rejected with reasons."""

import json
import multiprocessing

import pandas as pd
import pytest

from miipher2.corpus import Layout, PlanConflict, assign_shards, load_plan, plan_corpus, run_output_dir
from miipher2.corpus.plan import read_shard_rows
from tests.corpus.conftest import build_corpus


def test_assignment_is_deterministic_complete_and_balanced():
    durations = [float(d) for d in (9, 1, 1, 1, 8, 2, 3, 0, 5, 4, 7, 6)]  # one unknown (0)
    keys = [f"f{i:02d}.wav" for i in range(len(durations))]
    first = assign_shards(durations, keys, 3)
    assert first == assign_shards(durations, keys, 3)
    assert sorted(set(first)) == [0, 1, 2] and len(first) == len(durations)
    mean_known = sum(durations) / 11  # the unknown row counts as the mean known duration
    weights = [d or mean_known for d in durations]
    loads = [sum(w for w, s in zip(weights, first) if s == shard) for shard in range(3)]
    assert max(loads) - min(loads) <= 1  # longest-first greedy: within one short file of even
    assert assign_shards(durations, keys, 1) == [0] * len(durations)
    more = assign_shards(durations, keys, 20)  # more shards than rows: some stay empty, none repeats a row
    assert sorted(more) == sorted(set(more))
    with pytest.raises(ValueError, match="shards must be >= 1"):
        assign_shards(durations, keys, 0)


def test_plan_covers_every_row_once_and_rejects_unsafe_and_colliding_paths(tmp_path, model_dir):
    extra = [{"utt_id": "evil", "path": "../../etc/passwd", "duration_s": 1.0},
             {"utt_id": "abs", "path": "/etc/passwd", "duration_s": 1.0},
             {"utt_id": "twin", "path": "clean/en/spk/a.flac", "duration_s": 1.0}]  # output name of a.wav
    manifest = build_corpus(tmp_path / "data", extra_rows=extra)
    out = tmp_path / "out"
    plan = plan_corpus(manifest, str(model_dir), out, shards=3)

    assert plan.rows == 8 and plan.shards == 3
    assert {r["row"] for r in plan.rejected} == {5, 6, 7}
    reasons = " ".join(r["reason"] for r in plan.rejected)
    assert "'..'" in reasons and "absolute path" in reasons and "already taken" in reasons
    rows = pd.concat([read_shard_rows(out, s) for s in range(3)])
    assert sorted(rows["row"]) == [0, 1, 2, 3, 4]  # every usable row, exactly once
    assert plan.shard_files == [len(read_shard_rows(out, s)) for s in range(3)]
    assert load_plan(out) == plan
    assert json.loads(Layout(out).plan.read_text())["plan_id"] == plan.plan_id


def test_plan_id_is_stable_and_changes_with_inputs(tmp_path, model_dir):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    first = plan_corpus(manifest, str(model_dir), out, shards=2)
    assert plan_corpus(manifest, str(model_dir), out, shards=2).plan_id == first.plan_id
    assert plan_corpus(manifest, str(model_dir), out, shards=3, replace=True).plan_id != first.plan_id
    frame = pd.read_csv(manifest).iloc[:-1]
    frame.to_csv(manifest, index=False)
    assert plan_corpus(manifest, str(model_dir), out, shards=2, replace=True).plan_id != first.plan_id


def test_another_runs_unfinished_plan_is_not_overwritten(tmp_path, model_dir):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    first = plan_corpus(manifest, str(model_dir), out, shards=2)
    rows = [read_shard_rows(out, s)["row"].tolist() for s in range(2)]
    with pytest.raises(PlanConflict, match=rf"holds plan {first.plan_id}.*not finished"):
        plan_corpus(manifest, str(model_dir), out, shards=3)
    assert load_plan(out) == first  # untouched, shard files included
    assert [read_shard_rows(out, s)["row"].tolist() for s in range(2)] == rows
    assert not Layout(out).shard_rows(2).exists()
    assert plan_corpus(manifest, str(model_dir), out, shards=2).plan_id == first.plan_id  # the same work resumes


def test_planning_is_refused_while_another_process_plans_the_same_folder(tmp_path, model_dir):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(Layout(out).state / ".plan.lock"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(PlanConflict, match="being planned by another process.*kfp_run_id=run-a"):
            plan_corpus(manifest, str(model_dir), out, shards=2)
        assert not Layout(out).plan.exists()
    finally:
        release.set()
        holder.join()
    assert plan_corpus(manifest, str(model_dir), out, shards=2).shards == 2


def _hold(path: str, ready, release) -> None:
    from miipher2.locking import exclusive_lock

    with exclusive_lock(path, owner={"kfp_run_id": "run-a"}):
        ready.set()
        release.wait(60)


@pytest.mark.parametrize("output_dir, expected", [
    ("", "ws/restored/libritts-train/run-9"),
    ("mine/out", "ws/mine/out"),
    ("{ws}/absolute/inside", "ws/absolute/inside"),
])
def test_run_output_dir_is_per_corpus_and_run_and_inside_the_workspace(tmp_path, output_dir, expected):
    ws = tmp_path / "ws"
    got = run_output_dir(ws, "s3://bucket/libritts/manifests/train.csv", "run-9", output_dir.format(ws=ws))
    assert got == tmp_path / expected
    for outside in ("/tmp/elsewhere", "../escape", f"{ws}/../x"):
        with pytest.raises(ValueError, match="outside the workspace"):
            run_output_dir(ws, "s3://bucket/libritts/manifests/train.csv", "run-9", outside)


def test_bad_manifest_and_model_are_named(tmp_path, model_dir):
    with pytest.raises(ValueError, match="cannot read manifest"):
        plan_corpus(str(tmp_path / "missing.csv"), str(model_dir), tmp_path / "out", 1)
    (tmp_path / "nopath.csv").write_text("utt_id,file\na,x.wav\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        plan_corpus(str(tmp_path / "nopath.csv"), str(model_dir), tmp_path / "out", 1)
    manifest = build_corpus(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="not a Miipher-2 model directory"):
        plan_corpus(manifest, str(tmp_path), tmp_path / "out", 1)
