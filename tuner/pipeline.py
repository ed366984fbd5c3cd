"""The staged pipeline: LR range -> momentum -> weight decay -> batch size -> final training.

Each stage is a study in one storage; a stage that already holds a decision is skipped, so the
same call resumes an interrupted run. The storage alone is enough to carry on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from torch import nn

from tuner.config import ConfigError, StudyConfig
from tuner.data import Splits, load_splits
from tuner.device import resolve_device
from tuner.models import build_model
from tuner.stages import STAGES
from tuner.stages.common import Context
from tuner.storage import (
    CONFIG_ATTR,
    DEFAULT_STORAGE,
    config_differences,
    fresh_run_name,
    get_decision,
    mask_url,
    open_storage,
    open_study,
    set_decision,
    stored_config,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """What a finished run chose and measured (``decisions`` holds each stage's full record)."""

    run: str
    storage: str  # password masked
    decisions: dict[str, dict[str, Any]]

    @property
    def min_lr(self) -> float:
        return self.decisions["batch_size"]["min_lr"]

    @property
    def max_lr(self) -> float:
        return self.decisions["batch_size"]["max_lr"]

    @property
    def momentum(self) -> float:
        return self.decisions["momentum"]["max_momentum"]

    @property
    def weight_decay(self) -> float:
        return self.decisions["weight_decay"]["weight_decay"]

    @property
    def batch_size(self) -> int:
        return self.decisions["batch_size"]["batch_size"]

    @property
    def test_accuracy(self) -> float:
        return self.decisions["final"]["test_accuracy"]

    @property
    def test_loss(self) -> float:
        return self.decisions["final"]["test_loss"]


class RunConfigMismatch(ConfigError):
    pass


def _check_same_config(storage: optuna.storages.BaseStorage, run: str, config: StudyConfig
                       ) -> None:
    old = stored_config(storage, run)
    if old is None:
        return
    diffs = config_differences(old, config.to_dict())
    if diffs:
        raise RunConfigMismatch(
            f"run {run!r} in this storage was started with other settings ({', '.join(diffs)}); "
            f"resume it with the same study file, or start a new run with --fresh or --run NAME.")


def run(config: StudyConfig, *, storage: str = DEFAULT_STORAGE, run_name: str | None = None,
        fresh: bool = False, model_fn: Callable[[], nn.Module] | None = None,
        splits: Splits | None = None) -> Result:
    """Run (or resume) every stage of the pipeline and return the decisions.

    ``model_fn`` and ``splits`` replace the built-in model and dataset named in ``config``.
    """
    rdb = open_storage(storage)
    run_name = run_name or config.name
    if fresh:
        run_name = fresh_run_name(rdb, run_name)
    _check_same_config(rdb, run_name, config)
    log.info("run %r in %s", run_name, mask_url(storage))

    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = resolve_device(config.train.device)
    splits = (splits or load_splits(config.data)).to(device)
    if model_fn is None:
        def model_fn() -> nn.Module:
            return build_model(config.model.name, splits.num_classes)
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
        set_decision(study, decision)
        ctx.decisions[stage.NAME] = decision
        log.info("[%d/%d] %s: %s (%.1f s)", index, len(STAGES), stage.NAME, decision["why"],
                 decision["seconds"])
    return Result(run_name, mask_url(storage), ctx.decisions)
