"""`miipher2 evaluate` and `miipher2 register` from the command line."""

from __future__ import annotations

import json

from miipher2.cli import main


def test_evaluate_command_writes_tables_and_report(eval_root, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "evaluation"
    code = main(["evaluate", "--data", str(eval_root), "--model", str(tiny_model_dir), "--out", str(out),
                 "--no-baseline", "--metrics", "intrusive", "--workers", "1", "--max-utterances", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| **miipher2** |" in printed and f"report: {out / 'report.html'}" in printed
    headline = json.loads((out / "headline.json").read_text())
    assert headline["system"] == "miipher2"
    assert set(headline["metrics"]) == {"pesq", "estoi", "si_sdr", "lsd", "lsd_8_12k", "mcd"}
    assert headline["metrics"]["lsd_8_12k"] is None  # 16 kHz references: no 8-12 kHz band to measure
    assert (out / "utterances.csv").read_text().count("\n") == 1 + 2 * 3


def test_bad_input_exits_2_with_a_message(eval_root, tmp_path, capsys, monkeypatch):
    assert main(["evaluate", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "1"]) == 2
    assert "no degraded manifest for split 'test'" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(eval_root), "--out", str(tmp_path / "o"), "--metrics", "vibes"]) == 2
    assert "unknown metric groups" in capsys.readouterr().err
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["register", "--model-dir", str(tmp_path), "--name", "m"]) == 2
    assert "no MLflow tracking URI" in capsys.readouterr().err
    assert main(["promote", "--model", "m", "--data", str(eval_root), "--rule", "dnsmos_ovrl:0.05,wer"]) == 2
    assert "expected METRIC:NUMBER, got 'wer'" in capsys.readouterr().err
    assert main(["promote", "--model", "m", "--data", str(eval_root), "--metrics", "loudness:1"]) == 2
    assert "unknown metric 'loudness'" in capsys.readouterr().err
