"""tuner.storage: opening storages safely, run names, config differences and the Run handle."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import optuna
import pytest

from tuner.config import StudyConfig
from tuner.stages import NAMES, stage
from tuner.stages.lr_check import LRDecision
from tuner.stages.momentum import MomentumDecision
from tuner.storage import (
    DECISION_ATTR,
    TOOL_ATTR,
    NoSuchRun,
    Run,
    RunConfigMismatch,
    StorageError,
    config_differences,
    fresh_run_name,
    mask_url,
    open_storage,
    open_study,
    read_decision,
    run_names,
    study_name,
)

PASSWORD = "secret-pw"  # a made-up one, to check that it is masked


@pytest.fixture
def storage() -> optuna.storages.InMemoryStorage:
    return optuna.storages.InMemoryStorage()


def add_study(storage: optuna.storages.BaseStorage, name: str) -> None:
    optuna.create_study(storage=storage, study_name=name)


# --- mask_url / open_storage ----------------------------------------------------------------


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql+psycopg://user:" + PASSWORD + "@host/db")
    assert PASSWORD not in masked
    assert "user" in masked and "host/db" in masked and "***" in masked


def test_mask_url_leaves_password_free_urls_alone() -> None:
    assert mask_url("sqlite:///studies/tuner.db") == "sqlite:///studies/tuner.db"


def test_mask_url_of_an_unparsable_url_drops_the_credentials() -> None:
    assert "secret" not in mask_url("not a url :secret@host")


def test_open_storage_creates_the_sqlite_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "t.db"
    storage = open_storage(f"sqlite:///{path}")
    assert isinstance(storage, optuna.storages.RDBStorage)
    assert path.parent.is_dir()
    add_study(storage, "r/lr_range")
    assert path.is_file()
    assert run_names(open_storage(f"sqlite:///{path}")) == ["r"]


def test_open_storage_in_memory_sqlite() -> None:
    assert isinstance(open_storage("sqlite:///:memory:"), optuna.storages.RDBStorage)


def test_open_storage_rejects_a_non_url() -> None:
    with pytest.raises(StorageError, match="not a database URL"):
        open_storage("not a url")


def test_open_storage_unreachable_postgres_fails_fast_and_masked() -> None:
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        open_storage("postgresql+psycopg://u:" + PASSWORD + "@127.0.0.1:1/x")
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert PASSWORD not in message
    assert "127.0.0.1" in message
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --- studies, decisions, run names ----------------------------------------------------------


def test_open_study_is_idempotent_and_keeps_decisions(storage: optuna.storages.BaseStorage
                                                      ) -> None:
    momentum = stage("momentum")
    study = open_study(storage, "r", momentum)
    assert study.study_name == study_name("r", "momentum") == "r/momentum"
    assert study.metric_names == ["validation loss"]  # what optuna-dashboard shows
    assert read_decision(momentum, study) is None
    decision = MomentumDecision(max_momentum=0.95, min_momentum=0.85, why="because")
    study.set_user_attr(DECISION_ATTR, decision.to_json())
    again = open_study(storage, "r", momentum)
    assert read_decision(momentum, again) == decision


def test_the_lr_check_decision_round_trips(storage: optuna.storages.BaseStorage) -> None:
    check = stage("lr_check")
    study = open_study(storage, "r", check)
    decision = LRDecision(min_lr=0.0141, max_lr=0.141, factor=1.41, reading=0.1, batch_size=64,
                          why="x1.41 the range test's 0.1", seconds=2.0)
    study.set_user_attr(DECISION_ATTR, decision.to_json())
    assert read_decision(check, open_study(storage, "r", check)) == decision
    assert run_names(storage) == ["r"]  # a run's study, whichever stage it is


def test_run_names_in_creation_order(storage: optuna.storages.BaseStorage) -> None:
    add_study(storage, "b/lr_range")
    add_study(storage, "a/lr_range")
    add_study(storage, "b/momentum")
    add_study(storage, "not-a-run")  # no stage
    add_study(storage, "c/unknown_stage")  # not a stage
    add_study(storage, "x/y/final")  # a run name may itself hold a '/'
    assert run_names(storage) == ["b", "a", "x/y"]


def test_run_names_empty(storage: optuna.storages.BaseStorage) -> None:
    assert run_names(storage) == []


def test_fresh_run_name(storage: optuna.storages.BaseStorage) -> None:
    assert fresh_run_name(storage, "r") == "r"
    add_study(storage, f"r/{NAMES[0]}")
    assert fresh_run_name(storage, "r") == "r-2"
    add_study(storage, "r-2/final")
    assert fresh_run_name(storage, "r") == "r-3"
    add_study(storage, "r-4/final")  # a gap is reused
    assert fresh_run_name(storage, "r") == "r-3"
    assert fresh_run_name(storage, "other") == "other"


# --- config_differences ---------------------------------------------------------------------


def test_config_differences_equal() -> None:
    cfg = {"name": "a", "lr_range": {"start_lr": 1e-3, "end_lr": 10.0}}
    assert config_differences(cfg, cfg) == []


def test_config_differences_nested_and_sorted() -> None:
    old = {"name": "a", "lr_range": {"start_lr": 1e-3, "end_lr": 10.0},
           "momentum": {"values": [0.9, 0.95]}}
    new = {"name": "b", "lr_range": {"start_lr": 1e-4, "end_lr": 10.0},
           "momentum": {"values": [0.9, 0.97]}}
    assert config_differences(old, new) == ["lr_range.start_lr", "momentum.values", "name"]


def test_config_differences_list_equals_tuple() -> None:
    # A config read back from storage (JSON) has lists where the dataclasses have tuples.
    assert config_differences({"m": {"values": (0.9, 0.95)}}, {"m": {"values": [0.9, 0.95]}}) == []
    assert config_differences({"v": (1, 2)}, {"v": [1, 2, 3]}) == ["v"]


def test_config_differences_added_and_removed_keys() -> None:
    assert config_differences({"a": 1, "t": {"x": 1}}, {"b": 2, "t": {"x": 1, "y": 2}}) == [
        "a", "b", "t.y"]
    assert config_differences({"t": {"x": 1}}, {"t": 3}) == ["t"]


# --- the Run handle -------------------------------------------------------------------------


def test_read_only_opening_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/typo/dir/x.db"
    for read in (lambda: open_storage(url, create=False), lambda: Run.find(url)):
        with pytest.raises(StorageError, match="no such database file") as info:
            read()
        assert str(tmp_path / "typo" / "dir" / "x.db") in str(info.value)
        assert "\n" not in str(info.value)
    assert not (tmp_path / "typo").exists()


def test_run_start_records_the_settings_and_find_resolves_the_newest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    with pytest.raises(NoSuchRun, match="holds no tuner run"):
        Run.find(url, create=True)
    first = Run.start(url, StudyConfig(name="a"))
    second = Run.start(url, StudyConfig(name="b"))
    assert (first.name, second.name) == ("a", "b")
    assert Run.find(url).name == "b"
    assert Run.find(url, "a").config() == StudyConfig(name="a")
    assert Run.start(url, StudyConfig(name="a"), fresh=True).name == "a-2"
    with pytest.raises(NoSuchRun, match="no run 'c'.*runs there: a, b, a-2"):
        Run.find(url, "c")
    assert Run.find(url, "a").decisions() == {}


def test_run_start_refuses_other_settings_and_other_schemas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    run = Run.start(url, StudyConfig(name="a"))
    with pytest.raises(RunConfigMismatch, match=r"other settings \(train.batch_size\)"):
        Run.start(url, StudyConfig(name="a", train=dataclasses.replace(
            StudyConfig().train, batch_size=64)))
    optuna.load_study(study_name="a/lr_range", storage=url).set_user_attr(
        TOOL_ATTR, {"version": "0.0.1", "schema": 2})
    for again in (lambda: Run.start(url, StudyConfig(name="a")), lambda: Run.find(url, "a")):
        with pytest.raises(RunConfigMismatch, match="schema 2.*cannot read or resume") as info:
            again()
        assert "\n" not in str(info.value)
    assert run.name == "a"


def test_record_keeps_the_first_workers_decision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    run = Run.start(url, StudyConfig(name="a"))
    momentum = stage("momentum")
    study = run.study(momentum)
    first = MomentumDecision(max_momentum=0.95, min_momentum=0.85, why="first")
    second = MomentumDecision(max_momentum=0.9, min_momentum=0.85, why="second")
    assert run.record(momentum, study, first) == first
    assert run.record(momentum, study, second) == first
    assert run.decisions() == {"momentum": first}
