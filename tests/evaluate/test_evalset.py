"""Reading the degraded evaluation manifest safely."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from miipher2.data.manifest import read_manifest, write_manifest
from miipher2.evaluate.evalset import EvaluationSetError, degradation_types, load_evaluation_set


def test_loads_rows_with_resolved_files_and_effect_names(eval_root):
    evalset = load_evaluation_set(eval_root, "test")
    assert list(evalset["utt_id"]) == ["en_0880", "en_0930", "de_0890"]
    assert all(eval_root.resolve() in Path(p).parents for p in evalset["clean_file"])
    assert evalset.loc[1, "degradation_types"] == ["band_limit", "noise"]


def test_subset_spreads_across_languages(eval_root):
    subset = load_evaluation_set(eval_root, "test", max_utterances=2)
    assert sorted(subset["language"]) == ["de", "en"]


def test_degradation_json_formats():
    assert degradation_types('[{"effect": "noise", "snr_db": 5}, {"effect": "noise"}, {"type": "mp3"}]') == ["noise", "mp3"]
    assert degradation_types("[]") == ["none"]
    with pytest.raises(ValueError, match="JSON list"):
        degradation_types('{"effect": "noise"}')


def test_clear_errors_for_missing_manifest_and_escaping_paths(eval_root, tmp_path):
    with pytest.raises(EvaluationSetError, match="no degraded manifest for split 'val'"):
        load_evaluation_set(eval_root, "val")
    root = tmp_path / "data"
    shutil.copytree(eval_root, root)
    manifest = root / "manifests" / "test_degraded.csv"
    frame = read_manifest(manifest)
    frame.loc[2, "clean_path"] = "../../etc/passwd"
    write_manifest(frame, manifest)
    with pytest.raises(EvaluationSetError, match=r"row 4 \(de_0890\).*'\.\.'"):
        load_evaluation_set(root, "test")
    write_manifest(frame.drop(columns=["degradation"]), manifest)
    with pytest.raises(EvaluationSetError, match="missing columns"):
        load_evaluation_set(root, "test")
    write_manifest(pd.concat([frame, frame.iloc[:1]]), manifest)
    with pytest.raises(EvaluationSetError, match="duplicate utt_id"):
        load_evaluation_set(root, "test")
