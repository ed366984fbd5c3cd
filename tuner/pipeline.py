"""The staged pipeline: LR range -> momentum -> weight decay -> batch size -> final training.

Each stage is a study in one storage; a stage that already holds a decision is skipped, so the
same call resumes an interrupted run. The storage alone is enough to carry on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from torch import nn

from tuner.budget import check_budget, fit_to_budget
from tuner.config import ConfigError, StudyConfig, from_dict
from tuner.dashboard import annotate_stage
from tuner.data import Splits, load_splits
from tuner.device import resolve_device
from tuner.locks import storage_lock
from tuner.models import model_factory
from tuner.stages import STAGES
from tuner.stages.common import Context
from tuner.storage import (
    CONFIG_ATTR,
    DEFAULT_STORAGE,
    SCHEMA,
    TOOL_ATTR,
    config_differences,
    fresh_run_name,
    get_decision,
    mask_url,
    open_storage,
    open_study,
    run_names,
    set_decision,
    stored_config,
    stored_tool,
)
from tuner.version import __version__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """What a finished run chose and measured (``decisions`` holds each stage's full record)."""

    run: str
    storage: str  # password masked
    decisions: dict[str, dict[str, Any]]

    @property
    def min_lr(self) -> float:
        return self.decisions["refine"]["min_lr"]

    @property
    def max_lr(self) -> float:
        return self.decisions["refine"]["max_lr"]

    @property
    def momentum(self) -> float:
        return self.decisions["refine"]["max_momentum"]

    @property
    def weight_decay(self) -> float:
        return self.decisions["refine"]["weight_decay"]

    @property
    def batch_size(self) -> int:
        return self.decisions["refine"]["batch_size"]

    @property
    def test_accuracy(self) -> float | None:
        """Mean over the final seeds; None when the data had no test split."""
        return self.decisions["final"].get("test_accuracy")

    @property
    def test_loss(self) -> float | None:
        return self.decisions["final"].get("test_loss")

    @property
    def accuracy(self) -> float:
        """The final score: test accuracy, or validation accuracy without a test split."""
        final = self.decisions["final"]
        return final[f"{final.get('scored_on', 'test')}_accuracy"]


class RunConfigMismatch(ConfigError):
    pass


class RunNotFound(ConfigError):
    pass


# Settings that may differ between workers and between a run and its resumption.
RUNTIME_KEYS = frozenset({"train.device", "train.threads", "data.workers", "data.hold"})


def _check_same_config(storage: optuna.storages.BaseStorage, run: str, config: StudyConfig
                       ) -> None:
    old = stored_config(storage, run)
    if old is None:
        return
    tool = stored_tool(storage, run) or {}
    if tool.get("schema") != SCHEMA:
        raise RunConfigMismatch(
            f"run {run!r} was stored by tuner {tool.get('version', 'unknown')} (storage schema "
            f"{tool.get('schema')}), which this tuner {__version__} (schema {SCHEMA}) cannot "
            f"resume; start a new run with --fresh or --run NAME.")
    diffs = [d for d in config_differences(old, config.to_dict()) if d not in RUNTIME_KEYS]
    if diffs:
        raise RunConfigMismatch(
            f"run {run!r} in this storage was started with other settings ({', '.join(diffs)}); "
            f"resume it with the same study file, or start a new run with --fresh or --run NAME.")


def _prepare(rdb: optuna.storages.BaseStorage, config: StudyConfig, run_name: str | None,
             fresh: bool) -> str:
    """Name the run, refuse a resume with other settings, and record the settings and the
    tool's version in the first stage's study (which makes the run joinable)."""
    run_name = run_name or config.name
    if fresh:
        run_name = fresh_run_name(rdb, run_name)
    _check_same_config(rdb, run_name, config)
    with storage_lock(rdb, run_name):
        study = open_study(rdb, run_name, STAGES[0].NAME)
        if CONFIG_ATTR not in study.user_attrs:
            study.set_user_attr(TOOL_ATTR, {"version": __version__, "schema": SCHEMA})
            study.set_user_attr(CONFIG_ATTR, config.to_dict())
    return run_name


def prepare(config: StudyConfig, storage: str = DEFAULT_STORAGE, run_name: str | None = None,
            fresh: bool = False) -> str:
    """Create (or check) the run so that workers can join it; return its name."""
    return _prepare(open_storage(storage), config, run_name, fresh)


def run(config: StudyConfig, *, storage: str = DEFAULT_STORAGE, run_name: str | None = None,
        fresh: bool = False, model_fn: Callable[[], nn.Module] | None = None,
        splits: Splits | None = None, budget_s: float | None = None) -> Result:
    """Run (or resume, or join as one more worker) every stage and return the decisions.

    ``model_fn`` and ``splits`` replace the built-in model and dataset named in ``config``.
    ``budget_s`` fits a new run to that many tuning seconds on this machine (``tuner.budget``);
    a run that exists already keeps the settings it was started with.
    Any number of processes may call this with the same storage and run name at once: they
    share each stage's trials and all reach the same decisions.
    """
    if budget_s is not None:
        check_budget(budget_s)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)
    # The data is read and checked before the storage is touched: a bad file stores nothing.
    splits = splits.to(device) if splits is not None else load_splits(config.data, device)
    if model_fn is None:
        model_fn = model_factory(config.model, splits.num_classes)

    rdb = open_storage(storage)
    if budget_s is not None:
        config = (_stored_settings(rdb, config, None if fresh else run_name or config.name)
                  or fit_to_budget(config, budget_s, model_fn, splits).config)
    run_name = _prepare(rdb, config, run_name, fresh)
    log.info("run %r in %s", run_name, mask_url(storage))
    ctx = Context(config, splits, model_fn, device, rdb, run_name)

    for index, stage in enumerate(STAGES, start=1):
        pruner = stage.pruner(ctx) if hasattr(stage, "pruner") else None
        study = open_study(rdb, run_name, stage.NAME, getattr(stage, "DIRECTION", "minimize"),
                           pruner=pruner)
        decision = get_decision(study)
        if decision is not None:
            log.info("[%d/%d] %s: done before: %s", index, len(STAGES), stage.NAME,
                     decision["why"])
            ctx.decisions[stage.NAME] = decision
            continue
        if CONFIG_ATTR not in study.user_attrs:
            study.set_user_attr(CONFIG_ATTR, config.to_dict())
        log.info("[%d/%d] %s ...", index, len(STAGES), stage.NAME)
        t0 = time.perf_counter()
        decision = stage.run(ctx, study)
        decision["seconds"] = time.perf_counter() - t0
        with storage_lock(rdb, study.study_name):
            # Workers decide alike from the same trials; the first to record wins, the others
            # adopt its record, so every worker starts the next stage from the same values.
            decision = get_decision(optuna.load_study(study_name=study.study_name,
                                                      storage=rdb)) or decision
            set_decision(study, decision)
        annotate_stage(study, stage.NAME, decision, device)  # dashboard note; never raises
        ctx.decisions[stage.NAME] = decision
        log.info("[%d/%d] %s: %s (%.1f s)", index, len(STAGES), stage.NAME, decision["why"],
                 decision["seconds"])
    return Result(run_name, mask_url(storage), ctx.decisions)


def budgeted_config(config: StudyConfig, budget_s: float, *, storage: str = DEFAULT_STORAGE,
                    run_name: str | None = None, fresh: bool = False) -> StudyConfig:
    """What ``run(config, budget_s=...)`` will run: ``config`` fitted to ``budget_s`` seconds
    on this machine, or an existing run's stored settings (for a command that starts workers
    before it runs)."""
    check_budget(budget_s)
    stored = _stored_settings(open_storage(storage), config, None if fresh else
                              run_name or config.name)
    if stored is not None:
        return stored
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    splits = load_splits(config.data, resolve_device(config.train.device))
    return fit_to_budget(config, budget_s, model_factory(config.model, splits.num_classes),
                         splits).config


def _stored_settings(rdb: optuna.storages.BaseStorage, config: StudyConfig,
                     run_name: str | None) -> StudyConfig | None:
    """The settings an existing run was started with (fitted to its budget then), with this
    worker's own device, threads and data loading; None for a new run."""
    stored = stored_config(rdb, run_name) if run_name is not None else None
    if stored is None:
        return None
    log.info("run %r exists: it resumes with the settings it was started with", run_name)
    old = from_dict(StudyConfig, stored)
    return old.replace(train=dataclasses.replace(old.train, threads=config.train.threads,
                                                 device=config.train.device),
                       data=dataclasses.replace(old.data, workers=config.data.workers,
                                                hold=config.data.hold))


def join(storage: str = DEFAULT_STORAGE, run_name: str | None = None,
         threads: int | None = None, device: str | None = None) -> Result:
    """Join an existing run as one more worker, with the configuration stored in the run
    (``threads`` and ``device`` may differ from worker to worker)."""
    rdb = open_storage(storage)
    names = run_names(rdb)
    if run_name is None:
        if not names:
            raise RunNotFound(f"storage {mask_url(storage)!r} holds no run to join.")
        run_name = names[-1]
    stored = stored_config(rdb, run_name)
    if stored is None:
        raise RunNotFound(f"run {run_name!r} does not exist in {mask_url(storage)!r}; runs "
                          f"there: {', '.join(names) or 'none'}.")
    config = from_dict(StudyConfig, stored)
    train = dataclasses.replace(config.train, threads=threads or config.train.threads,
                                device=device or config.train.device)
    return run(config.replace(train=train), storage=storage, run_name=run_name)
