"""The restorer as an MLflow pyfunc model: `mlflow.pyfunc.load_model(uri).predict(frame)`.

Input: a pandas DataFrame, one row per recording, columns
    audio        list of float samples in [-1, 1] (mono; the signature says double: JSON floats)
    sample_rate  int, the rate of `audio` (any rate: the restorer resamples)
Output: a DataFrame with the same columns: the restored audio and its rate (24 kHz).

Artifact: `restorer/`, exactly the model directory (which bundles the frozen encoder when it came
from a local directory rather than a hub id), so a `models:/` URI loads on any machine. The miipher2 code itself
ships with the model too (`code_paths`): the model runs with the code it was trained with, and
the model object is built from source at load time (`pyfunc_entry.py`), never unpickled.

We log a pyfunc, not `mlflow.pytorch`: MLflow 3 would torch.export the model, which neither our
chunked numpy `restore` nor arbitrary-length audio fit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

try:  # the package must import without mlflow for `miipher2 --help`; mlflow is a dependency anyway
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object

RESTORER_ARTIFACT = "restorer"
EXAMPLE_RATE = 16000
# What serving imports besides miipher2's own (shipped) code (tests/registry/test_serving.py
# checks that a prediction imports nothing else). torchaudio only because speechbrain imports it;
# see `model_requirements` for why 2.11 goes with torch 2.13. Not encodec: vocos imports it but
# we never use it (miipher2/model/vocoders/_encodec.py); pip still installs it as vocos' dependency.
_REQUIREMENTS = ("torch", "transformers", "speechbrain", "vocos", "einops", "torchaudio", "safetensors",
                 "numpy", "pandas", "scipy", "soundfile", "pyyaml")


class RegistryError(RuntimeError):
    """A registered model, version or alias that cannot be used; the message says which and why."""


class RestorerPyfunc(PythonModel):
    """Loads the Restorer from the model's artifacts once; `predict` restores every row."""

    def load_context(self, context):
        from miipher2.model.restorer import Restorer

        self.restorer = Restorer.from_pretrained(context.artifacts[RESTORER_ARTIFACT],
                                                 device=os.environ.get("MIIPHER2_DEVICE") or None)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        missing = {"audio", "sample_rate"} - set(frame.columns)
        if missing:
            raise ValueError(f"model input needs columns 'audio' (list of floats) and 'sample_rate'; missing {sorted(missing)}")
        waves = [np.asarray(a, dtype=np.float32).reshape(-1) for a in frame["audio"]]
        rates = [int(r) for r in frame["sample_rate"]]
        restored = self.restorer.restore_batch(waves, rates)
        return pd.DataFrame({"audio": [w.astype(np.float32).tolist() for w, _ in restored],
                             "sample_rate": [int(r) for _, r in restored]})


def to_model_input(waves: list[np.ndarray], rates: list[int]) -> pd.DataFrame:
    """The DataFrame `predict` takes, from numpy waves."""
    return pd.DataFrame({"audio": [np.asarray(w, dtype=np.float32).reshape(-1).tolist() for w in waves],
                         "sample_rate": [int(r) for r in rates]})


def model_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    columns = Schema([ColSpec(Array(DataType.double), "audio"), ColSpec(DataType.long, "sample_rate")])
    return ModelSignature(inputs=columns, outputs=columns)


def input_example() -> pd.DataFrame:
    """A quarter second of a harmonic tone: small enough to store as JSON with the model."""
    t = np.arange(EXAMPLE_RATE // 4) / EXAMPLE_RATE
    wave = 0.1 * sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 6))
    return to_model_input([np.round(wave, 4)], [EXAMPLE_RATE])


def log_restorer(model_dir: str | Path, *, name: str = "restorer", registered_model_name: str | None = None):
    """Log the model directory as a pyfunc model in the active MLflow run; returns ModelInfo."""
    import mlflow

    import miipher2

    model_dir = Path(model_dir)
    if not (model_dir / "config.yaml").is_file():
        raise RegistryError(f"{model_dir}: not a Miipher-2 model directory (no config.yaml)")
    artifacts = {RESTORER_ARTIFACT: str(model_dir)}
    with tempfile.TemporaryDirectory() as staging:
        # Only the library's source: no caches, no stray files.
        code = Path(staging) / "miipher2"
        shutil.copytree(Path(miipher2.__file__).parent, code,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),  # models from code: no pickle
            artifacts=artifacts,
            code_paths=[str(code)],
            signature=model_signature(),
            input_example=input_example(),
            pip_requirements=model_requirements(),
            registered_model_name=registered_model_name,
        )


def load_registered_restorer(uri: str):
    """The `Restorer` inside a logged model (`models:/NAME@alias`, `models:/NAME/3`, `runs:/...`)."""
    return load_pyfunc(uri).unwrap_python_model().restorer


def load_pyfunc(uri: str):
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.pyfunc.load_model(uri)
    except MlflowException as err:
        from miipher2.registry.versions import server_failed

        if server_failed(err):
            raise
        raise RegistryError(f"cannot load {uri}: {err.message}") from err
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # artifacts missing or weights unusable
        raise RegistryError(f"cannot load {uri}: the logged model is broken ({type(err).__name__}: {err})") from err


def model_requirements() -> list[str]:
    """The serving environment: this environment's releases of what serving imports, as PyPI names them.

    Exact pins, so a served model runs what it was tested with, but public releases only: a local
    version label (`torch 2.13.0+cpu`, PyPI-less builds from PyTorch's CPU index) would make
    `mlflow models serve` and virtualenv-based loads fail to install anything. The public release
    is the same code; pip picks the build that fits the serving machine (from PyPI: CUDA).

    torchaudio: speechbrain imports it, and its newest release, 2.11.0, declares no torch
    requirement, so it installs beside torch 2.13. Its compiled extension is built against torch's
    stable ABI and links torch's CUDA libraries: it loads beside PyPI's (CUDA) torch, but not beside
    a CPU-only torch, where importing torchaudio fails until `torchaudio/lib/*.so` is removed (what
    scripts/setup.sh and the pipeline image do). Restoring needs none of that extension: speechbrain
    uses only torchaudio's Python parts, and audio files go through soundfile.
    """
    from packaging.version import Version

    pins = []
    for package in _REQUIREMENTS:
        try:
            pins.append(f"{package}=={Version(metadata.version(package)).public}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins
