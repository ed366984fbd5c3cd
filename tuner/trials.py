"""Running a stage's grid of trials so that a crash, a rerun or a second worker loses nothing.

Each grid point is enqueued once as a WAITING trial with fixed parameters (under a lock held in
the storage, so that workers starting together do not enqueue it twice). A worker claims a
WAITING trial by switching it to RUNNING in storage (an atomic update: only one worker wins),
stamps it with its host and pid, and tells the outcome. A RUNNING trial whose process is gone
(same host, dead pid; or a stale heartbeat where the storage keeps them) is marked FAIL and its
point enqueued again, so a rerun after SIGKILL repeats only the trial that was cut off, and a
COMPLETE or PRUNED trial is never run twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, Trial, TrialState
from tqdm.auto import tqdm

from tuner.locks import storage_lock

log = logging.getLogger(__name__)

WORKER_ATTR = "tuner:worker"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
Objective = Callable[[Trial], float]


def _worker_id() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


UNSTAMPED_GRACE_S = 60.0  # a claim stamps its trial within milliseconds of switching it


def is_orphaned(trial: FrozenTrial, host: str | None = None) -> bool:
    """True for a RUNNING trial started on this host by a process that no longer exists, or
    one never stamped (its worker died between claiming and stamping) for over a minute."""
    if trial.state != TrialState.RUNNING:
        return False
    worker = trial.system_attrs.get(WORKER_ATTR)
    if not worker:
        start = trial.datetime_start
        return start is not None and (datetime.now() - start).total_seconds() > UNSTAMPED_GRACE_S
    if worker["host"] != (host or socket.gethostname()):
        return False
    return worker["pid"] != os.getpid() and not _pid_alive(worker["pid"])


def _same_params(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """The grid point of a trial, whether or not it got as far as suggesting it."""
    return dict(trial.system_attrs.get("fixed_params", trial.params))


def _tagged(trial: FrozenTrial, tag: Mapping[str, Any] | None) -> bool:
    """The trial carries every user attr of ``tag`` (any trial, for no tag)."""
    return all(trial.user_attrs.get(k) == v for k, v in (tag or {}).items())


def pending_points(trials: Sequence[FrozenTrial], points: Sequence[Mapping[str, Any]],
                   tag: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Grid points with no trial (carrying ``tag``) that is done, waiting or running (those to
    enqueue)."""
    live = (*DONE, TrialState.WAITING, TrialState.RUNNING)
    taken = [trial_params(t) for t in trials if t.state in live and _tagged(t, tag)]
    return [dict(p) for p in points if not any(_same_params(p, q) for q in taken)]


def reap_orphans(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose worker is gone; return their numbers.

    Uses Optuna's heartbeat where the storage has one enabled (workers on other hosts), and the
    host/pid stamp for workers on this host (immediately, without waiting for a grace period).
    """
    with warnings.catch_warnings():  # experimental since 2.9, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    reaped = []
    storage = study._storage  # noqa: SLF001 -- Optuna exposes no public handle to a study's trials by id
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_orphaned(t):
            continue
        try:
            if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):  # noqa: SLF001
                reaped.append(t.number)
        except UpdateFinishedTrialError:
            continue  # another worker got there first
    if reaped:
        log.warning("trials %s of %s were left running by a dead process; marked FAIL, will rerun",
                    reaped, study.study_name)
    return reaped


def enqueue_pending(study: optuna.Study, points: Sequence[Mapping[str, Any]],
                    tag: Mapping[str, Any] | None = None) -> int:
    """Enqueue the pending points; ``tag`` (user attrs) sets their trials apart from others
    with the same params, such as a rerun of a point from another seed."""
    todo = pending_points(study.get_trials(deepcopy=False), points, tag)
    for p in todo:
        study.enqueue_trial(p, user_attrs=dict(tag) if tag else None)
    return len(todo)


def claim(study: optuna.Study) -> Trial | None:
    """Switch one WAITING trial to RUNNING for this process; None when none is left."""
    storage = study._storage  # noqa: SLF001
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(t._trial_id, TrialState.RUNNING):  # noqa: SLF001
                continue
        except UpdateFinishedTrialError:
            continue
        storage.set_trial_system_attr(t._trial_id, WORKER_ATTR, _worker_id())  # noqa: SLF001
        return Trial(study, t._trial_id)  # noqa: SLF001
    return None


def new_trial(study: optuna.Study) -> Trial:
    """A new trial from the study's sampler, stamped with this process like a claimed one."""
    with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize()
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, _worker_id())  # noqa: SLF001
    return trial


@contextlib.contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat from a background thread while the body runs, where the
    storage keeps heartbeats; other workers fail the trial once the heartbeat goes stale."""
    get_interval = getattr(storage, "get_heartbeat_interval", None)  # RDB storages have it
    interval = get_interval() if get_interval is not None else None
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_trial(study: optuna.Study, trial: Trial, objective: Objective) -> TrialState:
    """Run ``objective`` and tell the outcome; an interrupt or error leaves the trial FAIL."""
    try:
        with heartbeat(study._storage, trial._trial_id):  # noqa: SLF001
            value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    study.tell(trial, value)
    return TrialState.COMPLETE


def run_grid(study: optuna.Study, points: Sequence[Mapping[str, Any]], objective: Objective,
             poll_s: float = 0.5, on_trial: Callable[[FrozenTrial], None] | None = None,
             tag: Mapping[str, Any] | None = None) -> list[FrozenTrial]:
    """Make sure every point of the grid has a COMPLETE or PRUNED trial; return those trials.

    Runs the WAITING trials this process can claim, then waits for trials that other live
    workers are still running. Safe to call again after any interruption. With ``tag`` only
    trials carrying those user attrs count, and the enqueued ones get them.
    """
    # A progress bar on a terminal (tqdm turns itself off when stderr is not one).
    bar = tqdm(total=len(points), desc=study.study_name, unit="trial", leave=False, disable=None)
    with bar:
        while True:
            with storage_lock(study._storage, study.study_name):  # noqa: SLF001
                reap_orphans(study)
                enqueue_pending(study, points, tag)
            bar.n = len(study.get_trials(deepcopy=False, states=DONE))
            bar.refresh()
            trial = claim(study)
            if trial is not None:
                run_trial(study, trial, objective)
                if on_trial is not None:
                    on_trial(study.get_trials(deepcopy=False)[trial.number])
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                break
            log.info("%s: waiting for %d trial(s) running in other workers", study.study_name,
                     len(running))
            time.sleep(poll_s)
    done = [t for t in study.get_trials(deepcopy=False, states=DONE)]
    return [t for t in done if _tagged(t, tag)
            and any(_same_params(trial_params(t), p) for p in points)]
