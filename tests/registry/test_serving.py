"""The registered model where it is served: requirements that install from PyPI, and the REST server.

- The logged requirements carry no local version labels and resolve from PyPI (pip's dry run,
  isolated from this machine's local wheel folders), and they cover what a prediction imports.
- `mlflow models serve -m models:/NAME@champion` (a real process, resolving the alias through a
  real tracking server) restores a WAV file posted to /invocations, exactly as the model does
  in process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest

from miipher2.audio import read_audio, write_audio
from miipher2.registry import CHAMPION, register_restorer, to_model_input
from miipher2.registry.pyfunc import _REQUIREMENTS
from tests.servers import MlflowServer, free_port


@pytest.fixture(scope="module")
def registered(mlflow_store, models):
    version = register_restorer(models["good"], "served")
    return f"models:/served/{version.version}"


def requirement_pins(model_uri: str) -> dict[str, str]:
    lines = Path(mlflow.pyfunc.get_model_dependencies(model_uri)).read_text().splitlines()
    pins = {}
    for line in (line.strip() for line in lines):
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    return pins


@pytest.mark.network
def test_requirements_are_public_releases_that_resolve_from_pypi(registered, tmp_path):
    pins = requirement_pins(registered)
    assert {name.lower() for name in _REQUIREMENTS} <= set(pins)
    assert all(version and "+" not in version for version in pins.values()), pins  # no local labels (+cpu)

    # --isolated: this machine's pip config adds local wheel folders (torch 2.13.0+cpu lives there);
    # the check is that the public index alone has every pin.
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("".join(f"{name}=={version}\n" for name, version in pins.items()))
    report = tmp_path / "report.json"
    pip = subprocess.run([sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--no-deps",
                          "--ignore-installed", "--quiet", "--report", str(report), "-r", str(requirements)],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower(): item for item in json.loads(report.read_text())["install"]}
    assert {name: item["metadata"]["version"] for name, item in resolved.items()} == pins
    for name, item in resolved.items():
        assert item["download_info"]["url"].startswith("https://"), (name, item["download_info"]["url"])


# Loads a model, predicts one recording, prints the distributions of every module now imported.
# Modules named in argv[2] are made unimportable first (as if their distribution were absent).
PREDICT_AND_LIST_IMPORTS = textwrap.dedent("""
    import json, sys
    for name in json.loads(sys.argv[2]):
        sys.modules[name] = None  # `import name` now raises ImportError
    import numpy as np
    import mlflow
    from importlib import metadata
    from miipher2.registry import to_model_input
    model = mlflow.pyfunc.load_model(sys.argv[1])
    wave = (0.1 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)).astype(np.float32)
    model.predict(to_model_input([wave], [16000]))
    owners = metadata.packages_distributions()
    modules = {name.split(".")[0] for name, module in list(sys.modules.items()) if module is not None}
    print(json.dumps(sorted({d for m in modules for d in owners.get(m, [])})))
""")

# A model that returns its input: what loading and predicting through MLflow imports by itself
# (MLflow imports optional integrations when they happen to be installed).
ECHO_MODEL = textwrap.dedent("""
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    mlflow.models.set_model(Echo())
""")


def _imported_by_prediction(model_uri: str, absent: set[str] = frozenset()) -> set[str]:
    """Distributions imported by loading `model_uri` and predicting, with the `absent` ones made unimportable."""
    from importlib import metadata

    modules = sorted(m for m, owners in metadata.packages_distributions().items()
                     if {_normal(o) for o in owners} & absent)
    out = subprocess.run([sys.executable, "-c", PREDICT_AND_LIST_IMPORTS, model_uri, json.dumps(modules)],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()})
    assert out.returncode == 0, f"prediction failed without {sorted(absent)}:\n{out.stderr[-3000:]}"
    return {_normal(name) for name in json.loads(out.stdout.splitlines()[-1])}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _closure(names: set[str]) -> set[str]:
    """`names` and everything they require (unconditional requirements, this platform's markers)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen, todo = set(), [_normal(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_normal(requirement.name))
    return seen


@pytest.mark.slow  # three processes load a model
def test_a_prediction_imports_nothing_the_requirements_do_not_install(registered, tmp_path):
    (tmp_path / "echo.py").write_text(ECHO_MODEL)
    with mlflow.start_run():
        echo = mlflow.pyfunc.log_model(name="echo", python_model=str(tmp_path / "echo.py"))
    mlflows_own = _imported_by_prediction(echo.model_uri)
    ours = _imported_by_prediction(registered)
    installed = _closure(set(requirement_pins(registered)) | {"mlflow"})
    assert {"torch", "transformers", "safetensors", "soundfile"} <= ours & installed  # the check sees our imports
    # Anything else was imported only because this environment has it (optional imports such as
    # transformers' `soxr`): the prediction must work, and import nothing new, without it.
    extra = ours - mlflows_own - installed - {"miipher2"}
    if extra:
        without = _imported_by_prediction(registered, absent=extra)
        assert without - mlflows_own - installed - {"miipher2"} == set()


@pytest.mark.slow
def test_mlflow_models_serve_restores_a_posted_wav(models, tmp_path):
    with MlflowServer(tmp_path / "tracking") as tracking:
        version = register_restorer(models["good"], "served-rest", tracking_uri=tracking.url,
                                    experiment="serving")
        client = mlflow.MlflowClient(tracking.url)
        client.set_registered_model_alias("served-rest", CHAMPION, version.version)

        wav = tmp_path / "noisy.wav"
        t = np.arange(12000) / 16000
        write_audio(wav, (0.2 * np.sin(2 * np.pi * 180 * t) + 0.02 * np.random.default_rng(0).standard_normal(t.size))
                    .astype(np.float32), 16000)
        wave, rate = read_audio(wav)
        body = {"dataframe_split": json.loads(to_model_input([wave], [rate]).to_json(orient="split", index=False))}

        port = free_port()
        log = tmp_path / "serve.log"
        # --env-manager local: the scoring server (uvicorn) runs from this environment, found on PATH.
        bin_dir = str(Path(sys.executable).parent)
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.url, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        mlflow_cli = str(Path(bin_dir) / "mlflow")
        with open(log, "wb") as out:
            serve = subprocess.Popen([mlflow_cli, "models", "serve", "-m", f"models:/served-rest@{CHAMPION}",
                                      "--env-manager", "local", "--host", "127.0.0.1", "-p", str(port)],
                                     stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                     start_new_session=True)
        try:
            _wait_for(f"http://127.0.0.1:{port}/ping", serve, log)
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as response:
                predictions = json.loads(response.read())["predictions"]
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=60)

    (row,) = predictions
    restored = np.asarray(row["audio"], dtype=np.float32)
    assert row["sample_rate"] == 24000 and restored.size == wave.size * 24000 // 16000
    assert np.abs(restored).max() > 0.0, "the vocoder produced audio, not silence"
    expected = _restore_in_process(models["good"], wave, rate)
    np.testing.assert_allclose(restored, expected, atol=1e-4)


def _restore_in_process(model_dir, wave, rate):
    from miipher2.model.restorer import Restorer

    restored, out_rate = Restorer.from_pretrained(model_dir).restore(wave, rate)
    assert out_rate == 24000
    return restored


def _wait_for(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"mlflow models serve not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")
