"""Stage 2: cyclical momentum. Short 1cycle runs, momentum falling from each candidate to
``min_momentum`` while the LR rises and back while it falls; lowest final val loss wins."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import Trial

from tuner.stages.common import Context, HParams, decide_grid, epoch_steps, one_cycle_run
from tuner.trials import run_grid

NAME = "momentum"
log = logging.getLogger(__name__)


def pruner(ctx: Context) -> optuna.pruners.BasePruner:
    return ctx.pruner(reports=ctx.config.momentum.epochs)


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config
    lr = ctx.decisions["lr_range"]
    bs = cfg.train.batch_size
    per_epoch = epoch_steps(len(ctx.splits.train), bs)

    def objective(trial: Trial) -> float:
        mom = trial.suggest_categorical("max_momentum", list(cfg.momentum.values))
        hp = HParams(lr["min_lr"], lr["max_lr"], mom, cfg.momentum.min_momentum,
                     cfg.momentum.weight_decay, bs)
        last = one_cycle_run(ctx, trial, hp, total_steps=cfg.momentum.epochs * per_epoch,
                             eval_every=per_epoch, seed=cfg.train.seed, train=ctx.splits.train,
                             val=ctx.splits.val).last
        log.info("momentum %.2f -> %.2f: val loss %.4f, accuracy %.1f%%", mom,
                 cfg.momentum.min_momentum, last["val_loss"], 100 * last["val_accuracy"])
        return last["val_loss"]

    trials = run_grid(study, [{"max_momentum": v} for v in cfg.momentum.values], objective)
    choice = decide_grid(trials, "max_momentum", "max momentum")
    return {"max_momentum": choice.value, "min_momentum": cfg.momentum.min_momentum,
            "why": choice.why}
