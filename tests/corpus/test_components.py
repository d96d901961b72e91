"""The three restoration components called as plain functions with KFP artifacts in a temp dir."""

import json
from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl

from components.merge_shards import merge_shards
from components.plan_shards import plan_shards
from components.restore_shard import restore_shard
from tests.corpus.conftest import build_corpus
from tests.kfp_backend import backend_artifact


def _artifact(kind, tmp_path: Path, name: str):
    return kind(name=name, uri=str(tmp_path / "artifacts" / name), metadata={})


def test_plan_restore_merge_components(tmp_path, model_dir):
    (tmp_path / "artifacts").mkdir()
    manifest = build_corpus(tmp_path / "data")
    workspace = tmp_path / "workspace"

    plan = _artifact(dsl.Artifact, tmp_path, "plan")
    shards = plan_shards.python_func(manifest=manifest, model=str(model_dir), output_dir="", workspace=str(workspace),
                                     kfp_run_id="run-42", shards=2, chunk_seconds=30.0, overlap_seconds=1.0,
                                     output_format="flac", plan=plan)
    assert shards == [0, 1]
    out = str(workspace / "restored" / "data-test" / "run-42")  # per corpus, per run
    assert plan.metadata["output_dir"] == out
    assert json.loads(Path(plan.path).read_text())["plan_id"] == plan.metadata["plan_id"]
    assert plan.metadata["rows"] == 5 and plan.metadata["rejected"] == 0

    # The later steps get the plan artifact as a KFP backend hands it over (extra keys, floats).
    planned = backend_artifact(dsl.Artifact, tmp_path / "artifacts", "plan", plan.metadata)
    for shard in shards:
        metrics = _artifact(dsl.Metrics, tmp_path, f"metrics-{shard}")
        restore_shard.python_func(plan=planned, shard=shard, batch_size=2, workers=2, metrics=metrics)
        assert metrics.metadata["failed"] == 0 and metrics.metadata["restored"] >= 1

    outputs = {name: _artifact(kind, tmp_path, name) for name, kind in
               [("restored_manifest", dsl.Dataset), ("summary", dsl.Markdown), ("summary_json", dsl.Artifact),
                ("metrics", dsl.Metrics)]}
    merge_shards.python_func(plan=planned, **outputs)
    restored = pd.read_csv(outputs["restored_manifest"].path)
    assert len(restored) == 5 and restored["path"].str.endswith(".flac").all()
    assert outputs["restored_manifest"].metadata["data_root"] == out
    assert Path(outputs["summary"].path).read_text().startswith("# Restored corpus")
    assert json.loads(Path(outputs["summary_json"].path).read_text())["files"]["restored"] == 5
    assert outputs["metrics"].metadata["files_failed"] == 0 and 1 <= outputs["metrics"].metadata["dnsmos_ovrl_mean"] <= 5


def test_a_plan_outside_the_workspace_is_refused(tmp_path, model_dir):
    manifest = build_corpus(tmp_path / "data")
    plan = _artifact(dsl.Artifact, tmp_path, "plan")
    with pytest.raises(ValueError, match="outside the workspace"):
        plan_shards.python_func(manifest=manifest, model=str(model_dir), output_dir="/elsewhere/out",
                                workspace=str(tmp_path / "workspace"), kfp_run_id="run-1", shards=1, chunk_seconds=30.0,
                                overlap_seconds=1.0, output_format="wav", plan=plan)

