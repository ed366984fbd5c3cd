"""Local worker processes for ``tuner run --workers N``.

Each worker is ``tuner worker`` in its own process, joined to the run through the storage (the
URL travels in the environment, not on the command line, where ``ps`` would show a password).
Each gets an equal share of the CPU's threads, so N workers do not oversubscribe the cores.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """An equal share of the CPUs, at least one thread."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, but got {workers=}.")
    return max(1, (cpus or os.cpu_count() or 1) // workers)


def spawn(count: int, storage: str, run_name: str, threads: int, device: str | None = None,
          quiet: bool = True) -> list[subprocess.Popen]:
    """Start ``count`` worker processes on this machine."""
    env = {**os.environ, "TUNER_STORAGE": storage, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "tuner.cli", *(["-q"] if quiet else []), "worker",
           "--run", run_name, "--threads", str(threads)]
    if device:
        cmd += ["--device", device]
    procs = [subprocess.Popen(cmd, env=env) for _ in range(count)]
    log.info("started %d local worker(s) with %d thread(s) each: pids %s", count, threads,
             [p.pid for p in procs])
    return procs


def wait(procs: list[subprocess.Popen]) -> list[int]:
    """Wait for every worker; return their exit codes."""
    return [p.wait() for p in procs]
