"""Stage 3b: the max LR check again, at the weight decay stage 3 chose, when that differs from
the one the check held (``momentum.weight_decay``). The same runs as stage 1b (its factors of the
range test's reading, ``lr_check.epochs`` and ``repeats``, the same rule: ``preferred_factor``
unless another factor beats it by more than the noise) with the chosen momentum and weight
decay; its max LR replaces the check's for the batch-size stage, the refinement and the final
training. Otherwise (the same weight decay, ``lr_check.factors = [1.0]``, or a check or weight
decay left to the refinement) it runs nothing and the check's range stands.

Why: the LR and the weight decay interact (Smith 2018 runs his range tests per weight decay).
Measured on the default study (bench/README.md, "The LR check at the weight decay the pipeline
then chooses"): at weight decay 1e-4 the check's loss climbs with the max LR past x1 (0.20 to
0.34), at 1e-3, which the weight-decay stage then chose on every seed, it is lower everywhere
and flat from x1 to x2, and the check keeps x1.41 where at 1e-4 it kept x1; the final training
at 1e-3 scored 96.3-96.5% at x1.41 and 95.4-95.9% at x1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuner.stages import lr_check
from tuner.stages.base import Decision, HParams, Sizes, Speed
from tuner.stages.grid import grid_stage
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.momentum import MomentumDecision
from tuner.stages.weight_decay import WeightDecayDecision

if TYPE_CHECKING:
    import optuna

    from tuner.config import StudyConfig
    from tuner.context import Context


@dataclass(frozen=True, kw_only=True)
class RecheckDecision(Decision):
    """The LR range from stage 3b on: the check's, or the one it kept at ``weight_decay``."""

    min_lr: float
    max_lr: float
    factor: float  # max_lr / the range test's max LR
    reading: float
    weight_decay: float  # the weight decay it holds for
    ran: bool  # whether it ran the check again (else the check's range as it was)

    def summary(self) -> str:
        verb = "checked again at" if self.ran else "kept at"
        return (f"LR {self.min_lr:.3g} – {self.max_lr:.3g} (x{self.factor:.3g}), {verb} weight "
                f"decay {self.weight_decay:g}")


def in_force(ctx: Context) -> LRDecision:
    """The checked LR range the later stages use: stage 1b's, with stage 3b's range once that
    is decided (the same fields: the multiple and the reading it is of)."""
    checked = ctx.decision(LRDecision)
    if not any(isinstance(d, RecheckDecision) for d in ctx.decisions.values()):
        return checked
    again = ctx.decision(RecheckDecision)
    return dataclasses.replace(checked, min_lr=again.min_lr, max_lr=again.max_lr,
                               factor=again.factor, why=again.why)


def skipped(cfg: StudyConfig, weight_decay: float | None) -> str | None:
    """Why stage 3b runs nothing (None: it runs), ``weight_decay`` the chosen one (None: not
    known yet, as when planning a budget)."""
    if len(cfg.lr_check.factors) == 1:
        return f"lr_check.factors = {list(cfg.lr_check.factors)}: nothing to compare"
    left = [s for s in ("lr_check", "weight_decay") if s in cfg.refine.replaces]
    if left:
        return f"{' and '.join(left)} left to the refinement (refine.replaces)"
    if weight_decay is not None and weight_decay == cfg.resolved().momentum.weight_decay:
        return (f"weight decay {weight_decay:g} is the one the check ran at "
                f"(momentum.weight_decay)")
    return None


def hparams(ctx: Context, max_lr: float) -> HParams:
    """Stage 3's weight decay and stage 2's momentum."""
    cfg, mom = ctx.config, ctx.decision(MomentumDecision)
    return HParams(max_lr / cfg.lr_range.min_lr_div, max_lr, mom.max_momentum, mom.min_momentum,
                   ctx.decision(WeightDecayDecision).weight_decay, cfg.train.batch_size)


def decide(ctx: Context, max_lr: float, why: str, ran: bool = True) -> RecheckDecision:
    reading = ctx.decision(RangeDecision).max_lr
    factor = max_lr / reading
    wd = ctx.decision(WeightDecayDecision).weight_decay
    text = f"at weight decay {wd:g}: x{factor:.3g} the range test's {reading:.3g}: {why}"
    return RecheckDecision(min_lr=max_lr / ctx.config.lr_range.min_lr_div, max_lr=max_lr,
                           factor=factor, reading=reading, weight_decay=wd, ran=ran, why=text)


_GRID = grid_stage(
    name="lr_recheck", title="Max LR check at the chosen weight decay", param="max_lr",
    label="max LR", decision=RecheckDecision, settings=lambda cfg: cfg.lr_check,
    hparams=hparams, decide=decide, values=lr_check.candidates, choose=lr_check.choose)


def run(ctx: Context, study: optuna.Study) -> RecheckDecision:
    why = skipped(ctx.config, ctx.decision(WeightDecayDecision).weight_decay)
    if why is None:
        return _GRID.run(ctx, study)
    checked = ctx.decision(LRDecision)
    return decide(ctx, checked.max_lr, f"the check's max LR {checked.max_lr:.3g}, no runs: {why}",
                  ran=False)


def cost(cfg: StudyConfig, speed: Speed, sizes: Sizes) -> float:
    """The check's runs once more, unless it is sure to run nothing (an upper bound: whether
    the weight decay differs is known only after stage 3)."""
    return 0.0 if skipped(cfg, None) is not None else _GRID.cost(cfg, speed, sizes)


# Not pruned, as the check (its runs differ in max LR).
STAGE = dataclasses.replace(_GRID, run=run, cost=cost, reports=None)
