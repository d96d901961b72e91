"""Run a `miipher2` command under torchrun with N processes in this pod (or on this machine).

torchrun (`python -m torch.distributed.run --standalone`) starts the processes with a local
rendezvous; the training code joins the process group it describes (NCCL on GPUs, gloo on CPU).
A SIGTERM to this process (pod eviction, preemption) is passed on to torchrun, which passes it
to the workers: they checkpoint and exit 143, and a retry of the step continues from there.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence


def torchrun_command(arguments: Sequence[str], processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "miipher2.cli", *arguments]


def run_under_torchrun(arguments: Sequence[str], processes: int) -> int:
    """`miipher2 <arguments>` on `processes` local processes; returns torchrun's exit code."""
    process = subprocess.Popen(torchrun_command(arguments, processes))
    with _forwarding_sigterm(process):
        return process.wait()


@contextlib.contextmanager
def _forwarding_sigterm(process: subprocess.Popen):
    if threading.current_thread() is not threading.main_thread():  # handlers install only there
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
