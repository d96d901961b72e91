"""`miipher2 promote` as CI runs it: one exit code per outcome, the Markdown report on stdout and on disk.

The registry is a real sqlite MLflow store; the two versions' evaluation is replaced by the
synthetic per-utterance tables of test_gate.py (restoring and scoring real models is covered
by test_registry.py), so each outcome is produced on purpose.
"""

from __future__ import annotations

import pandas as pd
import pytest

import miipher2.registry.promotion as promotion
from miipher2.cli import main
from miipher2.cli.registry import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_REFUSED
from miipher2.registry import CHALLENGER, CHAMPION
from tests.registry.test_gate import tables
from tests.servers import free_port

GATE = ["--rule", "dnsmos_ovrl:0.05,wer:0.02,speaker_similarity:0.02"]


@pytest.fixture
def outcome(monkeypatch):
    """Set what the next evaluation 'measures': a challenger `better`, `worse`, or one that crashes."""
    state = {}

    def evaluator(*_args):
        def evaluate(systems):
            if state["kind"] == "crash":
                raise RuntimeError("scoring worker died")
            gain = 0.3 if state["kind"] == "better" else -0.3
            challenger, champion = tables(ovrl_gain=gain, wer_gain=0.05 if gain > 0 else -0.1)
            return pd.concat([challenger.assign(system=CHALLENGER), champion.assign(system=CHAMPION)])
        return evaluate

    monkeypatch.setattr(promotion, "_registry_evaluator", evaluator)
    return lambda kind: state.update(kind=kind)


def new_version(client, name):
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, source="file:///nonexistent/model")  # never loaded: evaluation is replaced
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return str(version.version)


def promote(name, out, *extra):
    return main(["promote", "--model", name, "--data", "unused", "--out", str(out), *GATE, *extra])


def test_each_outcome_has_its_exit_code_and_a_markdown_report(mlflow_store, outcome, tmp_path, capsys):
    import mlflow

    client = mlflow.MlflowClient()
    client.create_registered_model("cli-gate")
    first = new_version(client, "cli-gate")
    client.set_registered_model_alias("cli-gate", CHAMPION, first)
    second = new_version(client, "cli-gate")

    outcome("better")
    assert promote("cli-gate", tmp_path / "promoted") == EXIT_OK
    report = capsys.readouterr().out
    assert report.startswith("## Promotion gate for `cli-gate`: PROMOTED")
    assert "| metric | n | challenger | champion | gain | 95% CI of gain | margin | verdict |" in report
    assert "| dnsmos_ovrl | 40 |" in report and "**better**" in report
    assert (tmp_path / "promoted" / "promotion.md").read_text().strip() == report.strip()
    assert str(client.get_model_version_by_alias("cli-gate", CHAMPION).version) == second

    assert promote("cli-gate", tmp_path / "again") == EXIT_OK, "re-running after a promotion is a no-op"
    assert "NO-OP" in capsys.readouterr().out

    third = new_version(client, "cli-gate")
    outcome("worse")
    assert promote("cli-gate", tmp_path / "refused") == EXIT_REFUSED
    assert "REJECTED" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias("cli-gate", CHAMPION).version) == second
    assert client.get_model_version("cli-gate", third).tags["promotion.decision"] == "rejected"

    outcome("crash")
    assert promote("cli-gate", tmp_path / "crashed") == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "internal error: the gate could not decide (RuntimeError: scoring worker died)" in err
    assert "promotion.decision" in client.get_model_version("cli-gate", third).tags  # the earlier refusal stays


def test_bad_input_exits_2_with_the_reason(mlflow_store, outcome, tmp_path, capsys):
    assert promote("nobody", tmp_path) == EXIT_BAD_INPUT
    assert "registered model 'nobody' does not exist" in capsys.readouterr().err
    assert main(["promote", "--model", "cli-gate", "--rule", "wer", "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert "expected METRIC:NUMBER, got 'wer'" in capsys.readouterr().err


def test_no_tracking_uri_is_bad_input_but_an_unreachable_server_is_internal(outcome, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert promote("m", tmp_path) == EXIT_BAD_INPUT
    assert "no MLflow tracking URI" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert promote("m", tmp_path, "--tracking-uri", f"http://127.0.0.1:{free_port()}") == EXIT_INTERNAL
    assert "internal error" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["promote", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for line in ("0  promoted, or nothing to do", "1  internal error", "2  bad input", "3  refused"):
        assert line in text
