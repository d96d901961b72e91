import os

import pytest

from miipher2.data.paths import UnsafePathError, resolve_inside


def test_relative_path_resolves_inside(tmp_path):
    assert resolve_inside(tmp_path, "clean/a.wav") == (tmp_path / "clean" / "a.wav").resolve()


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x.wav", "clean/../../x.wav", "C:\\x.wav", "", "a\\..\\..\\b"])
def test_escaping_paths_are_refused(tmp_path, bad):
    with pytest.raises(UnsafePathError):
        resolve_inside(tmp_path, bad)


def test_symlink_escape_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafePathError, match="outside the dataset root"):
        resolve_inside(root, "link/file.wav")
