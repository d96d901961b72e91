"""Keep every file access inside the dataset root.

Manifests are user input: a path such as `../../etc/passwd` or `/abs/file.wav` must never be
opened. Every reader of manifest paths goes through `resolve_inside`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath


class UnsafePathError(ValueError):
    """A manifest path that would escape the dataset root."""


def resolve_inside(root: str | Path, relative: str) -> Path:
    """Return root/relative, refusing absolute paths, `..` parts and symlink escapes."""
    if not isinstance(relative, str) or not relative.strip():
        raise UnsafePathError(f"empty path {relative!r}")
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or (len(relative) > 1 and relative[1] == ":"):
        raise UnsafePathError(f"absolute path {relative!r}: manifest paths must be relative to the dataset root")
    if ".." in posix.parts:
        raise UnsafePathError(f"path {relative!r} contains '..': manifest paths must stay inside the dataset root")
    root = Path(root).resolve()
    target = (root / Path(*posix.parts)).resolve()
    if not target.is_relative_to(root):
        raise UnsafePathError(f"path {relative!r} resolves outside the dataset root {root} (symlink?)")
    return target


def path_component(text: str) -> str:
    """One path component made of `text` (a run id, a corpus name): nothing that can escape a folder."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".")
    if not cleaned:
        raise ValueError(f"cannot make a folder name out of {text!r}")
    return cleaned

