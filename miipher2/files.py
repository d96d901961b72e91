"""Atomic writes: a crash never leaves a half-written file or directory under its final name.

Everything is first written under a hidden temporary name beside its destination (same file
system, so the final `os.replace` is atomic), then renamed into place with the mode a plain
`open()` or `mkdir()` would give (0666 / 0777 less the umask), not the 0600 / 0700 of
`mkstemp`, `mkdtemp` or libraries that write through them (safetensors does): corpora, models
and reports on a shared volume stay readable by the other users and pods (MLflow server, a
second team) that need them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

_ATTEMPTS = 100


def _create_unique(parent: Path, name: str, create: Callable[[Path], None]) -> Path:
    """A new hidden name beside the destination; it keeps the destination's suffix last
    (`.model.1a2b3c4d.tmp.yaml`) for libraries that pick a format by extension (KFP, soundfile)."""
    stem, suffix = Path(name).stem, Path(name).suffix
    for _ in range(_ATTEMPTS):
        candidate = parent / f".{stem}.{secrets.token_hex(4)}.tmp{suffix}"
        try:
            create(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name for {name} in {parent}")


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # the kernel applies the umask


def _create_directory(path: Path) -> None:
    os.mkdir(path, 0o777)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _open_up(root: Path, directory_mode: int) -> None:
    """Give every file and directory in `root` the umask's mode (executables keep x bits)."""
    file_mode = directory_mode & 0o666
    for parent, directories, files in os.walk(root):
        for name in directories:
            os.chmod(os.path.join(parent, name), directory_mode)
        for name in files:
            file = os.path.join(parent, name)
            if not os.path.islink(file):
                os.chmod(file, directory_mode if _mode(Path(file)) & 0o111 else file_mode)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` (an empty file already exists there); when the block
    ends without an exception it replaces `path`, otherwise it is deleted.

        with atomic_file("model.safetensors") as tmp:
            save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, path.name, _create_file)
    mode = _mode(tmp)  # what the kernel gave a new file under this umask
    try:
        yield tmp
        os.chmod(tmp, mode)  # the writer may have replaced our file with a private one of its own
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; when the block ends without an
    exception it becomes `path`, otherwise it is deleted.

    An existing `path` is swapped out and deleted (`replace=True`: readers see the old tree or
    the new one, never a mix), or left alone with FileExistsError raised (`replace=False`: the
    first of several concurrent writers wins).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, path.name, _create_directory)
    try:
        yield tmp
        _open_up(tmp, directory_mode=_mode(tmp))
        if not replace:
            try:
                os.rename(tmp, path)  # fails on an existing non-empty directory
            except OSError as err:
                if err.errno in (errno.EEXIST, errno.ENOTEMPTY) or path.exists():
                    raise FileExistsError(errno.EEXIST, f"{path} already exists") from err
                raise
            return
        old = None
        if path.exists():
            old = _create_unique(path.parent, f"{path.name}-old", lambda candidate: None)  # a free name
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
