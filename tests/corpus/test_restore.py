"""Restoring shards: outputs, resume by content hash, redo of anything stale, bad files isolated, merge numbers."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from miipher2.audio import resample, write_audio
from miipher2.corpus import IncompleteCorpusError, Layout, Settings, merge_shards, plan_corpus, restore_shard
from miipher2.data.manifest import COLUMNS, read_manifest
from tests.corpus.conftest import UTTERANCES, CountingRestorer, build_corpus, speech


def _run(manifest, model_dir, out, restorer, shards=2, score=False, settings=None):
    plan_corpus(manifest, str(model_dir), out, shards, settings)
    results = [restore_shard(out, s, batch_size=2, workers=2, score=score, load=lambda: restorer) for s in range(shards)]
    return results, merge_shards(out)


def _mtimes(out):
    return {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.wav")}


def test_restores_scores_and_merges_with_correct_numbers(tmp_path, model_dir, restorer):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    results, summary = _run(manifest, model_dir, out, restorer, shards=2, score=True)

    frame = read_manifest(out / "manifests" / "test.csv")
    assert list(frame.columns) == [*COLUMNS, "source_path", "source_sha256", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl",
                                   "dnsmos_p808"]
    assert list(frame["utt_id"]) == list(UTTERANCES)  # input order, whatever the shards
    for row in frame.to_dict("records"):
        seconds = UTTERANCES[row["utt_id"]][0]
        info = sf.info(out / row["path"])
        assert (info.samplerate, info.channels) == (24000, 1) and info.duration == pytest.approx(seconds, abs=0.01)
        assert row["duration_s"] == pytest.approx(info.duration, abs=1e-3)
        assert row["source_path"] == str(tmp_path / "data" / "clean" / "en" / "spk" / f"{row['utt_id']}.wav")
        assert row["transcript"] == f"utterance {row['utt_id']}" and row["split"] == "test"
    # The scores are DNSMOS of the restored audio: recomputed here with speechmos' own entry point
    # (its calibration polynomials are not clipped to 1..5: a random model's noise may score below 1).
    from speechmos import dnsmos

    row = frame.iloc[0]
    wave, rate = sf.read(out / row["path"], dtype="float32")
    expected = dnsmos.run(resample(wave, rate, 16000), sr=16000)
    for column, key in (("dnsmos_sig", "sig_mos"), ("dnsmos_bak", "bak_mos"), ("dnsmos_ovrl", "ovrl_mos"),
                        ("dnsmos_p808", "p808_mos")):
        assert row[column] == pytest.approx(float(expected[key]), abs=1e-3), column

    total = sum(s for s, _, _ in UTTERANCES.values())
    assert summary.files == {"total": 5, "restored": 5, "restored_now": 5, "reused": 0, "failed": 0}
    assert summary.hours["in"] == pytest.approx(total / 3600, abs=1e-5)
    assert summary.hours["out"] == pytest.approx(total / 3600, abs=1e-5)
    ovrl = summary.scores["dnsmos_ovrl"]
    assert ovrl["count"] == 5 and ovrl["mean"] == pytest.approx(frame["dnsmos_ovrl"].mean(), abs=1e-4)
    assert ovrl["p50"] == pytest.approx(frame["dnsmos_ovrl"].median(), abs=1e-4)
    assert ovrl["min"] <= ovrl["p5"] <= ovrl["p25"] <= ovrl["p50"] <= ovrl["p75"] <= ovrl["p95"] <= ovrl["max"]
    assert json.loads((out / "summary.json").read_text())["files"]["restored"] == 5
    assert "| 5 | 5 | 5 | 0 | 0 |" in (out / "summary.md").read_text()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # no temp files left
    assert sum(r.restored for r in results) == 5


def test_rerun_skips_done_files_without_loading_the_model(tmp_path, model_dir, restorer):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    first = CountingRestorer(restorer)
    _run(manifest, model_dir, out, first)
    assert len(first.seen) == 5
    before = _mtimes(out)

    plan_corpus(manifest, str(model_dir), out, 2)
    loads = []
    results = [restore_shard(out, s, load=lambda: loads.append(1)) for s in range(2)]
    assert loads == []  # nothing to do: the model is never loaded
    assert [r.restored for r in results] == [0, 0] and sum(r.reused for r in results) == 5
    assert _mtimes(out) == before
    assert merge_shards(out).files == {"total": 5, "restored": 5, "restored_now": 0, "reused": 5, "failed": 0}


def test_changed_input_truncated_output_and_missing_record_are_redone(tmp_path, model_dir, restorer):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    _run(manifest, model_dir, out, restorer)
    layout = Layout(out)
    before = _mtimes(out)
    # a: new input bytes under the same name; b: output cut short, record kept;
    # c: output cut short and its record gone (a crash between the two writes looks like this).
    write_audio(tmp_path / "data" / "clean/en/spk/a.wav", speech(0.6, 16000, seed=99), 16000)
    b_out = layout.output("clean/en/spk/b.wav", "wav")
    b_out.write_bytes(b_out.read_bytes()[:100])
    c_out = layout.output("clean/en/spk/c.wav", "wav")
    c_out.write_bytes(c_out.read_bytes()[:100])
    layout.record("clean/en/spk/c.wav").unlink()

    counting = CountingRestorer(restorer)
    _, summary = _run(manifest, model_dir, out, counting)
    # exactly a, b and c again (by their input lengths: 0.6 s at 16 kHz, 1.4 s at 16 kHz, 0.9 s at 44.1 kHz)
    assert sorted(counting.seen) == sorted([9600, 22400, 39690])
    assert summary.files["restored_now"] == 3 and summary.files["reused"] == 2
    after = _mtimes(out)
    for name in ("d", "e"):
        path = layout.output(f"clean/en/spk/{name}.wav", "wav")
        assert after[path] == before[path]
    assert sf.info(b_out).duration == pytest.approx(1.4, abs=0.01) and sf.info(c_out).duration == pytest.approx(0.9, abs=0.01)
    new_hash = read_manifest(out / "manifests" / "test.csv").set_index("utt_id").at["a", "source_sha256"]
    assert new_hash == json.loads(layout.record("clean/en/spk/a.wav").read_text())["source_sha256"]


def test_another_model_or_setting_restores_everything_again(tmp_path, model_dir, restorer):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    _run(manifest, model_dir, out, restorer)
    counting = CountingRestorer(restorer)
    _run(manifest, model_dir, out, counting, settings=Settings(chunk_seconds=10.0))
    assert len(counting.seen) == 5
    other = tmp_path / "other-model"  # same architecture, different vocoder weights
    from safetensors.torch import load_file, save_file

    import shutil
    shutil.copytree(model_dir, other)
    weights = load_file(other / "vocoder.safetensors")
    save_file({k: v * 0.5 for k, v in weights.items()}, other / "vocoder.safetensors")
    counting = CountingRestorer(restorer)
    _run(manifest, other, out, counting, settings=Settings(chunk_seconds=10.0))
    assert len(counting.seen) == 5


def test_files_restored_without_scores_are_scored_later_without_restoring(tmp_path, model_dir, restorer):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    _, summary = _run(manifest, model_dir, out, restorer, score=False)
    assert summary.scores["dnsmos_ovrl"]["count"] == 0 and len(summary.unscored) == 5
    before = _mtimes(out)
    counting = CountingRestorer(restorer)
    _, summary = _run(manifest, model_dir, out, counting, score=True)
    assert counting.seen == [] and _mtimes(out) == before
    assert summary.scores["dnsmos_ovrl"]["count"] == 5 and summary.unscored == []


def test_bad_files_are_reported_and_the_rest_restored(tmp_path, model_dir, restorer):
    extra = [{"utt_id": "corrupt", "path": "clean/en/spk/corrupt.wav", "duration_s": 1.0},
             {"utt_id": "gone", "path": "clean/en/spk/gone.wav", "duration_s": 1.0},
             {"utt_id": "nan", "path": "clean/en/spk/nan.wav", "duration_s": 0.5},
             {"utt_id": "evil", "path": "../outside.wav", "duration_s": 1.0}]
    manifest = build_corpus(tmp_path / "data", extra_rows=extra)
    spk = tmp_path / "data" / "clean/en/spk"
    (spk / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk-not-audio")
    sf.write(spk / "nan.wav", np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    # the model itself fails on one good-looking file (d: 0.3 s at 16 kHz): only that file fails
    counting = CountingRestorer(restorer, fail_on_samples=4800)
    _, summary = _run(manifest, model_dir, tmp_path / "out", counting)

    reasons = {f["source"].rsplit("/", 1)[-1]: f["reason"] for f in summary.failures}
    assert set(reasons) == {"corrupt.wav", "gone.wav", "nan.wav", "test.csv:10", "d.wav"}
    assert "cannot decode audio" in reasons["corrupt.wav"] and "no such file" in reasons["gone.wav"]
    assert "NaN" in reasons["nan.wav"] and "'..'" in reasons["test.csv:10"]
    assert "restoration failed" in reasons["d.wav"] and "simulated failure" in reasons["d.wav"]
    assert summary.files == {"total": 9, "restored": 4, "restored_now": 4, "reused": 0, "failed": 5}
    frame = read_manifest(tmp_path / "out" / "manifests" / "test.csv")
    assert sorted(frame["utt_id"]) == ["a", "b", "c", "e"]
    assert "corrupt.wav" in (tmp_path / "out" / "summary.md").read_text()


def test_merge_refuses_a_corpus_with_an_unfinished_shard(tmp_path, model_dir, restorer):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    _run(manifest, model_dir, out, restorer, shards=2)
    plan_corpus(manifest, str(model_dir), out, 3)  # a new plan: old shard results do not count
    restore_shard(out, 0, load=lambda: restorer, score=False)
    with pytest.raises(IncompleteCorpusError, match="shard 1 has not finished under the current plan"):
        merge_shards(out)


def test_distribution_handles_missing_scores():
    from miipher2.corpus import distribution

    stats = distribution(pd.Series([1.0, 2.0, 3.0, 4.0, float("nan")]))
    assert stats["count"] == 4 and stats["mean"] == 2.5 and stats["p50"] == 2.5 and stats["max"] == 4.0
    assert math.isnan(distribution([])["mean"])
