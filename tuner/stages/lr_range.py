"""Stage 1: the LR range test; decides the LR range (max at the val minimum, min = max/10)."""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna
from optuna.trial import Trial

from tuner.lr_range import RangeCurve, decide_range, range_test, suggestions
from tuner.stages.common import Context
from tuner.train import make_sgd
from tuner.trials import run_grid

NAME = "lr_range"
log = logging.getLogger(__name__)


def run_range_test(ctx: Context, trial: Trial, batch_size: int, num_iters: int | None = None,
                   prefix: str = "") -> RangeCurve:
    """One range test on a fresh model; the curve and suggestions go into the trial's attrs."""
    cfg, splits = ctx.config, ctx.splits
    model = ctx.new_model(cfg.train.seed)
    optimizer = make_sgd(model, cfg.lr_range.start_lr, cfg.lr_range.momentum,
                         cfg.lr_range.weight_decay, cfg.train.nesterov)

    def report(step: int, _lr: float, val_loss: float) -> None:
        if not prefix and math.isfinite(val_loss):
            trial.report(val_loss, step)

    curve = range_test(model, optimizer, splits.train, splits.val, cfg.lr_range, batch_size,
                       num_iters=num_iters, eval_batch_size=cfg.train.eval_batch_size,
                       on_eval=report, generator=ctx.generator(cfg.train.seed))
    trial.set_user_attr(f"{prefix}curve", curve.to_dict())
    trial.set_user_attr(f"{prefix}suggestions",
                        suggestions(curve.lrs, curve.train_losses, cfg.lr_range.smooth)._asdict())
    return curve


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config.lr_range

    def objective(trial: Trial) -> float:
        curve = run_range_test(ctx, trial, ctx.config.train.batch_size)
        log.info("range test: %d steps, LR %.3g -> %.3g, stopped: %s", len(curve.lrs),
                 cfg.start_lr, curve.lrs[-1] if curve.lrs else cfg.start_lr, curve.stop_reason)
        finite = [v for v in curve.val_losses if math.isfinite(v)]
        return min(finite) if finite else math.inf

    (trial,) = run_grid(study, [{}], objective)
    curve = RangeCurve.from_dict(trial.user_attrs["curve"])
    found = decide_range(curve.val_lrs, curve.val_losses, cfg.min_lr_div)
    return {"min_lr": found.min_lr, "max_lr": found.max_lr, "why": found.why,
            "suggestions": trial.user_attrs["suggestions"], "stop_reason": curve.stop_reason,
            "batch_size": ctx.config.train.batch_size}
