"""Validation against a corpus of bad inputs built here: each fault gets its own readable failure."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from miipher2.cli import main
from miipher2.data.manifest import COLUMNS, manifest_path, read_manifest, write_manifest
from miipher2.data.schema import ManifestSchema
from miipher2.data.validate import ValidationConfig, clean_manifest_path, validate_dataset

RATE = 16000


def _tone(seconds: float = 1.0, rate: int = RATE, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t) * (1 + 0.2 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _row(utt_id, path, split, speaker, duration=1.0, rate=RATE, channels=1):
    return {"utt_id": utt_id, "path": path, "duration_s": duration, "sample_rate": rate, "channels": channels,
            "language": "en", "speaker": speaker, "split": split, "transcript": f"words of {utt_id}"}


def _wav(root: Path, name: str, wave: np.ndarray, rate: int = RATE, **kwargs) -> str:
    rel = f"clean/en/{name}.wav"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    sf.write(root / rel, wave, rate, **kwargs)
    return rel


def _build_bad_corpus(root: Path) -> dict[tuple[str, int], set[str]]:
    """Write the corpus; return {(manifest split, row): expected failing checks} (empty set: must pass)."""
    expected: dict[tuple[str, int], set[str]] = {}
    train, val = [], []

    def add(rows, row, checks=()):
        expected[("train" if rows is train else "val", len(rows))] = set(checks)
        rows.append(row)

    add(train, _row("good_a", _wav(root, "good_a", _tone()), "train", "spk1"))
    add(train, _row("good_b", _wav(root, "good_b", _tone(1.5)), "train", "spk1", duration=1.5))

    truncated = root / _wav(root, "truncated", _tone())
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    add(train, _row("truncated", "clean/en/truncated.wav", "train", "spk1"), {"truncated", "metadata_mismatch"})

    (root / "clean/en/text.wav").write_text("hello, this is a text file and not audio\n")
    add(train, _row("text", "clean/en/text.wav", "train", "spk1"), {"decode"})

    (root / "clean/en/image.wav").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    add(train, _row("image", "clean/en/image.wav", "train", "spk1"), {"decode"})
    (root / "clean/en/riff.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(64))
    add(train, _row("riff", "clean/en/riff.wav", "train", "spk1"), {"decode"})
    (root / "clean/en/utf8.wav").write_bytes(("x" + "é" * 300).encode())  # the 512-byte read cuts a character
    add(train, _row("utf8", "clean/en/utf8.wav", "train", "spk1"), {"decode"})

    (root / "clean/en/empty.wav").write_bytes(b"")
    add(train, _row("empty", "clean/en/empty.wav", "train", "spk1"), {"decode"})

    add(train, _row("zero", _wav(root, "zero", np.zeros(0, np.float32)), "train", "spk1", duration=0.01), {"empty_audio"})

    nan_wave = _tone()
    nan_wave[4000:4010] = np.nan
    add(train, _row("nan", _wav(root, "nan", nan_wave, subtype="FLOAT"), "train", "spk1"), {"non_finite"})

    add(train, _row("eight_bit", _wav(root, "eight_bit", _tone(), subtype="PCM_U8"), "train", "spk1"), {"subtype"})

    six = np.tile(_tone(1.0, 96000)[:, None], (1, 6))
    add(train, _row("six_ch", _wav(root, "six_ch", six, 96000), "train", "spk1", rate=96000, channels=6),
        {"sample_rate", "channels"})

    mp3 = root / "clean/en/mp3.wav"
    sf.write(root / "clean/en/mp3.mp3", _tone(), RATE, format="MP3")
    (root / "clean/en/mp3.mp3").rename(mp3)
    add(train, _row("mp3", "clean/en/mp3.wav", "train", "spk1"), {"format_mismatch", "subtype"})

    outside = root.parent / f"{root.name}_outside.wav"
    sf.write(outside, _tone(), RATE)
    add(train, _row("parent", f"../{outside.name}", "train", "spk1"), {"unsafe_path"})
    add(train, _row("absolute", str(outside), "train", "spk1"), {"unsafe_path"})
    add(train, _row("missing", "clean/en/not_there.wav", "train", "spk1"), {"missing_file"})
    (root / "clean/en/link.wav").symlink_to(outside)
    add(train, _row("symlink", "clean/en/link.wav", "train", "spk1"), {"unsafe_path"})
    add(train, _row("directory", "clean/en", "train", "spk1"), {"missing_file"})

    add(train, _row("silent", _wav(root, "silent", np.zeros(RATE, np.float32)), "train", "spk1"), {"silent"})
    add(train, _row("clipped", _wav(root, "clipped", np.clip(10 * _tone(), -1, 1)), "train", "spk1"), {"clipping"})
    add(train, _row("short", _wav(root, "short", _tone(0.05)), "train", "spk1", duration=0.05), {"duration"})
    add(train, _row("lying", _wav(root, "lying", _tone()), "train", "spk1", duration=2.5), {"metadata_mismatch"})
    # A second row for good_a's id and file: the later row is the duplicate.
    add(train, _row("good_a", "clean/en/good_a.wav", "train", "spk1"), {"duplicate_utt_id", "duplicate_path"})

    add(val, _row("val_good", _wav(root, "val_good", _tone()), "val", "spk2"))
    add(val, _row("leak", _wav(root, "leak", _tone()), "val", "spk1"), {"speaker_in_multiple_splits"})
    add(val, _row("good_b", _wav(root, "good_b_again", _tone()), "val", "spk2"), {"duplicate_utt_id"})
    bad_values = _row("bad_values", _wav(root, "bad_values", _tone()), "val", "spk2")
    bad_values.update(duration_s="abc", channels="1.5")
    add(val, bad_values, {"schema"})
    add(val, _row("wrong_split", _wav(root, "wrong_split", _tone()), "train", "spk2"), {"split_mismatch"})

    test_rows = [_row("test_good", _wav(root, "test_good", _tone()), "test", "spk3"),
                 _row("test_silent", _wav(root, "test_silent", np.zeros(RATE, np.float32)), "test", "spk3")]
    expected[("test", 0)] = set()
    expected[("test", 1)] = {"silent"}  # still found although the manifest lacks a column

    for split, rows in (("train", train), ("val", val)):
        write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), manifest_path(root, split))
    write_manifest(pd.DataFrame(test_rows, columns=list(COLUMNS)).drop(columns=["speaker"]), manifest_path(root, "test"))
    return expected


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "data"
    root.mkdir()
    expected = _build_bad_corpus(root)
    originals = {split: manifest_path(root, split).read_bytes() for split in ("train", "val", "test")}
    report = validate_dataset(root, report_dir=root.parent / "report", drop_invalid=True, workers=3)
    return root, expected, originals, report


def _failures(report, split, utt_id, check):
    return [f for f in report.failures if f.split == split and f.utt_id == utt_id and f.check == check]


def test_every_bad_row_gets_its_own_check_and_good_rows_pass(bad_corpus):
    _, expected, _, report = bad_corpus
    found: dict[tuple[str, int], set[str]] = {}
    for failure in report.failures:
        if failure.row is not None:
            found.setdefault((failure.split, failure.row), set()).add(failure.check)
    assert {key: found.get(key, set()) for key in expected} == expected
    assert set(found) <= set(expected)
    assert not report.ok


@pytest.mark.parametrize("split, utt_id, check, fragment", [
    ("train", "truncated", "truncated", "declares 32000 bytes of sample data but only"),
    ("train", "truncated", "metadata_mismatch", "duration_s=1 but the file lasts 0.499 s"),
    ("train", "text", "decode", "not audio: the file is text, starting 'hello, this is a text file and not audi"),
    ("train", "empty", "decode", "the file is empty (0 bytes)"),
    ("train", "image", "decode", "not decodable audio: the file looks like a PNG image"),
    ("train", "riff", "decode", "a RIFF header libsndfile cannot decode"),
    ("train", "utf8", "decode", "not audio: the file is text, starting 'xééé"),
    ("train", "zero", "empty_audio", "0 samples"),
    ("train", "nan", "non_finite", "10 NaN/Inf samples of 16000 (first at 0.250 s)"),
    ("train", "eight_bit", "subtype", "sample encoding PCM_U8 (Unsigned 8 bit PCM) is not accepted"),
    ("train", "six_ch", "channels", "6 channels, expected mono"),
    ("train", "six_ch", "sample_rate", "96000 Hz, expected 16000 Hz"),
    ("train", "mp3", "format_mismatch", "named .wav but contains MP3 (MPEG Layer III) audio"),
    ("train", "parent", "unsafe_path", "contains '..'"),
    ("train", "absolute", "unsafe_path", "absolute path"),
    ("train", "missing", "missing_file", "no file at 'clean/en/not_there.wav'"),
    ("train", "symlink", "unsafe_path", "resolves outside the dataset root"),
    ("train", "directory", "missing_file", "'clean/en' is not a regular file"),
    ("train", "silent", "silent", "peak -inf dBFS is below the silence threshold -60 dBFS"),
    ("train", "clipped", "clipping", "of samples at full scale"),
    ("train", "short", "duration", "0.050 s, outside [0.2, 60] s"),
    ("train", "lying", "metadata_mismatch", "manifest says duration_s=2.5 but the file lasts 1.000 s"),
    ("train", "good_a", "duplicate_utt_id", "utt_id 'good_a' is already used by train row 0"),
    ("train", "good_a", "duplicate_path", "path 'clean/en/good_a.wav' is already used by train row 0"),
    ("val", "good_b", "duplicate_utt_id", "utt_id 'good_b' is already used by train row 1"),
    ("val", "leak", "speaker_in_multiple_splits", "speaker 'spk1' is also in train"),
    ("val", "bad_values", "schema", "duration_s='abc': must be a number > 0"),
    ("val", "bad_values", "schema", "channels='1.5': must be a whole number > 0"),
    ("val", "wrong_split", "split_mismatch", "split='train' but the row is listed in the val manifest"),
])
def test_failure_messages_are_specific(bad_corpus, split, utt_id, check, fragment):
    _, _, _, report = bad_corpus
    messages = [f.message for f in _failures(report, split, utt_id, check)]
    assert any(fragment in m for m in messages), messages


def test_missing_column_is_a_manifest_level_failure(bad_corpus):
    _, _, _, report = bad_corpus
    [failure] = [f for f in report.failures if f.check == "missing_column"]
    assert failure.split == "test" and failure.row is None
    assert "manifest has no 'speaker' column" in failure.message
    assert report.rows["test"] == 2
    assert [f.check for f in report.failures if f.split == "test" and f.row is not None] == ["silent"]


def test_reports_are_written_and_parse(bad_corpus):
    root, expected, _, report = bad_corpus
    data = json.loads(Path(report.report_paths["json"]).read_text())
    assert data["ok"] is False
    assert data["counts"]["unsafe_path"] == 3 and data["counts"]["truncated"] == 1
    assert sum(data["counts"].values()) == len(data["failures"]) == len(report.failures)
    assert {"utt_id", "split", "path", "check", "message", "row"} <= set(data["failures"][0])
    markdown = Path(report.report_paths["markdown"]).read_text()
    assert markdown.startswith("# Dataset validation: FAIL")
    assert "| unsafe_path | 3 |" in markdown
    assert "| train | 13 | parent | ../" in markdown  # a failing row with its index, id and path
    assert report.to_json() == Path(report.report_paths["json"]).read_text()


def test_drop_invalid_keeps_only_good_rows_and_lists_every_drop(bad_corpus):
    root, expected, originals, report = bad_corpus
    for split in ("train", "val", "test"):  # the originals are never rewritten
        assert manifest_path(root, split).read_bytes() == originals[split]
    train = read_manifest(clean_manifest_path(root, "train"))
    val = read_manifest(clean_manifest_path(root, "val"))
    assert list(train["utt_id"]) == ["good_a", "good_b"]
    assert list(val["utt_id"]) == ["val_good"]
    assert not clean_manifest_path(root, "test").exists()
    assert "missing_column" in report.not_cleaned["test"]
    read_rows = sum(report.rows[s] for s in ("train", "val"))
    assert len(report.dropped) + len(train) + len(val) == read_rows  # nothing vanished silently
    dropped = {(d.split, d.utt_id, d.row): d.checks for d in report.dropped}
    assert dropped[("train", "parent", 13)] == ("unsafe_path",)
    assert dropped[("train", "good_a", 22)] == ("duplicate_utt_id", "duplicate_path")
    markdown = report.to_markdown()
    assert "## Dropped rows (--drop-invalid)" in markdown and "| train | 13 | parent |" in markdown
    assert "no cleaned manifest for test" in markdown


def test_missing_and_unreadable_manifests(tmp_path):
    root = tmp_path / "data"
    rows = [_row("a", _wav(root, "a", _tone()), "train", "s1")]
    write_manifest(pd.DataFrame(rows), manifest_path(root, "train"))
    manifest_path(root, "val").write_text('utt_id,path\n"unterminated,x\n')
    clean_manifest_path(root, "val").write_text("left over from an earlier run\n")
    report = validate_dataset(root, drop_invalid=True)
    checks = {(f.split, f.check) for f in report.failures}
    assert checks == {("val", "unreadable_manifest"), ("test", "missing_manifest")}
    assert report.rows == {"train": 1}
    assert not clean_manifest_path(root, "val").exists()  # a stale cleaned copy would mislead
    assert "removed the stale val.clean.csv" in report.not_cleaned["val"]
    assert report.not_cleaned["test"].startswith("missing_manifest: no manifest at")
    assert list(read_manifest(clean_manifest_path(root, "train"))["utt_id"]) == ["a"]


def test_typed_manifest_from_read_manifest_passes_the_schema(tmp_path):
    root = tmp_path / "data"
    rows = [_row("a", _wav(root, "a", _tone()), "train", "s1")]
    write_manifest(pd.DataFrame(rows), manifest_path(root, "train"))
    ManifestSchema.validate(read_manifest(manifest_path(root, "train")))
    assert set(ManifestSchema.to_schema().columns) == set(COLUMNS)


def _good_corpus(root: Path) -> None:
    for split, speaker in (("train", "s1"), ("val", "s2"), ("test", "s3")):
        rows = [_row(f"{split}{i}", _wav(root, f"{split}{i}", _tone(1 + i / 4)), split, speaker, duration=1 + i / 4)
                for i in range(3)]
        write_manifest(pd.DataFrame(rows), manifest_path(root, split))


def test_cli_exit_codes_and_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good"
    _good_corpus(good)
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert "checked 9 rows (train 3, val 3, test 3)" in out and "OK: every check passed" in out
    assert "report: reports/validation/validation.md" in out  # outside the DVC-tracked dataset
    assert json.loads((tmp_path / "reports/validation/validation.json").read_text())["ok"] is True

    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    (bad / "clean/en/val0.wav").write_text("not audio")
    report_dir = tmp_path / "reports"
    assert main(["validate", str(bad), "--report-dir", str(report_dir), "--drop-invalid"]) == 1
    out = capsys.readouterr().out
    assert "decode" in out and "FAIL: 1 failures (1 rows failed)" in out and "dropped 1 rows" in out
    assert (report_dir / "validation.md").exists()
    assert list(read_manifest(clean_manifest_path(bad, "val"))["utt_id"]) == ["val1", "val2"]

    assert main(["validate", str(tmp_path / "missing")]) == 2


def test_config_limits_are_honoured(tmp_path):
    root = tmp_path / "data"
    rows = [_row("hi", _wav(root, "hi", _tone(1.0, 48000), 48000), "train", "s", rate=48000)]
    write_manifest(pd.DataFrame(rows), manifest_path(root, "train"))
    assert {f.check for f in validate_dataset(root, splits=["train"]).failures} == {"sample_rate"}
    assert validate_dataset(root, splits=["train"], config=ValidationConfig(sample_rate=None)).ok
    # Same data, same report bytes: the JSON can be versioned with the dataset.
    first = validate_dataset(root, report_dir=tmp_path / "r1").to_json()
    assert first == validate_dataset(root, report_dir=tmp_path / "r2").to_json()
    assert main(["validate", str(root), "--splits", "train", "--sample-rate", "0"]) == 0


@contextlib.contextmanager
def _as_a_user_who_may_not_read_private_files():
    """Root reads every file whatever its mode: as root, act as `nobody` for the block."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def private_corpus():
    """A corpus where one manifest, one audio file and one folder are readable by their owner only.

    It lies in a fresh folder of the system temp dir (pytest's own is private to its user)."""
    base = Path(tempfile.mkdtemp(prefix="miipher2-private-"))
    base.chmod(0o777)  # the report goes here, written by the unprivileged user
    root = base / "data"
    _good_corpus(root)
    private = [manifest_path(root, "train"), root / "clean/en/val1.wav", root / "clean/en/sub"]
    rows = [_row("deep", _wav(root, "sub/deep", _tone()), "test", "s3")]
    write_manifest(pd.concat([read_manifest(manifest_path(root, "test")), pd.DataFrame(rows)]), manifest_path(root, "test"))
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    for path in private:
        path.chmod(0o000)
    yield base, root
    for path in private:
        path.chmod(0o755)
    shutil.rmtree(base)


def test_unreadable_manifests_files_and_folders_are_reported_not_raised(private_corpus, capsys):
    base, root = private_corpus
    with _as_a_user_who_may_not_read_private_files():
        report = validate_dataset(root, workers=2)
        code = main(["validate", str(root), "--report-dir", str(base / "report")])
    failures = {(f.split, f.row, f.check): f for f in report.failures}
    assert set(failures) == {("train", None, "unreadable_manifest"), ("val", 1, "unreadable_file"),
                             ("test", 3, "unreadable_file")}
    assert failures[("train", None, "unreadable_manifest")].message == (
        f"cannot read {manifest_path(root, 'train')}: Permission denied")
    assert failures[("val", 1, "unreadable_file")].path == "clean/en/val1.wav"
    assert "cannot read 'clean/en/sub/deep.wav': Permission denied" == failures[("test", 3, "unreadable_file")].message
    assert report.rows == {"val": 3, "test": 4}  # everything readable was still checked
    assert code == 1
    out = capsys.readouterr().out
    assert "unreadable_manifest" in out and "unreadable_file" in out and "FAIL: 3 failures" in out
