"""Where a corpus comes from: a manifest (local file or `s3://bucket/key`) and the audio it names.

A manifest's `path` column is relative to its dataset root: the folder above `manifests/` when
the manifest lives in one, else the manifest's own folder (the rule `miipher2 restore` uses).
On S3 the same rule applies to key prefixes. Audio is fetched as bytes: the bytes are what the
content hash covers, and decoding from memory avoids a second read.

S3 goes through boto3 with everything from the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION): never from
parameters, so no credential ends up in a plan, a log or a compiled pipeline.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import soundfile as sf

from miipher2.audio import AudioError
from miipher2.data.manifest import MANIFEST_DIR, read_manifest
from miipher2.data.paths import UnsafePathError, resolve_inside

S3_SCHEME = "s3://"


@dataclass(frozen=True)
class Manifest:
    uri: str            # absolute local path or s3://bucket/key
    frame: pd.DataFrame
    sha256: str         # of the manifest's bytes: part of the plan's identity
    audio_root: str     # absolute local folder or s3://bucket/prefix the `path` column is relative to

    @property
    def name(self) -> str:
        return PurePosixPath(self.uri).name


def load_manifest(uri: str) -> Manifest:
    """Read a manifest; a clear error when it is missing, unreadable or has no `path` column."""
    data, location = _fetch_manifest(uri)
    try:
        frame = read_manifest(io.BytesIO(data))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ValueError(f"{location}: cannot read manifest ({err})") from err
    if "path" not in frame.columns:
        raise ValueError(f"{location}: manifest has no 'path' column (has {list(frame.columns)})")
    parent = PurePosixPath(location.removeprefix(S3_SCHEME)).parent if location.startswith(S3_SCHEME) else Path(location).parent
    root = parent.parent if parent.name == MANIFEST_DIR else parent
    audio_root = f"{S3_SCHEME}{root}" if location.startswith(S3_SCHEME) else str(root)
    return Manifest(location, frame, hashlib.sha256(data).hexdigest(), audio_root)


def _fetch_manifest(uri: str) -> tuple[bytes, str]:
    if uri.startswith(S3_SCHEME):
        bucket, key = _split_s3(uri)
        if not key:
            raise ValueError(f"{uri}: an S3 manifest needs a key (s3://bucket/path/to/manifest.csv)")
        return S3Store(f"{S3_SCHEME}{bucket}").get(key, uri), uri
    path = Path(uri).absolute()
    try:
        return path.read_bytes(), str(path)
    except OSError as err:
        raise ValueError(f"{path}: cannot read manifest ({err.strerror or err})") from err


def open_store(audio_root: str) -> LocalStore | S3Store:
    return S3Store(audio_root) if audio_root.startswith(S3_SCHEME) else LocalStore(audio_root)


class LocalStore:
    """Audio files under a local dataset root; paths that would leave it are refused."""

    def __init__(self, root: str):
        self.root = root

    def location(self, relative: str) -> str:
        return str(resolve_inside(self.root, relative))

    def read(self, relative: str) -> bytes:
        path = resolve_inside(self.root, relative)
        try:
            return path.read_bytes()
        except FileNotFoundError as err:
            raise AudioError(f"{path}: no such file") from err
        except OSError as err:
            raise AudioError(f"{path}: cannot read ({err.strerror or err})") from err


class S3Store:
    """Objects under s3://bucket/prefix; keys are built only from safe relative paths."""

    def __init__(self, root: str):
        self.bucket, self.prefix = _split_s3(root)
        self._lock = threading.Lock()

    @cached_property
    def _client(self):
        import boto3

        # Clients are thread-safe, creating them from boto3's default session is not: one, once.
        # Endpoint, region and credentials: the environment's, resolved by botocore.
        with self._lock:
            return boto3.client("s3")

    def key(self, relative: str) -> str:
        if not isinstance(relative, str) or not relative.strip():
            raise UnsafePathError(f"empty path {relative!r}")
        posix = PurePosixPath(relative.replace("\\", "/"))
        if posix.is_absolute() or ".." in posix.parts or (len(relative) > 1 and relative[1] == ":"):
            raise UnsafePathError(f"path {relative!r} must be relative and stay inside s3://{self.bucket}/{self.prefix}")
        return str(PurePosixPath(self.prefix) / posix) if self.prefix else str(posix)

    def location(self, relative: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key(relative)}"

    def read(self, relative: str) -> bytes:
        return self.get(self.key(relative), self.location(relative))

    def get(self, key: str, location: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            reason = "no such object" if code in ("NoSuchKey", "404") else f"S3 error {code}".strip()
            raise AudioError(f"{location}: {reason}") from err
        except BotoCoreError as err:
            raise AudioError(f"{location}: cannot reach S3 ({err})") from err


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix(S3_SCHEME).partition("/")
    if not bucket:
        raise ValueError(f"{uri}: expected s3://bucket/key")
    return bucket, key.strip("/")


def audio_duration(data: bytes, location: str) -> float:
    """Seconds of audio, from the header only."""
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{location}: cannot decode audio ({err})") from err
    return float(info.frames) / float(info.samplerate)


def decode_audio(data: bytes, location: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples of an encoded file held in memory; refuses empty or non-finite audio."""
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioError(f"{location}: cannot decode audio ({err})") from err
    wave = wave.mean(axis=1)
    if wave.size == 0:
        raise AudioError(f"{location}: no samples")
    if not np.isfinite(wave).all():
        raise AudioError(f"{location}: contains NaN or infinite samples")
    return wave, int(rate)
