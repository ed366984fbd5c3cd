"""Where studies live: one RDB storage per run, one study per stage, decisions as user attrs.

Study names are ``"{run}/{stage}"``. A stage's decision (and why) is written into its study's
user attributes as JSON, together with the run's configuration, so the storage alone is enough
to resume a run, inspect it in optuna-dashboard, or share it between workers. ``Run`` is the
handle every command uses: it resolves, creates, checks and reads a run, and converts decisions
between their typed records and JSON (the only place that does).

Only ``tuner run`` creates storage: the read-only commands open it with ``create=False`` and
refuse a SQLite file that does not exist.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pydantic
import sqlalchemy
from sqlalchemy.engine import make_url

from tuner.config import ConfigError, StudyConfig, from_dict
from tuner.locks import storage_lock
from tuner.stages import NAMES, STAGES, Decision, Stage
from tuner.text import first_line
from tuner.version import __version__

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///studies/tuner.db"
DECISION_ATTR = "decision"
CONFIG_ATTR = "config"
TOOL_ATTR = "tuner"  # {"version": ..., "schema": ...} of the tool that made the run
# What a run stores; bump when stored attrs change meaning. 3: decisions are the stages' typed
# records (one vocabulary: min_lr, max_lr, max_momentum, ...), the final one ``accuracy``.
SCHEMA = 3
# Settings that may differ between workers and between a run and its resumption.
RUNTIME_KEYS = frozenset({"train.device", "train.threads", "data.workers", "data.hold"})
CONNECT_TIMEOUT_S = 5
# A running trial records a heartbeat every HEARTBEAT_INTERVAL_S; one silent for longer than
# HEARTBEAT_GRACE_S is failed by any other worker and its grid point handed back.
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 60


class StorageError(RuntimeError):
    """The storage cannot be opened or holds something this tool cannot use."""


class NoSuchRun(StorageError):
    """The storage holds no run of that name (or no run at all)."""


class RunConfigMismatch(ConfigError):
    """A run exists under that name with other settings (or from an incompatible tool)."""


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to print)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 -- an unparsable URL is shown without anything after '@'
        return url.split("@")[-1] if "@" in url else url


def open_storage(url: str = DEFAULT_STORAGE, *, create: bool = True
                 ) -> optuna.storages.RDBStorage:
    """Open the storage (``create``: make a SQLite file and its folder if missing; otherwise a
    missing SQLite file is an error naming the path); errors come as one line, password masked.
    """
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"storage URL {mask_url(url)!r} is not a database URL; expected e.g. "
                           f"{DEFAULT_STORAGE!r} or postgresql+psycopg://user@host/db.") from None
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        file = parsed.database if parsed.database and parsed.database != ":memory:" else None
        if file and not create and not Path(file).is_file():
            raise StorageError(f"storage {mask_url(url)!r}: no such database file {file!r}; "
                               f"start a run with `tuner run`, or pass --storage.")
        if file:
            Path(file).parent.mkdir(parents=True, exist_ok=True)
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
    first = first_line(exc)
    if parsed.password:
        first = first.replace(str(parsed.password), "***")
    raise StorageError(f"cannot open storage {mask_url(url)!r}: {first}") from None


def study_name(run: str, stage: str) -> str:
    return f"{run}/{stage}"


def open_study(storage: optuna.storages.BaseStorage, run: str, stage: Stage,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """The stage's study (created if missing), its objective named for optuna-dashboard."""
    study = optuna.create_study(storage=storage, study_name=study_name(run, stage.name),
                                direction=stage.direction, load_if_exists=True,
                                pruner=pruner or optuna.pruners.NopPruner())
    if study.metric_names != [stage.metric]:
        with warnings.catch_warnings():  # set_metric_names: "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([stage.metric])
    return study


def read_decision(stage: Stage, study: optuna.Study) -> Decision | None:
    """The stage's decision stored in ``study``, as its typed record (None: not decided)."""
    data = study.user_attrs.get(DECISION_ATTR)
    if data is None:
        return None
    try:
        return stage.read(data)
    except pydantic.ValidationError as exc:
        raise StorageError(f"study {study.study_name!r} holds a {stage.name} decision this "
                           f"tuner {__version__} cannot read ({exc.error_count()} field "
                           f"error(s)); was it stored by another version?") from None


def run_names(storage: optuna.storages.BaseStorage) -> list[str]:
    """Runs in the storage, in order of creation."""
    names: list[str] = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        run, _, stage = s.study_name.rpartition("/")
        if run and stage in NAMES and run not in names:
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
        study = optuna.load_study(study_name=study_name(run, NAMES[0]), storage=storage)
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
        study = optuna.load_study(study_name=study_name(run, NAMES[0]), storage=storage)
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


@dataclass(frozen=True)
class Run:
    """One run in one storage: resolved (or created and checked) once, then read through."""

    storage: optuna.storages.RDBStorage
    url: str  # password masked
    name: str

    @classmethod
    def find(cls, url: str, name: str | None = None, *, create: bool = False) -> Run:
        """An existing run (by default the newest); the storage is not created."""
        storage = open_storage(url, create=create)
        names = run_names(storage)
        if not names:
            raise NoSuchRun(f"storage {mask_url(url)!r} holds no tuner run; start one with "
                            f"`tuner run`.")
        if name is None:
            name = names[-1]
        elif name not in names:
            raise NoSuchRun(f"no run {name!r} in storage {mask_url(url)!r}; runs there: "
                            f"{', '.join(names)}.")
        run = cls(storage, mask_url(url), name)
        run.check_schema()
        return run

    @classmethod
    def start(cls, url: str, config: StudyConfig, name: str | None = None,
              fresh: bool = False) -> Run:
        """Create (or check, to resume or join) the run ``name`` (default: the config's name;
        ``fresh``: the next unused name). Records the settings and the tool's version in the
        first stage's study, which makes the run joinable; a resume with other settings is
        refused."""
        storage = open_storage(url)
        name = name or config.name
        if fresh:
            name = fresh_run_name(storage, name)
        run = cls(storage, mask_url(url), name)
        old = run.stored_config()
        if old is not None:
            run.check_schema()
            diffs = [d for d in config_differences(old, config.to_dict())
                     if d not in RUNTIME_KEYS]
            if diffs:
                raise RunConfigMismatch(
                    f"run {name!r} in this storage was started with other settings "
                    f"({', '.join(diffs)}); resume it with the same study file, or start a new "
                    f"run with --fresh or --run NAME.")
        with storage_lock(storage, name):
            study = open_study(storage, name, STAGES[0])
            if CONFIG_ATTR not in study.user_attrs:
                study.set_user_attr(TOOL_ATTR, {"version": __version__, "schema": SCHEMA})
                study.set_user_attr(CONFIG_ATTR, config.to_dict())
        return run

    def check_schema(self) -> None:
        tool = self.tool()
        if tool.get("schema") != SCHEMA:
            raise RunConfigMismatch(
                f"run {self.name!r} was stored by tuner {tool.get('version', 'unknown')} "
                f"(storage schema {tool.get('schema')}), which this tuner {__version__} (schema "
                f"{SCHEMA}) cannot read or resume; start a new run with --fresh or --run NAME.")

    def stored_config(self) -> dict[str, Any] | None:
        return stored_config(self.storage, self.name)

    def config(self) -> StudyConfig:
        """The settings the run was started with."""
        stored = self.stored_config()
        if stored is None:
            raise NoSuchRun(f"run {self.name!r} does not exist in {self.url!r}.")
        return from_dict(StudyConfig, stored)

    def tool(self) -> dict[str, Any]:
        return stored_tool(self.storage, self.name) or {}

    def study(self, stage: Stage, pruner: optuna.pruners.BasePruner | None = None
              ) -> optuna.Study:
        """The stage's study, created if missing (for the pipeline)."""
        return open_study(self.storage, self.name, stage, pruner)

    def studies(self) -> dict[str, optuna.Study]:
        """The stages' studies that exist, in pipeline order (nothing is created)."""
        existing = set(optuna.get_all_study_names(self.storage))
        return {s.name: optuna.load_study(study_name=study_name(self.name, s.name),
                                          storage=self.storage)
                for s in STAGES if study_name(self.name, s.name) in existing}

    def decisions(self) -> dict[str, Decision]:
        """The decisions made so far, by stage name, in pipeline order."""
        studies = self.studies()
        found = {}
        for stage in STAGES:
            study = studies.get(stage.name)
            decision = read_decision(stage, study) if study is not None else None
            if decision is not None:
                found[stage.name] = decision
        return found

    def record(self, stage: Stage, study: optuna.Study, decision: Decision) -> Decision:
        """Store ``decision`` unless another worker stored one first; the stored one wins, so
        every worker starts the next stage from the same values."""
        with storage_lock(self.storage, study.study_name):
            fresh = optuna.load_study(study_name=study.study_name, storage=self.storage)
            stored = read_decision(stage, fresh)
            if stored is not None:
                return stored
            study.set_user_attr(DECISION_ATTR, decision.to_json())
        return decision
