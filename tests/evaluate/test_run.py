"""The evaluation orchestrator: systems, rows, failures, outputs; and one full run with every metric."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from miipher2.evaluate.baseline import RestorerEnhancer
from miipher2.evaluate.run import (CLEAN, DEGRADED, ScoringConfig, evaluate_model, evaluate_systems, groups_for,
                                   load_restorer)
from miipher2.evaluate.evalset import load_evaluation_set
from tests.evaluate.fakes import FailsOn, Upsampler, WhereAmI

INTRUSIVE = ScoringConfig(("intrusive",))


def test_every_evaluation_has_clean_and_degraded_rows_and_resamples_outputs(eval_root, tmp_path):
    result = evaluate_systems([RestorerEnhancer(Upsampler(), name="upsampler")], eval_root, "test", tmp_path,
                              config=INTRUSIVE, main_system="upsampler")
    table = result.table.set_index(["utt_id", "system"])
    assert result.systems == [CLEAN, DEGRADED, "upsampler"] and len(table) == 9
    assert table.xs(CLEAN, level="system")["pesq"].round(2).eq(4.64).all()
    # 16 kHz -> 24 kHz -> 16 kHz round trip: same scores as the input itself.
    pd.testing.assert_series_equal(table.xs("upsampler", level="system")["pesq"],
                                   table.xs(DEGRADED, level="system")["pesq"], atol=0.05, check_names=False)
    assert (tmp_path / "audio" / "upsampler" / "en_0880.wav").is_file()
    assert set(result.headline) == {"pesq", "estoi", "si_sdr", "lsd", "lsd_8_12k", "mcd"}
    assert result.table["lsd_8_12k"].isna().all()  # 16 kHz references: no 8-12 kHz band to compare
    saved = pd.read_csv(tmp_path / "utterances.csv")
    assert len(saved) == 9 and set(saved["degradation_types"]) == {"noise", "band_limit+noise"}
    assert json.loads((tmp_path / "headline.json").read_text())["system"] == "upsampler"


def test_the_high_band_is_scored_against_wideband_references(eval_root, tmp_path):
    """24 kHz references with content above 8 kHz: a system that returns 16 kHz audio (resampled to
    24 kHz) leaves the band empty, which only lsd_8_12k sees; the reference itself scores 0."""
    import shutil

    import numpy as np

    from miipher2.audio import read_audio, resample, write_audio

    root = tmp_path / "data"
    shutil.copytree(eval_root, root)
    references = {}
    for path in sorted((root / "clean").rglob("*.wav")):
        wave, rate = read_audio(path)
        wide = resample(wave, rate, 24000)
        air = np.random.default_rng(0).standard_normal(wide.size)
        air = np.fft.irfft(np.fft.rfft(air) * (np.fft.rfftfreq(air.size, 1 / 24000) > 8500), air.size)
        wide = (wide + 0.05 * np.abs(wide).max() * air / np.abs(air).max()).astype(np.float32)  # "air" above 8.5 kHz
        write_audio(path, wide, 24000)
        references[read_audio(root / "degraded" / "test" / path.name)[0].size] = wide

    class Oracle:  # returns the wideband reference of the utterance it is given
        name = "oracle"

        def enhance(self, wave, rate):
            return references[wave.size], 24000

    result = evaluate_systems([RestorerEnhancer(Upsampler(), name="upsampler"), Oracle()], root, "test",
                              tmp_path / "out", config=INTRUSIVE)
    band = result.table.set_index(["utt_id", "system"])["lsd_8_12k"]
    assert (band.xs(CLEAN, level="system") == 0).all()
    assert (band.xs("oracle", level="system") < 0.5).all()  # 16-bit files: within rounding
    assert (band.xs("upsampler", level="system") > 20).all() and (band.xs(DEGRADED, level="system") > 20).all()


def test_one_failing_utterance_does_not_stop_the_others(eval_root, tmp_path):
    evalset = load_evaluation_set(eval_root, "test")
    from miipher2.audio import read_audio

    bad_length = read_audio(evalset.loc[1, "degraded_file"])[0].size
    result = evaluate_systems([FailsOn("flaky", bad_length)], eval_root, "test", tmp_path, config=INTRUSIVE)
    flaky = result.table[result.table["system"] == "flaky"].set_index("utt_id")
    assert "out of memory (simulated)" in flaky.at["en_0930", "error"]
    assert math.isnan(flaky.at["en_0930", "pesq"])
    assert flaky.drop(index="en_0930")["pesq"].notna().all()
    overall = result.aggregates.query("system == 'flaky' and group_by == 'all' and metric == 'pesq'").iloc[0]
    assert overall["n"] == 2


@pytest.mark.slow
def test_a_worker_pool_gives_the_same_table_and_runs_the_baseline_in_its_workers(eval_root, tmp_path):
    import os

    from miipher2.evaluate.baseline import DeepFilterNet3
    from miipher2.evaluate.run import available_cpus

    systems = [RestorerEnhancer(Upsampler(), name="upsampler"), DeepFilterNet3(), WhereAmI()]
    alone = evaluate_systems(systems, eval_root, "test", tmp_path / "one", config=INTRUSIVE, workers=1)
    pooled = evaluate_systems(systems, eval_root, "test", tmp_path / "two", config=INTRUSIVE, workers=2)
    metrics = ["pesq", "estoi", "si_sdr", "lsd", "mcd"]
    pd.testing.assert_frame_equal(alone.table.set_index(["utt_id", "system"])[metrics],
                                  pooled.table.set_index(["utt_id", "system"])[metrics])
    where = pooled.table.set_index("system").loc["where_am_i", "error"]
    assert where.str.contains("ran in process").all()
    assert not where.str.contains(f"ran in process {os.getpid()}$").any()  # enhanced by the workers
    assert alone.table.set_index("system").loc["where_am_i", "error"].str.endswith(f"process {os.getpid()}").all()
    assert 1 <= available_cpus() <= (os.cpu_count() or 1)


def test_a_containers_cpu_quota_caps_the_workers(tmp_path):
    """Inside a pod os.cpu_count() reports the node's cores; the cgroup quota is what it may use."""
    from miipher2.evaluate.run import _cgroup_cpu_quota

    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two single-threaded workers
    assert _cgroup_cpu_quota(tmp_path / "v2") == 2
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(tmp_path / "v2") is None
    (tmp_path / "v1" / "cpu").mkdir(parents=True)
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(tmp_path / "v1") == 4
    (tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_cpu_quota(tmp_path / "v1") is None
    assert _cgroup_cpu_quota(tmp_path / "nothing") is None


def test_configuration_errors_are_clear(eval_root, tmp_path):
    with pytest.raises(ValueError, match="unknown metric groups"):
        ScoringConfig(("intrusive", "vibes"))
    with pytest.raises(ValueError, match="unknown metrics"):
        groups_for(["dnsmos_ovrl", "loudness"])
    assert groups_for(["wer", "pesq"]) == ("intrusive", "asr")
    with pytest.raises(ValueError, match="must be unique"):
        evaluate_systems([FailsOn("clean", -1)], eval_root, "test", tmp_path, config=INTRUSIVE)
    with pytest.raises(FileNotFoundError, match="not a Miipher-2 model directory"):
        load_restorer(tmp_path)


def test_evaluate_model_with_a_tiny_restorer(eval_root, tiny_model_dir, tmp_path):
    result = evaluate_model(str(tiny_model_dir), eval_root, out_dir=tmp_path, baseline=False,
                            metric_groups=["intrusive"], report=False, tracking=False)
    assert result.systems == [CLEAN, DEGRADED, "miipher2"]
    restored = result.table[result.table["system"] == "miipher2"]
    assert restored["error"].isna().all() and restored["lsd"].notna().all()


@pytest.mark.slow
def test_full_evaluation_with_every_metric_baseline_and_worker_pool(eval_root, tiny_model_dir, tmp_path):
    result = evaluate_model(str(tiny_model_dir), eval_root, out_dir=tmp_path, workers=2, tracking=False)
    assert result.systems == [CLEAN, DEGRADED, "miipher2", "deepfilternet3"]
    table = result.table.set_index(["utt_id", "system"])
    assert len(table) == 12 and table["error"].isna().all()
    clean, degraded = table.xs(CLEAN, level="system"), table.xs(DEGRADED, level="system")
    assert (clean["dnsmos_ovrl"] > degraded["dnsmos_ovrl"]).all()
    assert (clean["speaker_similarity"] > 0.999).all()
    baseline = table.xs("deepfilternet3", level="system")
    assert (baseline["si_sdr"] > degraded["si_sdr"]).all()  # DFN3 denoises
    assert math.isnan(table.at[("de_0890", "miipher2"), "wer"])
    assert "does not cover language 'de'" in table.at[("de_0890", "miipher2"), "asr_note"]
    assert clean.loc[["en_0880", "en_0930"], "wer"].max() <= 0.3
    assert set(result.aggregates["group_by"]) == {"all", "language", "degradation"}
    assert {"dnsmos_ovrl", "wer", "wer_corpus", "speaker_similarity", "pesq"} <= set(result.headline)
    english = clean.loc[["en_0880", "en_0930"]]  # the corpus rate weighs the utterances by their words
    assert result.aggregates.query("system == 'clean' and group_by == 'all' and metric == 'wer_corpus'")["mean"].item() \
        == pytest.approx(english["word_errors"].sum() / english["reference_words"].sum())
    assert result.html_path.is_file() and result.markdown_path.is_file()
    assert "miipher2" in result.markdown_path.read_text()
