"""Stage 1: the LR range test; reads the LR range (``lr_range.reading``: by default where the
validation loss climbed back half-way from its minimum, / 2.83, at most twice the minimum; or at
the minimum itself; min = max/10; without a minimum, at the training loss's valley if the test
diverged). Stage 1b checks the reading."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from optuna.trial import Trial

from tuner.lr_range import NoUsableMinimum, RangeCurve, read_range, valley_range
from tuner.stages.base import Decision, Speed, Stage
from tuner.trials import run_grid

if TYPE_CHECKING:
    import optuna

    from tuner.config import StudyConfig
    from tuner.context import Context

log = logging.getLogger(__name__)
SUGGESTION_NAMES = {"valley": "valley", "minimum": "minimum / 10", "steepest": "steepest"}


@dataclass(frozen=True, kw_only=True)
class RangeDecision(Decision):
    min_lr: float
    max_lr: float
    batch_size: int  # the size the test ran at (train.batch_size)
    stop_reason: str = ""
    capped: bool = False  # the reading is the rise reading's cap (2x the minimum): a slow climb
    suggestions: dict[str, float] = field(default_factory=dict)  # fastai's, for comparison

    def summary(self) -> str:
        return f"LR {self.min_lr:.3g} – {self.max_lr:.3g}"

    def details(self) -> str:
        """What the dashboard note adds: where the test stopped, fastai's suggestions."""
        rules = ", ".join(f"{SUGGESTION_NAMES.get(k, k)} {v:.3g}"
                          for k, v in self.suggestions.items())
        return (f"Range test stopped: {self.stop_reason or '?'}. fastai's suggestions on the "
                f"training loss (for comparison): {rules}.")


def range_test_seconds(cfg: StudyConfig, speed: Speed, batch_size: int, iters: int) -> float:
    """Seconds of ``lr_range.repeats`` range tests of ``iters`` steps (if none diverges)."""
    r = cfg.lr_range
    evals = iters // r.eval_every * r.val_subset
    return r.repeats * (iters * speed.step_s[batch_size] + evals * speed.eval_sample_s)


def run(ctx: Context, study: optuna.Study) -> RangeDecision:
    cfg = ctx.config.lr_range
    bs = ctx.config.train.batch_size

    def objective(trial: Trial) -> float:
        curve = ctx.range_tests(trial, bs)
        log.info("range test (%s, mean of %d): %d steps, LR %.3g -> %.3g, stopped: %s",
                 ctx.config.train.optimizer, cfg.repeats, len(curve.lrs),
                 cfg.start_lr, curve.lrs[-1] if curve.lrs else cfg.start_lr, curve.stop_reason)
        finite = [v for v in curve.val_losses if math.isfinite(v)]
        return min(finite) if finite else math.inf

    (trial,) = run_grid(study, [{}], objective)
    curve = RangeCurve.from_dict(trial.user_attrs["curve"])
    try:
        found = read_range(curve, cfg.reading, cfg.min_lr_div)
    except NoUsableMinimum as exc:
        found = valley_range(curve, trial.user_attrs["suggestions"]["valley"], exc,
                             cfg.min_lr_div)
        log.warning("range test: %s", found.why)
    return RangeDecision(min_lr=found.min_lr, max_lr=found.max_lr, why=found.why,
                         suggestions={k: v for k, v in trial.user_attrs["suggestions"].items()
                                      if math.isfinite(v)},
                         stop_reason=curve.stop_reason, batch_size=bs, capped=found.capped)


STAGE = Stage(
    name="lr_range", title="LR range test", decision=RangeDecision, run=run,
    metric="lowest validation loss",
    cost=lambda cfg, speed, sizes: range_test_seconds(cfg, speed, cfg.train.batch_size,
                                                      cfg.lr_range.num_iters))
