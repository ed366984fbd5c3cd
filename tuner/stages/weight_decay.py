"""Stage 3: weight decay. A grid of constant values with the chosen LR range and momentum."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import Trial

from tuner.stages.common import Context, HParams, decide_grid, epoch_steps, percent, repeated_run
from tuner.trials import run_grid

NAME = "weight_decay"
log = logging.getLogger(__name__)


def pruner(ctx: Context) -> optuna.pruners.BasePruner:
    return ctx.pruner(reports=ctx.config.weight_decay.epochs)


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config
    lr, mom = ctx.decisions["lr_range"], ctx.decisions["momentum"]
    bs = cfg.train.batch_size
    epoch_steps(len(ctx.splits.train), bs)  # a clear error before any trial is stored

    def objective(trial: Trial) -> float:
        wd = trial.suggest_categorical("weight_decay", list(cfg.weight_decay.values))
        hp = HParams(lr["min_lr"], lr["max_lr"], mom["max_momentum"], mom["min_momentum"], wd, bs)
        loss = repeated_run(ctx, trial, hp, repeats=cfg.weight_decay.repeats,
                            epochs=cfg.weight_decay.epochs)
        log.info("weight decay %g: val loss %.4f (mean of %d), accuracy %s", wd, loss,
                 cfg.weight_decay.repeats, percent(trial.user_attrs["val_accuracies"]))
        return loss

    trials = run_grid(study, [{"weight_decay": v} for v in cfg.weight_decay.values], objective)
    choice = decide_grid(trials, "weight_decay", "weight decay")
    return {"weight_decay": choice.value, "why": choice.why}
