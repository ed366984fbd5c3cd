"""Stage 1: the LR range test; decides the LR range (max at the val minimum, min = max/10)."""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.trial import Trial

from tuner.lr_range import RangeCurve, decide_range, mean_curve, range_test, suggestions
from tuner.stages.common import Context
from tuner.train import make_sgd
from tuner.trials import run_grid

NAME = "lr_range"
log = logging.getLogger(__name__)


def run_range_test(ctx: Context, trial: Trial, batch_size: int, num_iters: int | None = None,
                   prefix: str = "") -> RangeCurve:
    """``lr_range.repeats`` range tests from different seeds, validation curves averaged.

    The mean curve and its suggestions go into the trial's user attrs (``{prefix}curve``), each
    test's validation losses beside it (``{prefix}val_losses_each``); without a prefix the mean
    validation loss is also reported as the trial's intermediate values, by step.
    """
    cfg = ctx.config
    curves = []
    for repeat in range(cfg.lr_range.repeats):
        seed = cfg.train.seed + repeat
        model = ctx.new_model(seed)
        optimizer = make_sgd(model, cfg.lr_range.start_lr, cfg.lr_range.momentum,
                             cfg.lr_range.weight_decay, cfg.train.nesterov)
        curves.append(range_test(model, optimizer, ctx.splits.train, ctx.splits.val,
                                 cfg.lr_range, batch_size, num_iters=num_iters,
                                 eval_batch_size=cfg.train.eval_batch_size,
                                 generator=ctx.generator(seed)))
    curve = mean_curve(curves)
    if not prefix:
        for step, loss in zip(curve.val_steps, curve.val_losses, strict=True):
            if math.isfinite(loss):
                trial.report(loss, step)
    trial.set_user_attr(f"{prefix}curve", curve.to_dict())
    trial.set_user_attr(f"{prefix}val_losses_each", [c.val_losses for c in curves])
    trial.set_user_attr(f"{prefix}suggestions",
                        suggestions(curve.lrs, curve.train_losses, cfg.lr_range.smooth)._asdict())
    return curve


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config.lr_range

    def objective(trial: Trial) -> float:
        curve = run_range_test(ctx, trial, ctx.config.train.batch_size)
        log.info("range test (mean of %d): %d steps, LR %.3g -> %.3g, stopped: %s",
                 cfg.repeats, len(curve.lrs),
                 cfg.start_lr, curve.lrs[-1] if curve.lrs else cfg.start_lr, curve.stop_reason)
        finite = [v for v in curve.val_losses if math.isfinite(v)]
        return min(finite) if finite else math.inf

    (trial,) = run_grid(study, [{}], objective)
    curve = RangeCurve.from_dict(trial.user_attrs["curve"])
    found = decide_range(curve.val_lrs, curve.val_losses, cfg.min_lr_div)
    return {"min_lr": found.min_lr, "max_lr": found.max_lr, "why": found.why,
            "suggestions": trial.user_attrs["suggestions"], "stop_reason": curve.stop_reason,
            "batch_size": ctx.config.train.batch_size}
