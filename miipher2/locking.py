"""Exclusive locks on a shared workspace, held by a process and released when it dies.

    with exclusive_lock(work_dir / ".lock", owner={"kfp_run_id": run}):        # waits its turn
        ...
    with exclusive_lock(out_dir / "state" / ".lock", wait=False):             # or LockHeld at once
        ...

`fcntl.flock` locks belong to the open file: a killed process (a preempted pod) never leaves a
stale lock behind, unlike a lock file whose mere existence means "taken". On NFS (v4) the Linux
client maps flock onto the server's byte-range locks, and the server drops a dead client's locks
when its lease expires (about 90 s), so the same holds across the pods of a cluster. The lock
file also records its holder, so whoever waits can say for whom.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any


class LockHeld(RuntimeError):
    """Another process holds the lock (raised only with `wait=False`)."""


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait: bool = True, owner: Mapping[str, Any] | None = None,
                   on_wait: Callable[[dict], None] | None = None, poll_s: float = 5.0) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the body of the `with`.

    wait=False raises `LockHeld` naming the holder instead of waiting. `on_wait(holder)` is called
    once before a wait starts (e.g. to log who holds the lock)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(path)
                if not wait:
                    raise LockHeld(f"{path} is locked by {_describe(holder)}") from None
                if on_wait and not announced:
                    on_wait(holder)
                announced = True
                time.sleep(poll_s)  # polling, not a blocking flock: SIGTERM can still stop the wait
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), **(owner or {})}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in holder.items() if k != "since") or "another process"
