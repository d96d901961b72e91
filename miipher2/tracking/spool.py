"""What the tracker has not delivered to MLflow yet: an ordered, bounded queue in a file.

Every tracking call is appended here first (one JSON line) and a background sender delivers the
lines in order, acknowledging them as it goes. While the server is down the file grows; metric
lines beyond `max_bytes` of undelivered data are dropped and counted (parameters, tags, artifacts
and the run's end are small and never dropped). The file lives in the stage's output directory,
so a process that dies while the server is away leaves its records behind, and the next tracker
opened on that directory delivers them (`leftovers`).

A live spool holds an exclusive `flock` on its file: another process never adopts it.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PREFIX, SUFFIX = "mlflow-pending-", ".jsonl"
DEFAULT_MAX_BYTES = 64 << 20
_COMPACT_AFTER = 1 << 20  # rewrite the file once this much of its head has been delivered


class Spool:
    """Append records; read the undelivered ones in order; acknowledge what was delivered."""

    def __init__(self, path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES, *, adopt: bool = False):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._lock = threading.Lock()
        self._delivered = 0  # bytes at the head of the file already in MLflow
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Read-write, not append mode: compaction rewrites the head in place (pwrite ignores the
        # offset under O_APPEND on Linux). Appends seek to the end under the lock instead.
        self._handle = os.fdopen(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+b")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | (fcntl.LOCK_NB if adopt else 0))
        except BlockingIOError:
            self._handle.close()
            raise

    @classmethod
    def for_run(cls, directory: str | os.PathLike, run_id: str, max_bytes: int = DEFAULT_MAX_BYTES) -> Spool:
        return cls(Path(directory) / f"{PREFIX}{run_id}{SUFFIX}", max_bytes)

    def append(self, record: dict[str, Any], droppable: bool = False) -> bool:
        """Queue `record`; False when it was a droppable record and the spool is full."""
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._handle.closed:
                raise ValueError(f"{self.path}: spool is closed")
            end = self._handle.seek(0, os.SEEK_END)
            if droppable and end - self._delivered + len(line) > self.max_bytes:
                self.dropped += 1
                return False
            self._handle.write(line)  # at the end: seek above
            self._handle.flush()
        return True

    def pending(self, max_records: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """Up to `max_records` undelivered records in order, each with the offset just past it."""
        with self._lock:
            self._handle.seek(self._delivered)
            records, offset = [], self._delivered
            for line in self._handle:
                if not line.endswith(b"\n"):  # a torn last line from a crash mid-write
                    break
                offset += len(line)
                try:
                    records.append((offset, json.loads(line)))
                except json.JSONDecodeError:
                    continue  # unreadable garbage is skipped, not retried forever
                if len(records) >= max_records:
                    break
            if not records and offset > self._delivered:  # only garbage: skip it
                self._delivered = offset
            return records

    def acknowledge(self, offset: int) -> None:
        """Everything before `offset` reached MLflow; an emptied file is truncated."""
        with self._lock:
            self._delivered = max(self._delivered, offset)
            end = self._handle.seek(0, os.SEEK_END)
            if self._delivered >= end:
                self._handle.truncate(0)
                self._delivered = 0
            elif self._delivered >= max(_COMPACT_AFTER, end - self._delivered):
                # Move the undelivered tail to the head (it fits there without overlapping itself),
                # then cut. A crash in between leaves some records twice (MLflow ignores an
                # identical metric, param or tag logged again) and one torn line, which `pending`
                # skips: nothing undelivered is lost.
                self._handle.seek(self._delivered)
                rest = self._handle.read()
                self._handle.seek(0)
                self._handle.write(rest)
                self._handle.truncate(len(rest))
                self._handle.flush()
                self._delivered = 0

    @property
    def empty(self) -> bool:
        with self._lock:
            return self._handle.closed or self._handle.seek(0, os.SEEK_END) <= self._delivered

    @property
    def undelivered_bytes(self) -> int:
        with self._lock:
            return 0 if self._handle.closed else self._handle.seek(0, os.SEEK_END) - self._delivered

    def close(self) -> None:
        """Release the file: removed when everything was delivered, kept (for a later tracker) otherwise."""
        with self._lock:
            if self._handle.closed:
                return
            if self._handle.seek(0, os.SEEK_END) <= self._delivered:
                self.path.unlink(missing_ok=True)
            self._handle.close()  # releases the flock


def leftovers(directory: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Spool]:
    """Spools other processes left in `directory` (crashed, or timed out while the server was down)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in sorted(directory.glob(f"{PREFIX}*{SUFFIX}"), key=lambda p: p.stat().st_mtime):
        try:
            yield Spool(path, max_bytes, adopt=True)
        except (BlockingIOError, FileNotFoundError):
            continue  # a live tracker owns it, or it was just delivered and removed
