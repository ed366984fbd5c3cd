"""tuner.storage: opening storages safely, run names, and config differences."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from tuner.storage import (
    STAGES,
    StorageError,
    config_differences,
    fresh_run_name,
    get_decision,
    mask_url,
    open_storage,
    open_study,
    run_names,
    set_decision,
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
    study = open_study(storage, "r", "momentum")
    assert study.study_name == study_name("r", "momentum") == "r/momentum"
    assert get_decision(study) is None
    set_decision(study, {"max_momentum": 0.95, "why": "because"})
    again = open_study(storage, "r", "momentum")
    assert get_decision(again) == {"max_momentum": 0.95, "why": "because"}


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
    add_study(storage, f"r/{STAGES[0]}")
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
