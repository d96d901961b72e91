"""Dataset versions through DVC, against a real S3 protocol server (moto) started here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from miipher2.data import synth, versioning
from miipher2.data.demo import DemoConfig, build_demo, toolchain
from miipher2.data.versioning import (DatasetVersionError, DeterminismError, dataset_md5, directory_md5,
                                      ensure_demo_dataset, fetch_dataset, file_hashes, pin_demo_dataset, pull, push,
                                      recorded_toolchain, workspace_md5)

from tests.data.conftest import BUCKET

REPO_ROOT = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _dvc_repo(path: Path, remotes: dict[str, dict], default: str) -> Path:
    """A git + DVC repository with the given remotes (settings written to .dvc/config)."""
    from dvc.repo import Repo

    path.mkdir(parents=True)
    _git(path, "init", "-q")
    _git(path, "config", "user.email", "test@example.com")
    _git(path, "config", "user.name", "test")
    with Repo.init(str(path)) as repo, repo.config.edit() as config:
        config["core"]["remote"] = default
        config["core"]["analytics"] = "false"
        for name, settings in remotes.items():
            config["remote"][name] = settings
    return path


def _track_and_commit(repo_path: Path, message: str, tag: str | None = None) -> str:
    from dvc.repo import Repo

    with Repo(str(repo_path)) as repo:
        repo.add(str(repo_path / "data"))
    _git(repo_path, "add", "data.dvc", ".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
    _git(repo_path, "commit", "-q", "-m", message)
    if tag:
        _git(repo_path, "tag", tag)
    return _git(repo_path, "rev-parse", "HEAD")


def _write_dataset(root: Path, version: int) -> None:
    (root / "clean" / "en").mkdir(parents=True, exist_ok=True)
    (root / "manifests").mkdir(exist_ok=True)
    (root / "clean" / "en" / "a.wav").write_bytes(bytes(range(256)) * 40)
    (root / "manifests" / "train.csv").write_text(f"utt_id,path\nv{version},clean/en/a.wav\n")
    if version >= 2:
        (root / "clean" / "en" / "b.wav").write_bytes(b"\x01\x02" * 999)


def _forget_local_copies(repo_path: Path) -> None:
    shutil.rmtree(repo_path / ".dvc" / "cache", ignore_errors=True)
    shutil.rmtree(repo_path / "data", ignore_errors=True)


@pytest.fixture
def s3_repo(tmp_path, s3_endpoint, s3_credentials, request):
    """A repo whose default remote is a prefix of the moto bucket; v1 tagged, v2 at HEAD."""
    prefix = f"store/{request.node.name}"
    repo_path = _dvc_repo(tmp_path / "repo", {"s3": {"url": f"s3://{BUCKET}/{prefix}", "endpointurl": s3_endpoint}}, "s3")
    _write_dataset(repo_path / "data", 1)
    _track_and_commit(repo_path, "dataset v1", tag="v1")
    v1 = file_hashes(repo_path / "data")
    push(repo_path)
    _write_dataset(repo_path / "data", 2)
    _track_and_commit(repo_path, "dataset v2", tag="v2")
    v2 = file_hashes(repo_path / "data")
    push(repo_path)
    return repo_path, prefix, v1, v2


def test_push_wipe_cache_pull_restores_identical_files(s3_repo, s3_credentials):
    repo_path, prefix, _, v2 = s3_repo
    stored = s3_credentials.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["KeyCount"]
    assert stored >= 4  # three files of two versions plus the directory listings
    _forget_local_copies(repo_path)
    pull(repo_path)
    assert file_hashes(repo_path / "data") == v2
    recorded, actual = workspace_md5(repo_path)
    assert recorded == actual and recorded.endswith(".dir")


def test_an_older_revision_is_read_from_the_remote(s3_repo, tmp_path):
    import dvc.api

    repo_path, _, v1, v2 = s3_repo
    shutil.rmtree(repo_path / ".dvc" / "cache")  # the working copy holds v2; v1 exists only on S3
    info = fetch_dataset(repo_path, "v1", tmp_path / "v1")
    assert info.files == v1 == file_hashes(tmp_path / "v1")
    assert info.commit == _git(repo_path, "rev-parse", "v1^{commit}")  # the tag, resolved
    assert info.md5 == dataset_md5(repo_path, "v1") != dataset_md5(repo_path, "v2")
    assert dvc.api.read("data/manifests/train.csv", repo=str(repo_path), rev="v1") == "utt_id,path\nv1,clean/en/a.wav\n"
    # Same version again: verified in place, nothing replaced.
    assert fetch_dataset(repo_path, "v1", tmp_path / "v1").files == v1
    assert file_hashes(repo_path / "data") == v2


def test_corrupted_remote_object_is_detected(s3_repo, s3_credentials, tmp_path):
    repo_path, prefix, v1, _ = s3_repo
    shutil.rmtree(repo_path / ".dvc" / "cache")
    digest = v1["manifests/train.csv"]
    s3_credentials.put_object(Bucket=BUCKET, Key=f"{prefix}/files/md5/{digest[:2]}/{digest[2:]}", Body=b"tampered")
    with pytest.raises(DatasetVersionError, match="manifests/train.csv"):
        fetch_dataset(repo_path, "v1", tmp_path / "v1")
    assert not (tmp_path / "v1").exists()


def test_named_remote_overrides_a_broken_default(tmp_path, s3_endpoint, s3_credentials):
    repo_path = _dvc_repo(tmp_path / "repo", {
        "s3": {"url": f"s3://{BUCKET}/store/named", "endpointurl": s3_endpoint},
        "local": {"url": str(tmp_path / "missing-storage")},
    }, "local")
    _write_dataset(repo_path / "data", 1)
    _track_and_commit(repo_path, "v1")
    expected = file_hashes(repo_path / "data")
    push(repo_path, remote="s3")
    _forget_local_copies(repo_path)
    with pytest.raises(DatasetVersionError, match="pull"):
        pull(repo_path)  # the default (local) remote is empty
    assert fetch_dataset(repo_path, "HEAD", tmp_path / "out", remote="s3").files == expected


def test_unknown_revision_and_untracked_path_are_clear_errors(s3_repo):
    repo_path, *_ = s3_repo
    with pytest.raises(DatasetVersionError, match="no-such-rev"):
        dataset_md5(repo_path, "no-such-rev")
    with pytest.raises(DatasetVersionError, match="not a DVC-tracked directory"):
        dataset_md5(repo_path, "v1", path="data.dvc")


def test_committed_dvc_config_has_remotes_and_no_credentials():
    from configobj import ConfigObj  # the parser DVC itself uses for .dvc/config

    text = (REPO_ROOT / ".dvc" / "config").read_text()
    config = ConfigObj(text.splitlines())
    assert config["core"]["remote"] == "local"
    assert config['remote "local"']["url"] == "../.dvc-storage"
    assert config['remote "s3"']["url"].startswith("s3://")
    # No endpoint of a server nothing deploys: AWS by default, others set theirs with --local.
    assert "endpointurl" not in config['remote "s3"']
    keys = {key for section in config.values() for key in section}
    assert not keys & {"access_key_id", "secret_access_key", "session_token", "password", "credentialpath"}
    assert "/config.local" in (REPO_ROOT / ".dvc" / ".gitignore").read_text().split()


def test_repository_pins_a_dataset_with_data_dvc_and_the_tools_it_was_built_with():
    outs = yaml.safe_load((REPO_ROOT / "data.dvc").read_text())["outs"]
    assert [out["path"] for out in outs] == ["data"] and outs[0]["md5"].endswith(".dir")
    assert recorded_toolchain(REPO_ROOT).keys() == toolchain().keys()  # pinned with `miipher2 data pin-demo`


def test_ensure_demo_dataset_keeps_pulls_or_rebuilds(tmp_path, monkeypatch):
    config = DemoConfig.tiny(languages=("en",), librivox_dir=None, rooms=1)
    storage = tmp_path / "storage"
    repo_path = _dvc_repo(tmp_path / "repo", {"local": {"url": str(storage)}}, "local")
    build_demo(repo_path / "data", config)
    _track_and_commit(repo_path, "demo corpus")
    pinned = file_hashes(repo_path / "data")

    assert ensure_demo_dataset(repo_path, config=config) == "up to date"
    assert directory_md5(repo_path / "data") == workspace_md5(repo_path)[0]

    _forget_local_copies(repo_path)  # a fresh clone: no data, no cache, nothing on the remote
    assert ensure_demo_dataset(repo_path, config=config) == "built and pushed"
    assert file_hashes(repo_path / "data") == pinned and any(storage.rglob("*"))

    _forget_local_copies(repo_path)  # another fresh clone sharing that remote
    calls = []
    monkeypatch.setattr("miipher2.data.demo.build_demo", lambda *a, **k: calls.append(a))
    assert ensure_demo_dataset(repo_path, config=config) == "pulled"
    assert calls == [] and file_hashes(repo_path / "data") == pinned


def test_pin_records_the_build_and_its_toolchain_for_the_next_machine(tmp_path):
    config = DemoConfig.tiny(languages=("en",), librivox_dir=None, rooms=1)
    storage = tmp_path / "storage"
    repo_path = _dvc_repo(tmp_path / "repo", {"local": {"url": str(storage)}}, "local")
    build_demo(repo_path / "data", config)
    _track_and_commit(repo_path, "an older corpus")
    (repo_path / "data.dvc").write_text((repo_path / "data.dvc").read_text() + "meta:\n  owner: data team\n")

    md5 = pin_demo_dataset(repo_path, config=DemoConfig.tiny(languages=("en",), librivox_dir=None, rooms=1, seed=3))
    assert md5 == workspace_md5(repo_path)[0] == directory_md5(repo_path / "data")
    assert recorded_toolchain(repo_path) == toolchain()
    assert yaml.safe_load((repo_path / "data.dvc").read_text())["meta"]["owner"] == "data team"  # other meta kept
    _forget_local_copies(repo_path)
    assert ensure_demo_dataset(repo_path, config=config) == "pulled"  # pushed by the pin
    assert directory_md5(repo_path / "data") == md5


def test_ensure_demo_dataset_explains_a_rebuild_that_differs_from_data_dvc(tmp_path):
    storage = tmp_path / "storage"
    repo_path = _dvc_repo(tmp_path / "repo", {"local": {"url": str(storage)}}, "local")
    pinned = pin_demo_dataset(repo_path, config=DemoConfig.tiny(languages=("en",), librivox_dir=None, rooms=1))
    shutil.rmtree(storage)
    _forget_local_copies(repo_path)  # a fresh clone whose remote lacks the corpus
    other_seed = DemoConfig.tiny(languages=("en",), librivox_dir=None, rooms=1, seed=5)  # stands in for other bytes

    with pytest.raises(DeterminismError) as same_tools:
        ensure_demo_dataset(repo_path, config=other_seed)
    message = str(same_tools.value)
    assert f"DVC hash {directory_md5(repo_path / 'data')}, now in data/" in message and f"pins ({pinned})" in message
    assert "lost determinism" in message and "miipher2 data pin-demo" in message
    assert not storage.exists() or not any(storage.rglob("*.dir"))  # nothing wrong was pushed

    text = (repo_path / "data.dvc").read_text().replace(f"espeak-ng: '{synth.espeak_version()}'", "espeak-ng: '1.49'")
    (repo_path / "data.dvc").write_text(text)
    with pytest.raises(DeterminismError, match=rf"espeak-ng {synth.espeak_version()} here, 1.49 pinned") as other_tools:
        ensure_demo_dataset(repo_path, config=other_seed)
    assert "make setup" in str(other_tools.value) and "lost determinism" not in str(other_tools.value)


def test_file_hashes_are_md5_per_relative_path(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x.bin").write_bytes(b"abc")
    assert file_hashes(tmp_path / "d") == {"sub/x.bin": "900150983cd24fb0d6963f7d28e17f72"}
    assert versioning.DATASET_PATH == "data"


def test_cli_prints_a_revision_hash_and_fetches_it(s3_repo, tmp_path, capsys):
    import json

    from miipher2.cli import main as cli_main

    repo_path, _, v1, _ = s3_repo
    assert cli_main(["data", "hashes", "--repo", str(repo_path), "--rev", "v1"]) == 0
    assert json.loads(capsys.readouterr().out)["md5"] == dataset_md5(repo_path, "v1")
    assert cli_main(["data", "hashes", "--repo", str(repo_path), "--rev", "v1", "--dest", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == v1
    assert cli_main(["data", "hashes", "--repo", str(repo_path), "--rev", "nope"]) == 1
    assert "nope" in capsys.readouterr().err


def test_a_dataset_version_as_mlflow_sees_it_names_and_refetches_its_bytes(s3_repo, tmp_path):
    from miipher2.data.mlflow_dataset import DvcDatasetSource, dvc_dataset

    repo_path, _, v1, _ = s3_repo
    info = fetch_dataset(repo_path, "v1", tmp_path / "v1")
    dataset = dvc_dataset(info.path, "train", repo=str(repo_path), revision="v1", commit=info.commit, md5=info.md5)
    entity = dataset._to_mlflow_entity()
    assert entity.name == f"train@{info.commit[:12]}" and entity.digest == info.md5 and entity.source_type == "dvc"
    assert len(entity.digest) <= 36  # MLflow's digest column
    source = DvcDatasetSource.from_json(entity.source)
    assert (source.revision, source.commit, source.path) == ("v1", info.commit, "data")
    shutil.rmtree(repo_path / ".dvc" / "cache")
    assert file_hashes(source.load(str(tmp_path / "again"))) == v1
