"""MLflow's UI as a reviewer sees two pipeline runs: headless Chromium on a real `mlflow server`.

Two pipeline parent runs are logged the way the pipeline logs them (`start_pipeline_run`,
`step_run`): a handful of parameters, headline metrics, the dataset input, the report on the
parent. Chromium then renders the experiment's run table, the comparison of the two runs and
the parent's report, and the test reads what a reviewer would: the rendered page text (plus a
non-blank screenshot of the comparison, kept beside the test's temp files for a human look).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from miipher2.data.manifest import COLUMNS, manifest_path, write_manifest
from miipher2.data.mlflow_dataset import dvc_dataset
from miipher2.evaluate.report import headline_chart_png
from miipher2.lineage import Lineage, start_pipeline_run, step_run
from miipher2.tracking import ui_url
from miipher2.train.config import load_config
from tests.servers import MlflowServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")]


def render(url: str, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after MLflow's JavaScript ran (and optionally a screenshot of it)."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,2400", "--virtual-time-budget=30000"]
    if screenshot is not None:
        subprocess.run([*flags, f"--screenshot={screenshot}", url], capture_output=True, timeout=300)
    return subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=300).stdout


def log_pipeline_run(tmp_path: Path, name: str, lr: float, dnsmos: float) -> str:
    data = tmp_path / "data"
    if not manifest_path(data, "train").exists():
        rows = [{"utt_id": f"u{i}", "path": f"clean/u{i}.wav", "duration_s": 1.0, "sample_rate": 16000, "channels": 1,
                 "language": "en", "speaker": "s", "split": "train", "transcript": "hello"} for i in range(3)]
        write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), manifest_path(data, "train"))
    lineage = Lineage(git_commit="abc123", dataset_revision="main", dataset_md5="0123456789abcdef0123456789abcdef.dir",
                      kfp_run_id=name, backbone="w2v-bert-2.0", experiment="ui-review", dataset_commit="c0ffee" * 6)
    config = load_config("demo-cpu", [f"stage1.lr={lr}"])
    dataset = dvc_dataset(data, "train", repo="https://git.example/miipher2.git", revision="main",
                          commit=lineage.dataset_commit, md5=lineage.dataset_md5)
    lineage = start_pipeline_run(lineage, f"training {name}", dataset=dataset, params={
        "training_preset": "demo-cpu", **config.tracked_params(also=["stage1.lr"])})
    with step_run("train_pa", lineage) as tracker:
        for step in range(1, 6):
            tracker.log_metrics({"stage1/loss": 1.0 / step}, step=step)
    report = tmp_path / name
    report.mkdir()
    (report / "report.md").write_text(f"# Miipher-2 evaluation\n\nDNSMOS OVRL {dnsmos}\n")
    aggregates = pd.DataFrame([{"system": "miipher2", "group_by": "all", "group": "all", "metric": "dnsmos_ovrl",
                                "n": 3, "mean": dnsmos, "ci_low": dnsmos - 0.1, "ci_high": dnsmos + 0.1}])
    (report / "headline.png").write_bytes(headline_chart_png(aggregates, ["miipher2"], "miipher2"))
    with step_run("register", lineage, into_parent=True) as parent:
        parent.log_metrics({"dnsmos_ovrl": dnsmos, "wer": 0.2})
        for file in ("report.md", "headline.png"):
            parent.log_artifact(report / file)
    return lineage.parent_run_id


def test_a_reviewer_finds_parameters_metrics_dataset_and_report(tmp_path, monkeypatch):
    import mlflow
    from PIL import Image

    with MlflowServer(tmp_path / "mlflow") as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        first = log_pipeline_run(tmp_path, "run-1", lr=0.001, dnsmos=2.9)
        second = log_pipeline_run(tmp_path, "run-2", lr=0.01, dnsmos=3.2)
        experiment = mlflow.MlflowClient(server.url).get_experiment_by_name("ui-review").experiment_id

        table = render(ui_url(server.url, experiment), tmp_path)
        assert "training run-1" in table and "training run-2" in table
        assert "train@c0ffeec0ffee" in table, "the Dataset column names the data"

        compare = f"{server.url}/#/compare-runs?runs=[\"{first}\",\"{second}\"]&experiments=[\"{experiment}\"]"
        shot = tmp_path / "compare.png"
        page = render(compare, tmp_path, screenshot=shot)
        for expected in ("Parameters", "stage1.lr", "0.01", "training_preset", "Metrics", "dnsmos_ovrl", "3.2"):
            assert expected in page, expected
        assert "config." not in page, "no flattened config dump among the parameters"
        assert "report.md" in page and "headline.png" in page, "both runs' reports, side by side"
        pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
        assert pixels.std() > 10, "the comparison rendered blank"

        report = render(ui_url(server.url, experiment, second).replace("?", "/artifacts/report.md?"), tmp_path)
        assert "Miipher-2 evaluation" in report and "headline.png" in report
