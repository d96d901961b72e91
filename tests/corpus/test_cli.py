"""`miipher2 restore-corpus`: whole runs, per-shard processes, S3 input, exit codes."""

import json

import pandas as pd
import pytest

from miipher2.cli import main
from tests.corpus.conftest import build_corpus
from tests.servers import moto_s3_endpoint

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def test_shard_by_shard_processes_merge_when_the_last_finishes(tmp_path, model_dir, capsys):
    manifest = build_corpus(tmp_path / "data")
    out = tmp_path / "out"
    common = [manifest, "--model", str(model_dir), "-o", str(out), "--shards", "2", "--device", "cpu", "--no-score"]

    assert main(["restore-corpus", *common, "--shard-index", "1"]) == 0
    assert "not merged yet: shard 0 has not finished" in capsys.readouterr().out
    assert not (out / "summary.json").exists()
    assert main(["restore-corpus", *common, "--shard-index", "0"]) == 0
    printed = capsys.readouterr().out
    assert "restored 5 of 5 file(s) (5 now, 0 already done)" in printed
    assert len(pd.read_csv(out / "manifests" / "test.csv")) == 5

    assert main(["restore-corpus", *common]) == 0  # a full rerun: nothing left to do
    assert "(0 now, 5 already done)" in capsys.readouterr().out


def test_failures_exit_one_and_unusable_input_exits_two(tmp_path, model_dir, capsys):
    manifest = build_corpus(tmp_path / "data", extra_rows=[{"utt_id": "x", "path": "clean/en/spk/missing.wav"}])
    assert main(["restore-corpus", manifest, "--model", str(model_dir), "-o", str(tmp_path / "out"), "--no-score"]) == 1
    assert "missing.wav: no such file" in capsys.readouterr().err
    assert main(["restore-corpus", str(tmp_path / "none.csv"), "--model", str(model_dir), "-o", str(tmp_path / "o")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err
    assert main(["restore-corpus", manifest, "--model", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "not a Miipher-2 model directory" in capsys.readouterr().err
    assert main(["restore-corpus", manifest, "--model", str(model_dir), "-o", str(tmp_path / "o"), "--shards", "0"]) == 2


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server; boto3 finds it only through the environment, as pods do."""
    import boto3

    with moto_s3_endpoint() as endpoint:
        for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="corpus")
        yield client


def test_manifest_and_audio_on_s3(tmp_path, model_dir, s3, capsys):
    manifest = build_corpus(tmp_path / "data")
    for path in (tmp_path / "data").rglob("*.*"):
        s3.upload_file(str(path), "corpus", f"sets/v1/{path.relative_to(tmp_path / 'data').as_posix()}")
    frame = pd.read_csv(manifest)
    frame.loc[len(frame)] = {**frame.iloc[0].to_dict(), "utt_id": "ghost", "path": "clean/en/spk/ghost.wav"}
    s3.put_object(Bucket="corpus", Key="sets/v1/manifests/test.csv", Body=frame.to_csv(index=False).encode())

    out = tmp_path / "out"
    code = main(["restore-corpus", "s3://corpus/sets/v1/manifests/test.csv", "--model", str(model_dir), "-o", str(out),
                 "--no-score", "--shards", "2"])
    assert code == 1
    assert "s3://corpus/sets/v1/clean/en/spk/ghost.wav: no such object" in capsys.readouterr().err
    restored = pd.read_csv(out / "manifests" / "test.csv")
    assert len(restored) == 5
    assert restored["source_path"].iloc[0] == "s3://corpus/sets/v1/clean/en/spk/a.wav"
    plan = json.loads((out / "state" / "plan.json").read_text())
    assert plan["audio_root"] == "s3://corpus/sets/v1"
    assert "testing-secret" not in (out / "state" / "plan.json").read_text()
    # S3 objects are hashed too: a rerun restores nothing
    assert main(["restore-corpus", "s3://corpus/sets/v1/manifests/test.csv", "--model", str(model_dir), "-o", str(out),
                 "--no-score", "--shards", "2"]) == 1
    assert "(0 now, 5 already done)" in capsys.readouterr().out


def test_pipeline_submit_passes_parameters_and_keeps_the_token_out_of_them(monkeypatch, capsys):
    import kfp

    from tests.pipelines.test_cli import FakeClient

    monkeypatch.setattr(kfp, "Client", FakeClient)
    monkeypatch.setenv("KFP_TOKEN", "secret-token-9")
    FakeClient.created.clear()
    code = main(["restoration-pipeline", "submit", "--host", "https://kfp.example.com", "--manifest",
                 "s3://corpora/x/manifests/train.csv", "--shards", "16", "--namespace", "miipher2",
                 "--service-account", "miipher2-pipeline"])
    assert code == 0 and "submitted run run-123" in capsys.readouterr().out
    [created] = FakeClient.created
    assert (created["host"], created["token"]) == ("https://kfp.example.com", "secret-token-9")
    assert created["pipeline"] == "miipher2-restoration" and created["caching"] is False
    assert (created["namespace"], created["service_account"]) == ("miipher2", "miipher2-pipeline")
    arguments = created["arguments"]
    assert arguments["manifest"] == "s3://corpora/x/manifests/train.csv" and arguments["shards"] == 16
    assert arguments["model"] == "models:/miipher2@champion"
    assert "output_dir" not in arguments  # the default: a folder of its own on the workspace
    assert "secret-token-9" not in str(arguments)


def test_restore_corpus_refuses_an_unfinished_plan_unless_told(tmp_path, model_dir, capsys):
    manifest = build_corpus(tmp_path / "data")
    from miipher2.corpus import plan_corpus

    plan_corpus(manifest, str(model_dir), tmp_path / "out", 3)  # another run's, never restored
    args = ["restore-corpus", manifest, "--model", str(model_dir), "-o", str(tmp_path / "out"), "--no-score"]
    assert main(args) == 2
    assert "not finished" in capsys.readouterr().err
    assert main(args + ["--replace-plan"]) == 0
