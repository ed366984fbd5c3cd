"""Stage 1b: the max LR check. Short 1cycle runs at a few multiples of the range test's reading
(``lr_check.factors``, default x0.71, x1, x1.41, x2; three seeds each), momentum cycling from
``lr_check.max_momentum``, weight decay held as in the momentum stage. The max LR (min LR = max /
``lr_range.min_lr_div``) every later stage uses is x1.41 (``lr_check.prefer``; x1 when the
reading is capped at twice the minimum, ``preferred_factor``), unless another
factor's mean final validation loss beats it by more than the noise between seeds
(``keep_preferred``; of several that tie, the nearest x1.41): the check confirms the calibrated
multiple or moves off it. x0.71 is there for a model whose cliff is close above the reading.
Named in ``refine.replaces``, it runs nothing and starts the refinement at x1.41, whose max-LR
box (x/2 to x2 of that: x0.71 to x2.83) spans the factors.

Why: the range test's reading is not the 1cycle optimum. A rising-LR test is short and fast,
and short horizons prefer small LRs (Wu et al. 2018); 1cycle's long warm-up tolerates more.
Measured on six model/data pairs (``bench/lr_calibration.py``): on the five MNIST-1D and digits
pairs 1cycle's best max LR was 1.4-2x the validation minimum, and runs fell off a cliff from
about 2.8x; on CIFAR-10's 3-layer net (10k images) it was 0.5x, and the check's x0.71 of the rise
reading landed in the best band. The paper confirms momentum with short runs; this stage does
the same for the max LR, so the value that goes on is one the 1cycle runs chose, not a reading.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial

from tuner.lr_range import MAX_OVER_MINIMUM
from tuner.stages.base import Decision, HParams, Sizes, Speed
from tuner.stages.grid import GridChoice, decide_grid, grid_stage, scored, value_text
from tuner.stages.lr_range import RangeDecision

if TYPE_CHECKING:
    import optuna

    from tuner.config import StudyConfig
    from tuner.context import Context


@dataclass(frozen=True, kw_only=True)
class LRDecision(Decision):
    """The LR range every later stage uses."""

    min_lr: float
    max_lr: float
    factor: float  # max_lr / the range test's max LR
    reading: float  # the range test's max LR
    batch_size: int  # the size the runs (and the range test) ran at

    def summary(self) -> str:
        return (f"LR {self.min_lr:.3g} – {self.max_lr:.3g} (x{self.factor:.3g} the range "
                f"test's {self.reading:.3g})")


def candidates(ctx: Context) -> list[float]:
    """The max LRs to run: the reading times each factor."""
    reading = ctx.decision(RangeDecision).max_lr
    return [reading * f for f in ctx.config.lr_check.factors]


def hparams(ctx: Context, max_lr: float) -> HParams:
    cfg = ctx.config
    return HParams(max_lr / cfg.lr_range.min_lr_div, max_lr, cfg.lr_check.max_momentum,
                   cfg.momentum.min_momentum, cfg.momentum.weight_decay, cfg.train.batch_size)


def decide(ctx: Context, max_lr: float, why: str) -> LRDecision:
    stage1 = ctx.decision(RangeDecision)
    factor = max_lr / stage1.max_lr
    return LRDecision(min_lr=max_lr / ctx.config.lr_range.min_lr_div, max_lr=max_lr,
                      factor=factor, reading=stage1.max_lr, batch_size=stage1.batch_size,
                      why=f"x{factor:.3g} the range test's {stage1.max_lr:.3g}: {why}")


def noise(a: Sequence[float], b: Sequence[float]) -> float:
    """The standard error of the difference between the means of ``a`` and ``b``, runs from
    the same seeds in the same order (each factor's k-th run starts from the same weights and
    sees the same batches): the spread of the per-seed differences over sqrt(n). 0 with fewer
    than two pairs."""
    if len(a) != len(b) or len(a) < 2:
        return 0.0
    return statistics.stdev(x - y for x, y in zip(a, b, strict=True)) / math.sqrt(len(a))


def mean_metric(trial: FrozenTrial) -> float | None:
    """The mean final validation metric of ``trial``'s runs (higher is better); None without
    one (no metric, or a run that measured none)."""
    values = trial.user_attrs.get("val_metrics") or []
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(values)


def _beats(a: FrozenTrial, b: FrozenTrial, margin: float) -> tuple[bool, float]:
    """Whether ``a``'s loss is lower than ``b``'s by more than the noise: the larger of the
    standard error of their per-seed differences (``noise``) and ``margin`` x ``b``'s loss;
    and that threshold."""
    threshold = max(noise(a.user_attrs.get("val_losses", []),
                          b.user_attrs.get("val_losses", [])), margin * b.value)
    return b.value - a.value > threshold, threshold


def keep_preferred(trials: Sequence[FrozenTrial], preferred: float, margin: float,
                   label: str = "max LR") -> GridChoice:
    """The lowest mean final validation loss (``decide_grid``), unless the trial at
    ``preferred`` comes within the noise of it (``_beats``); or unless the winner's validation
    metric (accuracy) is lower than the preferred one's. Then ``preferred``. And when several
    factors beat ``preferred`` and tie with each other (none beats the lowest by more than the
    noise), the one nearest ``preferred`` of them.

    Short runs from two or three seeds rank neighbouring LRs by chance (measured: the same
    pair's x1 and x1.41 swapped places between two runs of this stage, 0.5 points of test
    accuracy apart; with one seed, x0.71 and x1 of a CNN swapped), so a grid point other than
    the calibrated one must win by more than that, and among those that tie the one least far
    from it is taken. And loss and accuracy can disagree: a net that overfits (an MLP 256x3 on
    MNIST-1D) had a lower validation loss at x2 on every run while scoring 1.3 points less on
    test, so leaving the calibrated multiple takes both.
    """
    choice = decide_grid(trials, "max_lr", label)
    pref = next((t for t in trials if scored(t) and math.isclose(t.params["max_lr"], preferred)),
                None)
    if pref is None or math.isclose(choice.value, preferred):
        return choice
    best = next(t for t in trials if t.params["max_lr"] == choice.value)
    wins, threshold = _beats(best, pref, margin)
    kept = (f"{label} {value_text(preferred)} kept: {value_text(choice.value)}'s loss "
            f"{best.value:.4g}")
    if not wins:
        return GridChoice(preferred, f"{kept} is within the noise {threshold:.3g} of its "
                                     f"{pref.value:.4g} ({choice.why})")
    tied = [t for t in trials if scored(t) and t is not pref and _beats(t, pref, margin)[0]
            and not _beats(best, t, margin)[0]]
    near = min(tied, key=lambda t: (abs(math.log(t.params["max_lr"] / preferred)), t.value))
    nearer = ""
    if near is not best:
        nearer = (f"; {value_text(near.params['max_lr'])} ({near.value:.4g}) is within the noise "
                  f"of that and nearer {value_text(preferred)}")
    metric, pref_metric = mean_metric(near), mean_metric(pref)
    if metric is not None and pref_metric is not None and metric < pref_metric:
        taken = value_text(near.params["max_lr"])
        return GridChoice(preferred, f"{kept} beat its {pref.value:.4g} by more than the noise "
                                     f"{threshold:.3g}{nearer}, but {taken}'s validation metric "
                                     f"was lower ({metric:.4g} against {pref_metric:.4g}): loss "
                                     f"and metric disagree ({choice.why})")
    return GridChoice(near.params["max_lr"],
                      f"{choice.why}; it beat {value_text(preferred)} by "
                      f"{pref.value - best.value:.3g}, more than the noise {threshold:.3g}{nearer}")


def preferred_factor(ctx: Context) -> float:
    """``lr_check.prefer``, or x1 when the range test's reading is its cap (``capped``: 2x the
    validation minimum, the climb too slow to read) and x1 is one of the factors. The capped
    reading already sits at the top of the 1.4-2x the minimum where the non-batch-norm pairs'
    1cycle bands lay; x1.41 of it is 2.83x the minimum, where their runs fell off a cliff, and on
    both capped pairs measured (an MLP 256x3 with BN, ResNet-20 on 5k CIFAR-10 images) x1.41
    lay above the band."""
    cfg = ctx.config.lr_check
    if ctx.decision(RangeDecision).capped and any(math.isclose(f, 1.0) for f in cfg.factors):
        return 1.0
    return cfg.prefer


def choose(ctx: Context, trials: Sequence[FrozenTrial], label: str) -> GridChoice:
    factor = preferred_factor(ctx)
    choice = keep_preferred(trials, ctx.decision(RangeDecision).max_lr * factor,
                            ctx.config.lr_check.margin, label)
    if factor == ctx.config.lr_check.prefer:
        return choice
    return GridChoice(choice.value, f"{choice.why}; x1 preferred, not lr_check.prefer = "
                                    f"x{ctx.config.lr_check.prefer:g}: the reading is capped at "
                                    f"{MAX_OVER_MINIMUM:g}x the validation minimum")


def run(ctx: Context, study: optuna.Study) -> LRDecision:
    if len(ctx.config.lr_check.factors) == 1:  # nothing to compare: no runs
        (value,) = candidates(ctx)
        return decide(ctx, value, f"the only factor (lr_check.factors = "
                                  f"{list(ctx.config.lr_check.factors)}), no runs")
    return _GRID.run(ctx, study)


def cost(cfg: StudyConfig, speed: Speed, sizes: Sizes) -> float:
    return 0.0 if len(cfg.lr_check.factors) == 1 else _GRID.cost(cfg, speed, sizes)


_GRID = grid_stage(
    name="lr_check", title="Max LR check", param="max_lr", label="max LR",
    decision=LRDecision, settings=lambda cfg: cfg.lr_check, hparams=hparams, decide=decide,
    values=candidates, choose=choose,
    start=lambda ctx: ctx.decision(RangeDecision).max_lr * preferred_factor(ctx))
# Not pruned (only a diverging run stops early): at the same epoch of 1cycle a larger max LR is
# still at a larger LR, its validation loss higher until the last epochs; a pruner comparing runs
# step by step stops the larger LRs before they anneal (measured: x1.41 and x2 pruned at epoch
# 21-22 of 30 on MNIST-1D, where full runs at them score 0.5 points better).
STAGE = dataclasses.replace(_GRID, run=run, cost=cost, reports=None)
