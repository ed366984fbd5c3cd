"""tuner.trials: grid points run once each, across reruns, interrupts and dead workers."""

from __future__ import annotations

import os
import socket
import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tuner.trials import (
    WORKER_ATTR,
    claim,
    enqueue_pending,
    is_orphaned,
    pending_points,
    reap_orphans,
    run_grid,
    trial_params,
)

POINTS = [{"x": 1.0}, {"x": 2.0}, {"x": 3.0}]


@pytest.fixture
def storage(tmp_path: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/t.db")


@pytest.fixture
def study(storage: optuna.storages.RDBStorage) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name="run/stage")


class Objective:
    """Counts calls per point; ``prune``/``interrupt`` name points that end otherwise."""

    def __init__(self, prune: tuple[float, ...] = (), interrupt: tuple[float, ...] = ()) -> None:
        self.calls: Counter[float] = Counter()
        self.prune = set(prune)
        self.interrupt = set(interrupt)

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 10.0)
        self.calls[x] += 1
        if x in self.interrupt:
            raise KeyboardInterrupt
        if x in self.prune:
            raise optuna.TrialPruned()
        return (x - 2.0) ** 2


def states_by_x(study: optuna.Study) -> dict[float, list[TrialState]]:
    out: dict[float, list[TrialState]] = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(trial_params(t)["x"], []).append(t.state)
    return out


# --- pending_points / enqueue_pending / claim -----------------------------------------------


def test_pending_points_on_an_empty_study(study: optuna.Study) -> None:
    assert pending_points(study.get_trials(), POINTS) == POINTS


def test_enqueue_pending_is_idempotent(study: optuna.Study) -> None:
    assert enqueue_pending(study, POINTS) == 3
    assert enqueue_pending(study, POINTS) == 0
    trials = study.get_trials()
    assert len(trials) == 3
    assert all(t.state == TrialState.WAITING for t in trials)
    assert [trial_params(t) for t in trials] == POINTS
    assert pending_points(trials, POINTS) == []


def test_enqueue_pending_adds_only_new_points(study: optuna.Study) -> None:
    enqueue_pending(study, POINTS[:2])
    assert enqueue_pending(study, POINTS) == 1
    assert [trial_params(t) for t in study.get_trials()] == POINTS


def test_pending_points_ignore_failed_trials(study: optuna.Study) -> None:
    enqueue_pending(study, POINTS)
    trial = claim(study)
    assert trial is not None
    study.tell(trial, state=TrialState.FAIL)
    assert pending_points(study.get_trials(), POINTS) == [POINTS[0]]


def test_a_tag_sets_reruns_of_the_same_points_apart(study: optuna.Study) -> None:
    enqueue_pending(study, POINTS)
    rerun = {"repeat": 1}
    assert pending_points(study.get_trials(), POINTS[:1], rerun) == POINTS[:1]
    assert enqueue_pending(study, POINTS[:1], rerun) == 1
    assert enqueue_pending(study, POINTS[:1], rerun) == 0
    tagged = [t for t in study.get_trials() if t.user_attrs == rerun]
    assert [trial_params(t) for t in tagged] == POINTS[:1]
    assert len(study.get_trials()) == len(POINTS) + 1


def test_pending_points_match_floats_closely_not_loosely(study: optuna.Study) -> None:
    enqueue_pending(study, [{"x": 0.1 + 0.2}])
    trials = study.get_trials()
    assert pending_points(trials, [{"x": 0.3}]) == []  # equal up to rounding
    assert pending_points(trials, [{"x": 0.3001}]) == [{"x": 0.3001}]
    assert pending_points(trials, [{"x": 0.3, "y": 1}]) == [{"x": 0.3, "y": 1}]


def test_claim_stamps_a_running_trial(study: optuna.Study) -> None:
    enqueue_pending(study, POINTS[:1])
    trial = claim(study)
    assert isinstance(trial, optuna.Trial)
    frozen = study.get_trials()[trial.number]
    assert frozen.state == TrialState.RUNNING
    assert frozen.system_attrs[WORKER_ATTR] == {"host": socket.gethostname(),
                                                "pid": os.getpid()}
    assert trial.suggest_float("x", 0.0, 10.0) == 1.0  # the enqueued point
    assert claim(study) is None  # nothing left to claim


def test_claim_takes_waiting_trials_in_order(study: optuna.Study) -> None:
    enqueue_pending(study, POINTS)
    numbers = [claim(study).number for _ in POINTS]
    assert numbers == [0, 1, 2]
    assert claim(study) is None


def test_claim_on_an_empty_study(study: optuna.Study) -> None:
    assert claim(study) is None


# --- run_grid ---------------------------------------------------------------------------------


def test_run_grid_runs_each_point_once(study: optuna.Study) -> None:
    objective = Objective(prune=(3.0,))
    seen: list[int] = []
    trials = run_grid(study, POINTS, objective, on_trial=lambda t: seen.append(t.number))

    assert objective.calls == {1.0: 1, 2.0: 1, 3.0: 1}
    assert sorted(t.params["x"] for t in trials) == [1.0, 2.0, 3.0]
    by_x = {t.params["x"]: t for t in trials}
    assert by_x[1.0].state == TrialState.COMPLETE and by_x[1.0].value == 1.0
    assert by_x[2.0].state == TrialState.COMPLETE and by_x[2.0].value == 0.0
    assert by_x[3.0].state == TrialState.PRUNED
    assert sorted(seen) == [0, 1, 2]


def test_run_grid_again_reruns_nothing(study: optuna.Study) -> None:
    run_grid(study, POINTS, Objective(prune=(2.0,)))
    again = Objective()
    trials = run_grid(study, POINTS, again)
    assert not again.calls  # neither the COMPLETE nor the PRUNED points
    assert len(trials) == 3
    assert len(study.get_trials()) == 3


def test_run_grid_returns_only_the_requested_points(study: optuna.Study) -> None:
    run_grid(study, POINTS, Objective())
    objective = Objective()
    trials = run_grid(study, [{"x": 2.0}, {"x": 4.0}], objective)
    assert objective.calls == {4.0: 1}
    assert sorted(t.params["x"] for t in trials) == [2.0, 4.0]


def test_interrupted_point_fails_and_is_rerun_alone(study: optuna.Study) -> None:
    first = Objective(interrupt=(3.0,))
    with pytest.raises(KeyboardInterrupt):
        run_grid(study, POINTS, first)
    assert first.calls == {1.0: 1, 2.0: 1, 3.0: 1}
    assert states_by_x(study) == {1.0: [TrialState.COMPLETE], 2.0: [TrialState.COMPLETE],
                                  3.0: [TrialState.FAIL]}

    second = Objective()
    trials = run_grid(study, POINTS, second)
    assert second.calls == {3.0: 1}
    assert states_by_x(study)[3.0] == [TrialState.FAIL, TrialState.COMPLETE]
    assert len(trials) == 3
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_interrupt_in_the_middle_leaves_the_rest_waiting(study: optuna.Study) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_grid(study, POINTS, Objective(interrupt=(2.0,)))
    assert states_by_x(study) == {1.0: [TrialState.COMPLETE], 2.0: [TrialState.FAIL],
                                  3.0: [TrialState.WAITING]}
    second = Objective()
    run_grid(study, POINTS, second)
    assert second.calls == {2.0: 1, 3.0: 1}


def test_objective_error_leaves_fail_and_propagates(study: optuna.Study) -> None:
    def broken(trial: optuna.Trial) -> float:
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError):
        run_grid(study, POINTS[:1], broken)
    assert study.get_trials()[0].state == TrialState.FAIL


def test_second_study_object_on_the_same_storage_sees_the_work(
        storage: optuna.storages.RDBStorage, study: optuna.Study) -> None:
    run_grid(study, POINTS, Objective())
    other = optuna.load_study(study_name="run/stage", storage=storage)
    objective = Objective()
    assert len(run_grid(other, POINTS, objective)) == 3
    assert not objective.calls


# --- orphans ----------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def stamp(study: optuna.Study, number: int, host: str, pid: int) -> None:
    trial_id = study.get_trials()[number]._trial_id
    study._storage.set_trial_system_attr(trial_id, WORKER_ATTR, {"host": host, "pid": pid})


def test_reap_orphans_fails_only_trials_of_dead_processes_on_this_host(
        study: optuna.Study) -> None:
    enqueue_pending(study, [{"x": float(i)} for i in range(4)])
    for _ in range(4):
        assert claim(study) is not None  # all RUNNING, stamped with this pid
    host = socket.gethostname()
    stamp(study, 0, host, dead_pid())
    stamp(study, 2, host, os.getppid())  # alive, another process
    stamp(study, 3, "some-other-host", dead_pid())  # not ours to judge

    assert is_orphaned(study.get_trials()[0])
    assert not is_orphaned(study.get_trials()[1])
    assert reap_orphans(study) == [0]
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.RUNNING,
                      TrialState.RUNNING]
    assert reap_orphans(study) == []  # nothing left to reap


def test_reaped_point_is_rerun_by_run_grid(study: optuna.Study) -> None:
    enqueue_pending(study, POINTS[:1])
    claim(study)
    stamp(study, 0, socket.gethostname(), dead_pid())
    objective = Objective()
    trials = run_grid(study, POINTS, objective)
    assert objective.calls == {1.0: 1, 2.0: 1, 3.0: 1}
    assert [t.state for t in study.get_trials()][0] == TrialState.FAIL
    assert len(trials) == 3


def test_unstamped_or_finished_trials_are_not_orphans(study: optuna.Study) -> None:
    trial = study.ask()  # RUNNING, but not claimed: no stamp
    assert not is_orphaned(study.get_trials()[trial.number])
    study.tell(trial, 1.0)
    frozen = study.get_trials()[trial.number]
    assert not is_orphaned(frozen)
    assert reap_orphans(study) == []
