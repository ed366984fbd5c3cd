"""Stage 3: weight decay. A grid of constant values with the chosen LR range and momentum."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import Trial

from tuner.stages.common import Context, HParams, decide_grid, epoch_steps, one_cycle_run
from tuner.trials import run_grid

NAME = "weight_decay"
log = logging.getLogger(__name__)


def pruner(ctx: Context) -> optuna.pruners.BasePruner:
    return ctx.pruner(reports=ctx.config.weight_decay.epochs)


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config
    lr, mom = ctx.decisions["lr_range"], ctx.decisions["momentum"]
    bs = cfg.train.batch_size
    per_epoch = epoch_steps(len(ctx.splits.train), bs)

    def objective(trial: Trial) -> float:
        wd = trial.suggest_categorical("weight_decay", list(cfg.weight_decay.values))
        hp = HParams(lr["min_lr"], lr["max_lr"], mom["max_momentum"], mom["min_momentum"], wd, bs)
        last = one_cycle_run(ctx, trial, hp, total_steps=cfg.weight_decay.epochs * per_epoch,
                             eval_every=per_epoch, seed=cfg.train.seed, train=ctx.splits.train,
                             val=ctx.splits.val).last
        log.info("weight decay %g: val loss %.4f, accuracy %.1f%%", wd, last["val_loss"],
                 100 * last["val_accuracy"])
        return last["val_loss"]

    trials = run_grid(study, [{"weight_decay": v} for v in cfg.weight_decay.values], objective)
    choice = decide_grid(trials, "weight_decay", "weight decay")
    return {"weight_decay": choice.value, "why": choice.why}
