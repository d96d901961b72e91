"""What a pipeline pod does with a dataset: a fresh clone of a private repository over HTTPS-like
smart HTTP with a token from the environment, data from the platform's S3 remote (moto), no
local remote anywhere; and a verified copy that is not hashed again."""

from __future__ import annotations

import shutil

import pytest

from miipher2.data import versioning
from miipher2.data.git_credentials import TOKEN_ENV, USERNAME_ENV
from miipher2.data.versioning import (PLATFORM_REMOTE_URL_ENV, DatasetVersionError, file_hashes, materialise_dataset,
                                      push)
from tests.data.conftest import BUCKET
from tests.data.test_versioning import _dvc_repo, _track_and_commit, _write_dataset
from tests.servers import private_git_server

TOKEN = "glpat-canary-7f3a9c"


@pytest.fixture
def private_repo(tmp_path, s3_endpoint, s3_credentials):
    """A repository whose committed default remote is a directory beside a checkout (like ours),
    with the data pushed to the platform bucket only; served over HTTP to token holders."""
    repo = _dvc_repo(tmp_path / "origin", {"local": {"url": "../.dvc-storage"},
                                           "s3": {"url": f"s3://{BUCKET}/platform"}}, "local")
    _write_dataset(repo / "data", 2)
    _track_and_commit(repo, "dataset")
    expected = file_hashes(repo / "data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", s3_endpoint)  # the Secret's optional key, for push too
        push(repo, remote="s3")
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")
    with private_git_server(repo, "ci-bot", TOKEN) as url:
        yield url, expected


@pytest.fixture
def pod_environment(monkeypatch, s3_endpoint):
    """The variables a pipeline pod gets from ConfigMap miipher2-settings and Secrets miipher2-s3/-git."""
    monkeypatch.setenv(PLATFORM_REMOTE_URL_ENV, f"s3://{BUCKET}/platform")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv(USERNAME_ENV, "ci-bot")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    for name in ("GIT_ASKPASS", "SSH_ASKPASS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")


def test_a_pod_fetches_a_private_repositorys_dataset_from_the_platform_remote(private_repo, pod_environment, tmp_path):
    url, expected = private_repo
    info = materialise_dataset(url, "HEAD", tmp_path / "workspace" / "datasets")
    assert info.files == expected == file_hashes(info.path)
    assert info.path == tmp_path / "workspace" / "datasets" / info.md5


def test_without_the_token_the_clone_is_refused_and_no_secret_is_printed(private_repo, pod_environment, monkeypatch,
                                                                        tmp_path):
    url, _ = private_repo
    monkeypatch.setenv(TOKEN_ENV, "wrong-token")
    with pytest.raises(DatasetVersionError) as failure:
        materialise_dataset(url, "HEAD", tmp_path / "datasets")
    assert "wrong-token" not in str(failure.value) and TOKEN not in str(failure.value)


def test_without_the_platform_remote_the_committed_default_is_used(private_repo, pod_environment, monkeypatch, tmp_path):
    url, _ = private_repo
    monkeypatch.delenv(PLATFORM_REMOTE_URL_ENV)
    with pytest.raises(DatasetVersionError, match="remote"):  # ../.dvc-storage does not exist in a fresh clone
        materialise_dataset(url, "HEAD", tmp_path / "datasets")


def test_a_verified_copy_is_trusted_and_a_changed_file_is_caught(private_repo, pod_environment, monkeypatch, tmp_path):
    url, expected = private_repo
    datasets = tmp_path / "datasets"
    info = materialise_dataset(url, "HEAD", datasets)
    hashed = []
    real_md5 = versioning._md5
    monkeypatch.setattr(versioning, "_md5", lambda path: hashed.append(path.name) or real_md5(path))

    assert materialise_dataset(url, "HEAD", datasets).files == expected
    assert hashed == [], "files verified before and unchanged since are not read again"

    (info.path / "clean" / "en" / "b.wav").write_bytes(b"tampered")
    again = materialise_dataset(url, "HEAD", datasets)  # the changed file is hashed, found wrong, fetched again
    assert hashed == ["b.wav"] + ["a.wav", "b.wav", "train.csv"]  # then the fresh download is verified
    assert file_hashes(again.path) == expected
