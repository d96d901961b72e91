"""`miipher2 restore`: folders, manifests, any format; bad files reported, good ones restored."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from miipher2.cli import main
from miipher2.model.restorer import Restorer
from tests.model.conftest import TINY_FEATURE_LAYER


@pytest.fixture(scope="module")
def model_dir(tiny_backbone, tmp_path_factory):
    torch.manual_seed(0)
    restorer = Restorer.build(str(tiny_backbone("mhubert-147")), "mhubert-147", feature_layer=TINY_FEATURE_LAYER,
                              adapter_dim=16, sample_rate=24000, vocoder_size="tiny")
    directory = tmp_path_factory.mktemp("restore-cli") / "model"
    restorer.save_pretrained(directory)
    return directory


def test_folder_with_good_corrupt_and_stereo_flac(model_dir, tmp_path, speechlike, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    sf.write(inputs / "good.wav", speechlike(1.0), 16000)
    sf.write(inputs / "sub" / "stereo.flac", np.stack([speechlike(1.5, 44100)] * 2, axis=1), 44100)
    (inputs / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk-not-audio")
    (inputs / "notes.txt").write_text("not audio, not an input")

    code = main(["restore", str(inputs), "-o", str(tmp_path / "out"), "--model", str(model_dir), "--batch-size", "2"])

    assert code == 1
    err = capsys.readouterr().err
    assert "corrupt.wav" in err and "cannot decode audio" in err
    assert "good.wav" not in err and "stereo.flac" not in err
    good, rate = sf.read(tmp_path / "out" / "good.wav")
    stereo, stereo_rate = sf.read(tmp_path / "out" / "sub" / "stereo.wav")
    assert rate == stereo_rate == 24000
    assert good.shape == (24000,) and stereo.shape == (36000,)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["good.wav", "stereo.wav", "sub"]  # no temp files


def test_manifest_input_mirrors_dataset_paths_and_refuses_escapes(model_dir, tmp_path, speechlike, capsys):
    root = tmp_path / "data"
    (root / "clean" / "en").mkdir(parents=True)
    (root / "manifests").mkdir()
    sf.write(root / "clean" / "en" / "a.wav", speechlike(0.5), 16000)
    (root / "manifests" / "test.csv").write_text("utt_id,path\na,clean/en/a.wav\nb,../../etc/passwd\n")

    code = main(["restore", str(root / "manifests" / "test.csv"), "-o", str(tmp_path / "out"), "--model", str(model_dir), "--format", "flac"])

    assert code == 1
    assert "test.csv:3" in capsys.readouterr().err
    assert sf.info(tmp_path / "out" / "clean" / "en" / "a.flac").samplerate == 24000


def test_all_good_exits_zero_and_missing_model_exits_two(model_dir, tmp_path, speechlike, capsys, monkeypatch):
    sf.write(tmp_path / "x.ogg", speechlike(0.5), 22050, format="OGG")
    assert main(["restore", str(tmp_path / "x.ogg"), "-o", str(tmp_path / "out"), "--model", str(model_dir)]) == 0
    assert (tmp_path / "out" / "x.wav").is_file()
    monkeypatch.delenv("MIIPHER2_MODEL", raising=False)
    assert main(["restore", str(tmp_path / "x.ogg"), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "nope")]) == 2
    assert "not a Miipher-2 model directory" in capsys.readouterr().err
