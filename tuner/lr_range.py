"""The LR range test's curve (Smith 2018, section 4.1) and the decisions read off it; pure
functions, no torch (``tuner.range_test`` runs the test).

One short run in which the LR rises from ``start_lr`` to ``end_lr``. The training loss is kept at
every step; the validation loss on a fixed subset every ``eval_every`` steps, because the paper
reads the range off the *validation* loss. The run stops once the smoothed training loss
diverges. The model and optimizer are restored afterwards, whatever happens.

Decisions are pure functions of the stored curve:

* ``decide_range``: max LR = the largest LR at which the validation loss still improved (its
  minimum), min LR = max / 10. Flat curves and curves that rise from the start are refused with
  a message naming the setting to change.
* ``rise_range``: the same minimum's range read off the curve's steep side, where it is stable
  (``reading = "rise"``, the default); at most twice the minimum where the climb is slow.
* ``suggestions``: fastai's valley, minimum/10 and steepest, on the smoothed training loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from tuner.config import Reading


class NoUsableMinimum(ValueError):
    """The range test's validation curve has no minimum to read a range from."""


@dataclass
class RangeCurve:
    """Everything measured by one range test (JSON-friendly, stored with the trial)."""

    lrs: list[float] = field(default_factory=list)  # per step
    train_losses: list[float] = field(default_factory=list)  # per step, raw
    val_steps: list[int] = field(default_factory=list)
    val_lrs: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    val_metrics: list[float | None] = field(default_factory=list)  # None: no metric
    stop_reason: str = "end_lr reached"
    stop_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RangeCurve:
        return cls(**d)


def mean_curve(curves: Sequence[RangeCurve]) -> RangeCurve:
    """Point-wise mean of range tests run with the same schedule (different seeds).

    Kept only as far as every curve goes, at the validation steps they share: the first test
    to diverge ends the mean curve, and its stop reason is the mean curve's.
    """
    if not curves:
        raise ValueError("mean_curve needs at least one curve.")
    if len(curves) == 1:
        return curves[0]
    n_steps = min(len(c.lrs) for c in curves)
    n_val = 0
    while all(n_val < len(c.val_steps) for c in curves) and len(
            {c.val_steps[n_val] for c in curves}) == 1:
        n_val += 1
    first_stop = min(curves, key=lambda c: len(c.lrs))

    def mean(lists: list[list[float | None]], n: int) -> list[float | None]:
        """Point-wise means (None where a test measured no metric)."""
        columns = zip(*(values[:n] for values in lists), strict=True)
        return [None if None in xs else sum(xs) / len(xs) for xs in columns]

    curve = RangeCurve(
        lrs=list(curves[0].lrs[:n_steps]),
        train_losses=mean([c.train_losses for c in curves], n_steps),
        val_steps=list(curves[0].val_steps[:n_val]),
        val_lrs=list(curves[0].val_lrs[:n_val]),
        val_losses=mean([c.val_losses for c in curves], n_val),
        val_metrics=mean([c.val_metrics for c in curves], n_val),
        stop_reason=first_stop.stop_reason,
        stop_step=first_stop.stop_step,
    )
    if first_stop.stop_step is not None and len(first_stop.val_steps) > n_val:
        # The first test to diverge measured once more, off the shared grid: keep that point,
        # with each other test's first measurement at or after it, so the rise is not lost.
        rows = []
        for c in curves:
            later = [i for i, step in enumerate(c.val_steps) if step >= first_stop.stop_step]
            if later:
                rows.append((c.val_losses[later[0]], c.val_metrics[later[0]]))
        curve.val_steps.append(first_stop.val_steps[-1])
        curve.val_lrs.append(first_stop.val_lrs[-1])
        curve.val_losses.append(*mean([[r[0]] for r in rows], 1))
        curve.val_metrics.append(*mean([[r[1]] for r in rows], 1))
    return curve


class LRRange(NamedTuple):
    min_lr: float
    max_lr: float
    why: str
    capped: bool = False  # read by ``rise_range`` at its cap (a slow climb), not off the climb


class Suggestions(NamedTuple):
    """fastai-style suggestions from the training-loss curve (``nan`` when not defined)."""

    valley: float
    minimum: float  # LR at the minimum loss, divided by 10
    steepest: float


def ema(values: Sequence[float], beta: float) -> list[float]:
    """Bias-corrected exponential moving average (as torch-lr-finder and fastai smooth)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def _finite_prefix(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    """The points before the first non-finite loss (what follows a NaN means nothing)."""
    kx, ky = [], []
    for x, y in zip(xs, ys, strict=True):
        if not math.isfinite(y):
            break
        kx.append(x)
        ky.append(y)
    return kx, ky


def decide_range(val_lrs: Sequence[float], val_losses: Sequence[float], min_lr_div: float = 10.0,
                 min_drop: float = 0.05) -> LRRange:
    """Max LR = LR at the minimum validation loss (the last LR at which it still improved).

    Raises ``NoUsableMinimum`` when fewer than three finite points exist, when the loss never
    drops by ``min_drop`` (relative) below its first value, when it is lowest at the first point
    (diverging at once) or at the last one (still falling when the test ended).
    """
    lrs, losses = _finite_prefix(val_lrs, val_losses)
    if len(lrs) < 3:
        raise NoUsableMinimum(
            f"the range test gave only {len(lrs)} finite validation losses (the loss diverged "
            f"almost at once); lower lr_range.start_lr or lr_range.end_lr, or raise "
            f"lr_range.num_iters.")
    best = min(range(len(losses)), key=losses.__getitem__)
    first = losses[0]
    drop = (first - losses[best]) / abs(first) if first else 0.0
    if best == 0:
        raise NoUsableMinimum(
            f"the validation loss rose from the first LR on ({lrs[0]:.3g}: {first:.4g}, then "
            f"{losses[1]:.4g} at {lrs[1]:.3g}): the loss diverges at once; lower "
            f"lr_range.start_lr.")
    if drop < min_drop:
        raise NoUsableMinimum(
            f"the validation loss is flat: it fell only {drop:.1%} (from {first:.4g} to "
            f"{losses[best]:.4g}) between LR {lrs[0]:.3g} and {lrs[-1]:.3g}; raise "
            f"lr_range.end_lr or lr_range.num_iters.")
    if best == len(losses) - 1:
        raise NoUsableMinimum(
            f"the validation loss was still falling at the last LR {lrs[-1]:.3g} "
            f"({losses[-1]:.4g}); raise lr_range.end_lr or lr_range.num_iters.")
    max_lr = lrs[best]
    why = (f"validation loss fell from {first:.4g} to its minimum {losses[best]:.4g} at LR "
           f"{max_lr:.3g} and rose after (to {losses[-1]:.4g} at LR {lrs[-1]:.3g}); max LR = "
           f"{max_lr:.3g}, min LR = max / {min_lr_div:g}")
    return LRRange(max_lr / min_lr_div, max_lr, why)


# The "rise" reading: the LR at which the validation loss has climbed back RISE_FRACTION of the
# way from its minimum to its first value, over RISE_RATIO. The minimum's own place is chance
# along a flat bottom (MNIST-1D CNN, five seeds: 0.063-0.17, 2.8x apart); the climb is steep, so
# its LR is not (0.203-0.216, 1.06x; two MLPs 1.06x and 1.12x). Over those 15 tests the climb's
# LR was 1.2-5.5x the minimum's, median 2.86: RISE_RATIO = 2 sqrt(2) puts the reading where the
# minimum lies on average.
RISE_FRACTION = 0.5
RISE_RATIO = 2 * math.sqrt(2)
# ... but never above MAX_OVER_MINIMUM x the minimum's LR: a climb slower than on those tests
# (more than 2 x 2.83 = 5.66x the minimum's LR, past their 5.5x) no longer says where the minimum
# lies. Batch-norm nets climb slowly (the loss tolerates large LRs for a while): an MLP 256x3 with
# BN on MNIST-1D climbed at 51x its minimum, ResNet-20 on 5k CIFAR-10 images at 7.3x, where
# rise / RISE_RATIO read 0.34 and 0.59 against 1cycle bands of 0.027-0.076 and 0.066-0.37. A cap,
# not a switch to the minimum: five seeds of one net put the climb at 4.4-6.1x, and a switch
# would have moved the reading 2.3x between them (bench/README.md).
MAX_OVER_MINIMUM = 2.0


def rise_lr(val_lrs: Sequence[float], val_losses: Sequence[float],
            fraction: float = RISE_FRACTION) -> float | None:
    """The LR at which the validation loss, past its minimum, first reaches ``fraction`` of the
    way back to its first value (log-linear between the two measurements around it); None when
    the test stopped before it got there."""
    lrs, losses = _finite_prefix(val_lrs, val_losses)
    if len(lrs) < 2:
        return None
    best = min(range(len(losses)), key=losses.__getitem__)
    level = losses[best] + fraction * (losses[0] - losses[best])
    if level <= losses[best]:
        return None
    for i in range(best + 1, len(losses)):
        if losses[i] >= level:
            t = (level - losses[i - 1]) / (losses[i] - losses[i - 1])
            return math.exp(math.log(lrs[i - 1]) + t * math.log(lrs[i] / lrs[i - 1]))
    return None


def rise_range(val_lrs: Sequence[float], val_losses: Sequence[float], min_lr_div: float = 10.0,
               ratio: float = RISE_RATIO, cap: float = MAX_OVER_MINIMUM) -> LRRange:
    """``decide_range``'s minimum (its checks and errors too), read where it is stable: max LR =
    ``rise_lr`` / ``ratio``, at most ``cap`` x the minimum's LR (a slow climb, as batch-norm nets
    show, says little about the minimum's place). The minimum's own LR when the test stopped
    before the loss climbed back half-way (a test ended by the training loss diverging first, as
    on small images)."""
    minimum = decide_range(val_lrs, val_losses, min_lr_div)
    rise = rise_lr(val_lrs, val_losses)
    if rise is None:
        return LRRange(minimum.min_lr, minimum.max_lr,
                       f"{minimum.why}; the test stopped before the validation loss climbed "
                       f"back half-way, so the minimum is the reading")
    if rise / ratio > cap * minimum.max_lr:
        max_lr = cap * minimum.max_lr
        why = (f"validation loss was lowest at LR {minimum.max_lr:.3g} and climbed back half-way "
               f"to its first value only at LR {rise:.3g}, {rise / minimum.max_lr:.3g}x the "
               f"minimum's (a slow climb, as on batch-norm nets); max LR = {rise:.3g} / "
               f"{ratio:.3g} = {rise / ratio:.3g}, capped at {cap:g}x the minimum: {max_lr:.3g}, "
               f"min LR = max / {min_lr_div:g}")
        return LRRange(max_lr / min_lr_div, max_lr, why, capped=True)
    max_lr = rise / ratio
    why = (f"validation loss was lowest at LR {minimum.max_lr:.3g} and climbed back half-way to "
           f"its first value at LR {rise:.3g}; max LR = that / {ratio:.3g} = {max_lr:.3g} (the "
           f"minimum's place along a flat bottom is chance, the climb's is not), min LR = max / "
           f"{min_lr_div:g}")
    return LRRange(max_lr / min_lr_div, max_lr, why)


def read_range(curve: RangeCurve, reading: Reading, min_lr_div: float = 10.0) -> LRRange:
    """The range of ``curve`` by the configured ``reading`` ("rise": ``rise_range``;
    "minimum": ``decide_range``, the paper's). Raises ``NoUsableMinimum``."""
    read = rise_range if reading == "rise" else decide_range
    return read(curve.val_lrs, curve.val_losses, min_lr_div)


def valley_range(curve: RangeCurve, valley_lr: float, no_minimum: NoUsableMinimum,
                 min_lr_div: float = 10.0) -> LRRange:
    """When the validation loss gives no minimum (``no_minimum``) but the test ran on until the
    training loss diverged, the range's top is fastai's valley on the training loss.

    Measured on a GRU on MNIST-1D (bench/README.md): its validation loss was too noisy for a
    minimum; 1cycle's best max LR was 2x the valley. A test that stopped for another reason
    (``end_lr`` reached) is a test set up wrong for this model: ``no_minimum`` is raised, it says
    which setting to change.
    """
    if curve.stop_step is None or not valley_lr > 0 or not math.isfinite(valley_lr):
        raise no_minimum
    why = (f"no validation minimum to read ({no_minimum}); the training loss diverged "
           f"({curve.stop_reason}), so max LR = the valley of the training loss (fastai's "
           f"reading) {valley_lr:.3g}, min LR = max / {min_lr_div:g}")
    return LRRange(valley_lr / min_lr_div, valley_lr, why)


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """fastai's valley: the LR 2/3 down the longest strictly decreasing run of the loss."""
    n = len(losses)
    if n < 2:
        return math.nan
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end = i
            max_start = max_end - lds[max_end] + 1  # fastai has an off-by-one here
    sections = (max_end - max_start) / 3
    return float(lrs[max_start + int(sections) + int(sections / 2)])


def suggestions(lrs: Sequence[float], train_losses: Sequence[float], beta: float = 0.9
                ) -> Suggestions:
    """fastai's three suggestions on the smoothed training loss, first 10% and last 5 dropped."""
    lrs, losses = _finite_prefix(lrs, train_losses)
    losses = ema(losses, beta)
    lo, hi = len(lrs) // 10, len(lrs) - 5
    lrs, losses = lrs[lo:hi], losses[lo:hi]
    if len(lrs) < 3:
        return Suggestions(math.nan, math.nan, math.nan)
    minimum = lrs[min(range(len(losses)), key=losses.__getitem__)] / 10
    logs = [math.log(x) for x in lrs]
    slopes = [(losses[i + 1] - losses[i]) / (logs[i + 1] - logs[i] or 1e-12)
              for i in range(len(losses) - 1)]
    steepest = lrs[min(range(len(slopes)), key=slopes.__getitem__)]
    return Suggestions(valley(lrs, losses), minimum, steepest)
