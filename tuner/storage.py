"""Where studies live: one RDB storage per run, one study per stage, decisions as user attrs.

Study names are ``"{run}/{stage}"``. A stage's decision (and why) is written into its study's
user attributes, together with the run's configuration, so the storage alone is enough to resume
a run, inspect it in optuna-dashboard, or share it between workers.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///studies/tuner.db"
DECISION_ATTR = "decision"
CONFIG_ATTR = "config"
STAGES = ("lr_range", "momentum", "weight_decay", "batch_size", "refine", "final")
TOOL_ATTR = "tuner"  # {"version": ..., "schema": ...} of the tool that made the run
SCHEMA = 2  # what a run stores; bump when stored attrs change meaning
CONNECT_TIMEOUT_S = 5
# A running trial records a heartbeat every HEARTBEAT_INTERVAL_S; one silent for longer than
# HEARTBEAT_GRACE_S is failed by any other worker and its grid point handed back.
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 60


class StorageError(RuntimeError):
    """The storage cannot be opened or holds something this tool cannot use."""


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- an unparsable URL is shown without anything after '@'
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str = DEFAULT_STORAGE) -> optuna.storages.RDBStorage:
    """Open (and create, for SQLite) the storage; errors come as one line, password masked."""
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"storage URL {mask_url(url)!r} is not a database URL; expected e.g. "
                           f"{DEFAULT_STORAGE!r} or postgresql+psycopg://user@host/db.") from None
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # Wait for a lock instead of failing when several processes write at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif backend in ("postgresql", "mysql", "mariadb"):
        # An unreachable server should fail in seconds, not after TCP's minutes of retries.
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats: "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=HEARTBEAT_GRACE_S)
        except Exception as exc:  # noqa: BLE001 -- driver errors vary; one line, masked
            if attempt < 2 and _lost_schema_race(exc):
                time.sleep(0.5 + attempt)  # another worker is creating the tables right now
                continue
            _raise_storage_error(url, parsed, exc)
    raise AssertionError("unreachable")


def _lost_schema_race(exc: Exception) -> bool:
    text = str(exc)
    return any(s in text for s in ("alembic_version", "already exists", "UNIQUE constraint",
                                   "duplicate key"))


def _raise_storage_error(url: str, parsed: sqlalchemy.engine.URL, exc: Exception) -> None:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if parsed.password:
        first = first.replace(str(parsed.password), "***")
    raise StorageError(f"cannot open storage {mask_url(url)!r}: {first}") from None


def study_name(run: str, stage: str) -> str:
    return f"{run}/{stage}"


def open_study(storage: optuna.storages.BaseStorage, run: str, stage: str,
               direction: str = "minimize", pruner: optuna.pruners.BasePruner | None = None,
               ) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name=study_name(run, stage),
                               direction=direction, load_if_exists=True,
                               pruner=pruner or optuna.pruners.NopPruner())


def get_decision(study: optuna.Study) -> dict[str, Any] | None:
    return study.user_attrs.get(DECISION_ATTR)


def set_decision(study: optuna.Study, decision: dict[str, Any]) -> None:
    study.set_user_attr(DECISION_ATTR, decision)


def run_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """Runs in the storage, in order of creation."""
    names: list[str] = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        run, _, stage = s.study_name.rpartition("/")
        if run and stage in STAGES and run not in names:
            names.append(run)
    return names


def fresh_run_name(storage: optuna.storages.BaseStorage, base: str) -> str:
    """``base`` if unused, else ``base-2``, ``base-3``, ..."""
    taken = set(run_names(storage))
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def stored_config(storage: optuna.storages.BaseStorage, run: str) -> dict[str, Any] | None:
    """The configuration a run was started with (from its first stage's study), if any."""
    try:
        study = optuna.load_study(study_name=study_name(run, STAGES[0]), storage=storage)
    except KeyError:
        return None
    return study.user_attrs.get(CONFIG_ATTR)


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, f"{prefix}{key}.")
        elif (list(a) if isinstance(a, list | tuple) else a) != (
                list(b) if isinstance(b, list | tuple) else b):
            diffs.append(f"{prefix}{key}")
    return diffs


def stored_tool(storage: optuna.storages.BaseStorage, run: str) -> dict[str, Any] | None:
    """The ``{"version", "schema"}`` stamp of the tool that started ``run``, if any."""
    try:
        study = optuna.load_study(study_name=study_name(run, STAGES[0]), storage=storage)
    except KeyError:
        return None
    return study.user_attrs.get(TOOL_ATTR, {"version": "unknown", "schema": None})


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials of a study by state: complete, pruned, running, waiting, failed."""
    counts = dict.fromkeys(("complete", "pruned", "running", "waiting", "failed"), 0)
    names = {"COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running",
             "WAITING": "waiting", "FAIL": "failed"}
    for t in study.get_trials(deepcopy=False):
        counts[names[t.state.name]] += 1
    return counts


def storage_folder(url: str) -> Path:
    """The folder of a SQLite file (reports and artifacts go beside it), else the working one."""
    try:
        parsed = make_url(url)
        database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    except Exception:  # noqa: BLE001 -- an unparsable URL has no folder
        database = None
    return Path(database).parent if database and database != ":memory:" else Path(".")
