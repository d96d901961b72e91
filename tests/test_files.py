"""Atomic writes: whole or absent, and readable by others like a plain open() would make them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from miipher2.audio import write_audio
from miipher2.files import atomic_directory, atomic_file, atomic_write_bytes, atomic_write_text
from miipher2.train.checkpoint import save_weights


@pytest.fixture
def umask():
    """Run a test under a given umask and put the process's back afterwards."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def plain_open_mode(tmp_path: Path) -> int:
    """What the kernel gives a file made by open() under the current umask: the reference."""
    reference = tmp_path / "reference"
    reference.write_text("x")
    try:
        return mode(reference)
    finally:
        reference.unlink()


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_get_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    expected = plain_open_mode(tmp_path)
    assert expected == 0o666 & ~mask  # sanity of the reference itself
    text = atomic_write_text(tmp_path / "a" / "report.md", "hello")
    data = atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    write_audio(tmp_path / "c.wav", np.zeros(160, dtype=np.float32), 16000)
    save_weights(torch.nn.Linear(2, 2), tmp_path / "d.safetensors")
    for path in (text, data, tmp_path / "c.wav", tmp_path / "d.safetensors"):
        assert mode(path) == expected, path
    assert text.read_text() == "hello" and data.read_bytes() == b"\x00\x01"


def test_directories_get_the_mode_mkdir_would_give(tmp_path, umask):
    umask(0o022)
    (tmp_path / "reference").mkdir()
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "config.yaml").write_text("a: 1")
        (tmp / "backbone").mkdir()
        save_file({"w": torch.zeros(2)}, str(tmp / "backbone" / "model.safetensors"))  # safetensors writes 0600
    assert mode(tmp_path / "model") == mode(tmp_path / "model" / "backbone") == mode(tmp_path / "reference") == 0o755
    assert mode(tmp_path / "model" / "config.yaml") == mode(tmp_path / "model" / "backbone" / "model.safetensors") == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_litter(tmp_path):
    target = atomic_write_text(tmp_path / "manifest.csv", "old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]


def test_the_temporary_name_keeps_the_suffix_for_format_sniffing_libraries(tmp_path):
    with atomic_file(tmp_path / "training.yaml") as tmp:
        assert tmp.suffix == ".yaml" and tmp.name.startswith(".training.") and tmp.parent == tmp_path
        tmp.write_text("x")


def test_a_directory_is_replaced_whole(tmp_path):
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "old-only.txt").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(tmp_path / "model") as tmp:
            (tmp / "new.txt").write_text("2")
            raise KeyboardInterrupt
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["old-only.txt"]
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "new.txt").write_text("2")
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_first_writer_wins_when_replacing_is_refused(tmp_path):
    with atomic_directory(tmp_path / "backbone", replace=False) as tmp:
        (tmp / "weights").write_text("first")
    with pytest.raises(FileExistsError):
        with atomic_directory(tmp_path / "backbone", replace=False) as tmp:
            (tmp / "weights").write_text("second")
    assert (tmp_path / "backbone" / "weights").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone"]
