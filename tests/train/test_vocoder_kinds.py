"""Every vocoder kind end to end: stages 2 and 3, export, from_pretrained, `miipher2 restore`, pyfunc."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import soundfile as sf
import yaml

from miipher2.cli import main
from miipher2.model.restorer import Restorer
from miipher2.model.vocoders import KINDS
from miipher2.registry.pyfunc import log_restorer, to_model_input
from tests.registry.conftest import mlflow_store  # noqa: F401  (a fixture)
from tests.train.test_cli import sets


@pytest.fixture(scope="module")
def stage1_dir(corpus, shared_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("kinds") / "s1"
    assert main(["train", "stage1", "--out", str(out), "--data", str(corpus), *sets(shared_cache, "stage1.steps=1")]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_trains_exports_and_restores(kind, stage1_dir, corpus, shared_cache, tmp_path, mlflow_store):  # noqa: F811
    common = ["--data", str(corpus), *sets(shared_cache, f"vocoder.kind={kind}", "vocoder.discriminator=small",
                                           "stage2.steps=2", "stage3.steps=1")]
    assert main(["train", "stage2", "--out", str(tmp_path / "s2"), *common]) == 0
    model_dir = tmp_path / "model"
    assert main(["train", "stage3", "--out", str(tmp_path / "s3"), "--stage1", str(stage1_dir),
                 "--stage2", str(tmp_path / "s2"), "--model-out", str(model_dir), *common]) == 0
    assert yaml.safe_load((model_dir / "config.yaml").read_text())["vocoder"]["kind"] == kind

    restorer = Restorer.from_pretrained(model_dir, device="cpu")
    assert restorer.vocoder.kind == kind
    wave = (0.1 * np.sin(2 * np.pi * 180 * np.arange(12000) / 16000)).astype(np.float32)
    expected, rate = restorer.restore(wave, 16000)
    assert rate == 16000 and expected.shape == wave.shape and np.isfinite(expected).all()

    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", wave, 16000, subtype="FLOAT")
    assert main(["restore", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(model_dir)]) == 0
    restored, restored_rate = sf.read(tmp_path / "out" / "a.wav", dtype="float32")
    assert restored_rate == 16000 and restored.shape == wave.shape
    np.testing.assert_allclose(restored, expected, atol=1e-3)  # the file's PCM rounding aside

    with mlflow.start_run():
        info = log_restorer(model_dir)
    output = mlflow.pyfunc.load_model(info.model_uri).predict(to_model_input([wave], [16000]))
    assert list(output["sample_rate"]) == [16000]
    np.testing.assert_allclose(np.asarray(output["audio"][0], dtype=np.float32), expected, atol=1e-5)
