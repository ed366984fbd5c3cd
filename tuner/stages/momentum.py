"""Stage 2: cyclical momentum. Short 1cycle runs, momentum falling from each candidate to
``min_momentum`` while the LR rises and back while it falls; lowest final val loss wins."""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import Trial

from tuner.stages.common import Context, HParams, decide_grid, epoch_steps, percent, repeated_run
from tuner.trials import run_grid

NAME = "momentum"
log = logging.getLogger(__name__)


def pruner(ctx: Context) -> optuna.pruners.BasePruner:
    return ctx.pruner(reports=ctx.config.momentum.epochs)


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config
    lr = ctx.decisions["lr_range"]
    bs = cfg.train.batch_size
    epoch_steps(len(ctx.splits.train), bs)  # a clear error before any trial is stored

    def objective(trial: Trial) -> float:
        mom = trial.suggest_categorical("max_momentum", list(cfg.momentum.values))
        hp = HParams(lr["min_lr"], lr["max_lr"], mom, cfg.momentum.min_momentum,
                     cfg.momentum.weight_decay, bs)
        loss = repeated_run(ctx, trial, hp, repeats=cfg.momentum.repeats,
                            epochs=cfg.momentum.epochs)
        log.info("momentum %.2f -> %.2f: val loss %.4f (mean of %d), accuracy %s", mom,
                 cfg.momentum.min_momentum, loss, cfg.momentum.repeats,
                 percent(trial.user_attrs["val_accuracies"]))
        return loss

    trials = run_grid(study, [{"max_momentum": v} for v in cfg.momentum.values], objective)
    choice = decide_grid(trials, "max_momentum", "max momentum")
    return {"max_momentum": choice.value, "min_momentum": cfg.momentum.min_momentum,
            "why": choice.why}
