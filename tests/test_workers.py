"""Several workers on one storage (PostgreSQL on 127.0.0.1:5432, database ``test``), locks,
SIGKILL at any moment, ``tuner status``, and the storage errors a user meets."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from tuner.locks import storage_lock
from tuner.pipeline import join
from tuner.stages import NAMES
from tuner.status import status_table
from tuner.storage import (
    TOOL_ATTR,
    NoSuchRun,
    RunConfigMismatch,
    StorageError,
    open_storage,
    study_name,
)
from tuner.trials import enqueue_pending
from tuner.workers import threads_per_worker

from .killing import (
    cli,
    failed_points,
    finished_per_point,
    kill_when,
    reader,
    running_trials,
    start,
    write_study,
)

# The stages that run a grid (the refinement is off in these runs: it has no trials; stage 3b
# runs only where the weight decay chosen is not the held one, through the same grid code).
GRID_STAGES = [s for s in NAMES if s not in ("refine", "lr_recheck")]

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PASSWORD = "hunter2"  # a made-up one, to check that it is masked


def _postgres_available() -> bool:
    try:
        engine = sqlalchemy.create_engine(PG_ADMIN, connect_args={"connect_timeout": 3})
        with engine.connect():
            return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    if not _postgres_available():
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
    name = f"tuner_test_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_threads_per_worker_share_the_cores() -> None:
    assert threads_per_worker(1, cpus=16) == 16
    assert threads_per_worker(3, cpus=16) == 5
    assert threads_per_worker(4, cpus=2) == 1
    with pytest.raises(ValueError, match="workers=0"):
        threads_per_worker(0)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_storage_lock_excludes_other_holders(backend: str, tmp_path: Path, request) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else \
        f"sqlite:///{tmp_path}/t.db"
    spans: list[tuple[float, float]] = []

    optuna.create_study(storage=open_storage(url), study_name="run/stage")

    def hold() -> None:
        # each worker its own connection pool; a study's storage, as run_grid passes it
        study = optuna.load_study(study_name="run/stage", storage=open_storage(url))
        with storage_lock(study._storage, "run/stage"):
            t0 = time.monotonic()
            time.sleep(0.2)
            spans.append((t0, time.monotonic()))

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 3
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))


def test_workers_enqueueing_together_enqueue_each_point_once(pg_url: str) -> None:
    points = [{"x": float(i)} for i in range(6)]
    optuna.create_study(storage=open_storage(pg_url), study_name="r/momentum")
    barrier = threading.Barrier(4)

    def worker() -> None:
        storage = open_storage(pg_url)
        study = optuna.load_study(study_name="r/momentum", storage=storage)
        barrier.wait()
        with storage_lock(study._storage, study.study_name):
            enqueue_pending(study, points)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    trials = optuna.load_study(study_name="r/momentum", storage=pg_url).get_trials()
    assert len(trials) == len(points)


@pytest.mark.slow  # six kill-and-resume rounds: about a minute
def test_sigkill_at_six_moments_each_rerun_completes(tmp_path: Path) -> None:
    """Kill the single-process run during the range test, in each grid stage (the LR check
    included) and during final training; every rerun carries on and no finished trial is run
    twice."""
    url = f"sqlite:///{tmp_path}/t.db"
    cmd = cli("run", str(write_study(tmp_path)), storage=url)

    def any_running(stage: str):  # noqa: ANN202
        def caught():  # noqa: ANN202
            running = running_trials(url, "tiny", stage)
            return running[0] if running else None
        return caught

    def reporting(stage: str):  # noqa: ANN202 -- a trial that has reported at least once
        def caught():  # noqa: ANN202
            running = [t for t in running_trials(url, "tiny", stage) if t.intermediate_values]
            return running[0] if running else None
        return caught

    moments = [("lr_range", any_running("lr_range")), ("lr_check", reporting("lr_check")),
               ("momentum", reporting("momentum")),
               ("weight_decay", reporting("weight_decay")),
               ("batch_size", any_running("batch_size")), ("final", reporting("final"))]
    killed: dict[str, tuple] = {}
    finished_before: dict[str, set] = {}
    for stage, caught in moments:
        proc = start(cmd)
        trial = kill_when(url, [proc], caught)
        killed[stage] = tuple(sorted(trial.system_attrs.get("fixed_params", {}).items()))
        study = optuna.load_study(study_name=study_name("tiny", stage), storage=url)
        finished_before[stage] = {t.number for t in study.get_trials(
            states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))}

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    per_point = finished_per_point(url, "tiny")
    for stage in GRID_STAGES:
        assert set(per_point[stage].values()) == {1}, stage  # one finished trial per point
        assert failed_points(url, "tiny", stage) == [killed[stage]], stage
        study = optuna.load_study(study_name=study_name("tiny", stage), storage=url)
        still = {t.number for t in study.get_trials(
            states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))}
        assert finished_before[stage] <= still, stage
        assert "decision" in study.user_attrs, stage


def test_three_workers_on_postgresql_survive_a_sigkilled_worker(tmp_path: Path,
                                                                pg_url: str) -> None:
    study_file = write_study(tmp_path)
    main_proc = start(cli("run", str(study_file), "--threads", "1", storage=pg_url))
    # the run exists once its first study holds the configuration: then the others join
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if optuna.load_study(study_name="tiny/lr_range", storage=reader(pg_url)).user_attrs:
                break
        except KeyError:
            pass
        time.sleep(0.1)
    helpers = [start(cli("worker", "--run", "tiny", "--threads", "1", storage=pg_url))
               for _ in range(2)]
    procs = [main_proc, *helpers]
    helper_pids = {p.pid for p in helpers}

    def helper_in_weight_decay():  # noqa: ANN202
        for t in running_trials(pg_url, "tiny", "weight_decay"):
            if t.system_attrs.get("tuner:worker", {}).get("pid") in helper_pids and \
                    t.intermediate_values:
                return t
        return None

    killed = kill_when(pg_url, procs, helper_in_weight_decay)
    point = tuple(sorted(killed.system_attrs["fixed_params"].items()))

    in_progress = status_table(pg_url, "tiny")
    assert list(in_progress["stage"]) == list(NAMES)

    out, err = main_proc.communicate(timeout=400)
    assert main_proc.returncode == 0, err
    for p in helpers:
        if p.pid != killed.system_attrs["tuner:worker"]["pid"]:
            p.wait(timeout=120)
            assert p.returncode == 0, p.stderr.read()

    per_point = finished_per_point(pg_url, "tiny")
    for stage in GRID_STAGES:
        assert set(per_point[stage].values()) == {1}, (stage, per_point[stage])
    assert per_point["weight_decay"][point] == 1  # the killed trial's point was retried
    assert point in failed_points(pg_url, "tiny", "weight_decay")
    assert len(per_point["lr_range"]) == 1  # the range test ran once
    # every worker took the same decisions: one record per stage, and the workers' studies
    # all moved on from it
    finished = status_table(pg_url, "tiny")
    assert list(finished["state"]) == ["done"] * len(NAMES)
    assert finished.loc[finished.stage == "final", "decision"].item().startswith(
        "test accuracy")


def test_worker_joining_a_missing_run_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with pytest.raises(StorageError, match="no such database file"):
        join(url)  # a worker does not create the storage
    open_storage(url)
    with pytest.raises(NoSuchRun, match="holds no tuner run.*joins a run"):
        join(url)
    optuna.create_study(storage=url, study_name="other/lr_range").set_user_attr(
        TOOL_ATTR, {"schema": 3})
    with pytest.raises(NoSuchRun, match="no run 'nope'.*runs there: other"):
        join(url, "nope")


def test_unreachable_database_fails_fast_with_password_masked() -> None:
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_storage("postgresql+psycopg://tuner:" + PASSWORD + "@127.0.0.1:1/db")
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert PASSWORD not in message and "***" in message and "\n" not in message


def test_wrong_credentials_are_one_line(pg_url: str) -> None:
    bad = pg_url.replace("postgres@", "nosuchuser:pw123@")
    with pytest.raises(StorageError) as info:
        open_storage(bad)
    assert "pw123" not in str(info.value) and "\n" not in str(info.value)


def test_run_stored_by_another_version_is_refused(tmp_path: Path, mnist1d_splits) -> None:
    import tuner

    from .conftest import tiny_config

    url = f"sqlite:///{tmp_path}/t.db"
    tuner.run(tiny_config(), storage=url, splits=mnist1d_splits)
    study = optuna.load_study(study_name="tiny/lr_range", storage=url)
    study.set_user_attr(TOOL_ATTR, {"version": "9.0.0", "schema": 99})
    with pytest.raises(RunConfigMismatch, match="tuner 9.0.0.*cannot read or resume.*--fresh"):
        tuner.run(tiny_config(), storage=url, splits=mnist1d_splits)
