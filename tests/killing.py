"""Helpers for tests that start the CLI in subprocesses and SIGKILL them at chosen moments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.stages import NAMES
from tuner.storage import study_name
from tuner.trials import WORKER_ATTR, trial_params

# A tiny study whose stages each last long enough (a second or more) to be caught running.
KILLABLE_TOML = """
name = "tiny"
[train]
batch_size = 64
threads = 1
[lr_range]
start_lr = 1e-2
num_iters = 300
eval_every = 10
repeats = 2
[lr_check]
factors = [1.0, 2.0]
prefer = 2.0
epochs = 8
repeats = 1
[momentum]
values = [0.95, 0.9]
epochs = 8
[weight_decay]
values = [1e-3, 1e-4, 1e-5, 0.0]
epochs = 8
[batch_size]
values = [64, 128]
budget_s = 1.5
range_test_iters = 300
reports = 3
[final]
epochs = 15
seeds = [0, 1]
"""


def write_study(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(KILLABLE_TOML)
    return path


def cli(*args: str, storage: str) -> list[str]:
    return [sys.executable, "-m", "tuner.cli", "-q", *args, "--storage", storage]


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


_STORAGES: dict[str, optuna.storages.RDBStorage] = {}


def reader(url: str) -> optuna.storages.RDBStorage:
    """One storage (one connection pool) per URL for this test process: the helpers below are
    polled every few milliseconds, and a storage made per call would hold its connections until
    garbage collection (PostgreSQL allows 100)."""
    if url not in _STORAGES:
        _STORAGES[url] = optuna.storages.RDBStorage(url)
    return _STORAGES[url]


def running_trials(storage: str, run: str, stage: str) -> list[FrozenTrial]:
    try:
        study = optuna.load_study(study_name=study_name(run, stage), storage=reader(storage))
    except KeyError:
        return []
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def kill_when(storage: str, procs: list[subprocess.Popen],
              caught: Callable[[], FrozenTrial | None], timeout_s: float = 180) -> FrozenTrial:
    """Poll until ``caught()`` returns a running trial; SIGKILL the process that runs it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        trial = caught()
        if trial is not None:
            pid = trial.system_attrs[WORKER_ATTR]["pid"]
            os.kill(pid, signal.SIGKILL)
            for p in procs:
                if p.pid == pid:
                    p.wait()
            return trial
        if all(p.poll() is not None for p in procs):
            errors = [p.stderr.read() if p.stderr else "" for p in procs]
            raise AssertionError(f"processes ended before the moment came: {errors}")
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the moment to kill")


def finished_per_point(storage: str, run: str) -> dict[str, Counter]:
    """For each stage, how many COMPLETE or PRUNED trials each grid point has."""
    out = {}
    for stage in NAMES:
        study = optuna.load_study(study_name=study_name(run, stage), storage=reader(storage))
        done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        out[stage] = Counter(tuple(sorted(trial_params(t).items())) for t in done)
    return out


def failed_points(storage: str, run: str, stage: str) -> list[tuple]:
    study = optuna.load_study(study_name=study_name(run, stage), storage=reader(storage))
    return [tuple(sorted(trial_params(t).items()))
            for t in study.get_trials(states=(TrialState.FAIL,))]
