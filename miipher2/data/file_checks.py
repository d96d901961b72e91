"""Checks on one manifest row's audio file: where it is, what it really is, what it holds.

Each check that fails adds a Failure and the others still run, so one report shows everything
wrong with a file. Samples are scanned block by block: memory stays bounded for long files.
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from miipher2.data.paths import UnsafePathError, resolve_inside
from miipher2.data.report import Failure

# What a file's extension promises about its content (libsndfile major format names).
FORMATS_BY_EXTENSION = {
    ".wav": {"WAV", "WAVEX", "RF64"},
    ".flac": {"FLAC"},
    ".ogg": {"OGG"},
    ".opus": {"OGG"},
    ".mp3": {"MP3"},
}

# Leading bytes of common files libsndfile cannot read, to say what a file is instead.
_SIGNATURES = (
    (b"\x1aE\xdf\xa3", "a Matroska/WebM container"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"ID3", "MP3 with an ID3 tag, but corrupt"),
)

_BLOCK_FRAMES = 1 << 18


@dataclass(frozen=True)
class ValidationConfig:
    """What counts as a valid training utterance. None disables the sample-rate/channel checks."""

    sample_rate: int | None = 16000
    channels: int | None = 1
    min_duration_s: float = 0.2
    max_duration_s: float = 60.0
    duration_tolerance_s: float = 0.02  # manifest duration_s vs the decoded length
    silence_dbfs: float = -60.0  # a peak below this is silence
    clip_level: float = 0.999  # |sample| at or above this counts as clipped
    max_clipped_ratio: float = 0.001
    allowed_subtypes: tuple[str, ...] = ("PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"allowed_subtypes": list(self.allowed_subtypes)}


@dataclass(frozen=True)
class RowRef:
    """The manifest facts one file is checked against (numbers None where the manifest's are invalid)."""

    split: str
    row: int
    utt_id: str | None
    path: str | None
    duration_s: float | None = None
    sample_rate: int | None = None
    channels: int | None = None


def check_file(root: str | Path, ref: RowRef, config: ValidationConfig) -> list[Failure]:
    """Every failure of this row's file; an empty list means the file is fit for training."""
    failures: list[Failure] = []

    def fail(check: str, message: str) -> None:
        failures.append(Failure(ref.split, check, message, row=ref.row, utt_id=ref.utt_id, path=ref.path))

    if ref.path is None:
        return failures  # the schema already reported the missing path
    try:
        file = resolve_inside(root, ref.path)
    except UnsafePathError as err:
        fail("unsafe_path", str(err))
        return failures
    try:
        if not file.exists():
            fail("missing_file", f"no file at {ref.path!r} under the dataset root")
            return failures
        if not file.is_file():
            fail("missing_file", f"{ref.path!r} is not a regular file")
            return failures
        with open(file, "rb"):
            pass  # unreadable (permissions, I/O): say so, rather than as a file that does not decode
    except OSError as err:
        fail("unreadable_file", f"cannot read {ref.path!r}: {err.strerror or err}")
        return failures

    try:
        with sf.SoundFile(file) as sound:
            info = (sound.format, sound.subtype, sound.samplerate, sound.channels, sound.frames)
            _check_header(file, *info, config, ref, fail)
            if sound.frames > 0:
                _check_samples(sound, config, fail)
    except (sf.LibsndfileError, RuntimeError) as err:
        fail("decode", _undecodable(file, err))
    except OSError as err:  # an I/O error while reading: this row fails, the others are still checked
        fail("unreadable_file", f"cannot read {ref.path!r}: {err.strerror or err}")
    return failures


def _check_header(file: Path, fmt: str, subtype: str, rate: int, channels: int, frames: int,
                  config: ValidationConfig, ref: RowRef, fail) -> None:
    expected_formats = FORMATS_BY_EXTENSION.get(file.suffix.lower())
    if expected_formats is not None and fmt not in expected_formats:
        fail("format_mismatch", f"named {file.suffix} but contains {_describe(fmt, subtype)} audio")
    if fmt in ("WAV", "WAVEX"):
        truncation = _wav_truncation(file)
        if truncation:
            fail("truncated", truncation)
    if subtype not in config.allowed_subtypes:
        fail("subtype", f"sample encoding {subtype} ({sf.available_subtypes().get(subtype, subtype)}) "
                        f"is not accepted (accepted: {', '.join(config.allowed_subtypes)})")
    if frames == 0:
        fail("empty_audio", "the file holds 0 samples")
    if config.sample_rate is not None and rate != config.sample_rate:
        fail("sample_rate", f"{rate} Hz, expected {config.sample_rate} Hz")
    if config.channels is not None and channels != config.channels:
        expected = "mono" if config.channels == 1 else f"{config.channels} channels"
        fail("channels", f"{channels} channels, expected {expected}")

    duration = frames / rate
    if frames > 0 and not config.min_duration_s <= duration <= config.max_duration_s:
        fail("duration", f"{duration:.3f} s, outside [{config.min_duration_s:g}, {config.max_duration_s:g}] s")
    mismatches = []
    if ref.duration_s is not None and abs(ref.duration_s - duration) > config.duration_tolerance_s:
        mismatches.append(f"duration_s={ref.duration_s:g} but the file lasts {duration:.3f} s")
    if ref.sample_rate is not None and ref.sample_rate != rate:
        mismatches.append(f"sample_rate={ref.sample_rate} but the file is {rate} Hz")
    if ref.channels is not None and ref.channels != channels:
        mismatches.append(f"channels={ref.channels} but the file has {channels}")
    if mismatches:
        fail("metadata_mismatch", "manifest says " + "; ".join(mismatches))


def _check_samples(sound: sf.SoundFile, config: ValidationConfig, fail) -> None:
    non_finite = clipped = finite = 0
    first_bad: int | None = None
    peak = 0.0
    position = 0
    for block in sound.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
        good = np.isfinite(block)
        bad = block.size - int(good.sum())
        if bad and first_bad is None:
            first_bad = position + int(np.argwhere(~good)[0][0])
        non_finite += bad
        magnitude = np.abs(block[good])
        finite += magnitude.size
        if magnitude.size:
            peak = max(peak, float(magnitude.max()))
            clipped += int((magnitude >= config.clip_level).sum())
        position += len(block)

    if non_finite:
        fail("non_finite", f"{non_finite} NaN/Inf samples of {non_finite + finite} "
                           f"(first at {first_bad / sound.samplerate:.3f} s)")
    if finite:
        peak_dbfs = 20 * math.log10(peak) if peak > 0 else -math.inf
        if peak_dbfs < config.silence_dbfs:
            fail("silent", f"peak {peak_dbfs:.1f} dBFS is below the silence threshold {config.silence_dbfs:g} dBFS")
        ratio = clipped / finite
        if ratio > config.max_clipped_ratio:
            fail("clipping", f"{ratio:.1%} of samples at full scale (|x| >= {config.clip_level:g}), "
                             f"limit {config.max_clipped_ratio:.1%}")


def _wav_truncation(file: Path) -> str | None:
    """libsndfile quietly reads what is there; the RIFF header tells how much should be there."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        head = handle.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return None
        endian = "<" if head[:4] == b"RIFF" else ">"
        position = 12
        while position + 8 <= size:
            handle.seek(position)
            chunk_id, length = struct.unpack(endian + "4sI", handle.read(8))
            if chunk_id == b"data":
                available = size - position - 8
                # 0 and 0xFFFFFFFF are placeholders written by streaming encoders, not promises.
                if length not in (0, 0xFFFFFFFF) and length > available:
                    return (f"the WAV header declares {length} bytes of sample data but only {available} are "
                            f"present ({available / length:.0%}): the file is truncated")
                return None
            position += 8 + length + (length & 1)
    return None


def _undecodable(file: Path, err: Exception) -> str:
    """Say what the file actually is, not only that libsndfile refused it."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(512)
    except OSError as os_err:
        return f"cannot read the file: {os_err.strerror or os_err}"
    if not head:
        return "the file is empty (0 bytes), not audio"
    reason = getattr(err, "error_string", None) or str(err)
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return f"not decodable audio: the file looks like {kind} ({reason})"
    if head[4:8] == b"ftyp":
        return f"not decodable audio: the file is an MP4/M4A container, which libsndfile cannot read ({reason})"
    if head[:4] in (b"RIFF", b"RIFX"):
        return f"a RIFF header libsndfile cannot decode (corrupt or unsupported WAV encoding: {reason})"
    text = _as_text(head)
    if text is not None:
        return f"not audio: the file is text, starting {text!r}"
    return f"not decodable audio: libsndfile says {reason!r} (first bytes {head[:8].hex(' ')})"


def _as_text(head: bytes) -> str | None:
    if b"\x00" in head:
        return None
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # invalid bytes, not just a character cut by the 512-byte read
            return None
        decoded = head[: err.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in decoded)
    if printable < 0.95 * len(decoded):
        return None
    first_line = decoded.strip().splitlines()[0] if decoded.strip() else decoded
    return first_line[:40] + ("…" if len(first_line) > 40 else "")


def _describe(fmt: str, subtype: str) -> str:
    return f"{fmt} ({sf.available_subtypes(fmt).get(subtype, subtype)})"
