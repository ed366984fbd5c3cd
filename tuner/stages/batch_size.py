"""Stage 4: batch size, compared under an equal wall-clock budget (not equal epochs).

Each candidate gets its own LR range from a short range test (larger batches tolerate larger
LRs: the paper's Fig. 6; the reference size keeps stage 1's range), its throughput is measured,
and its 1cycle schedule is sized so the whole cycle fits in the budget: ``budget_s`` seconds of
training, or by default the measured time a final training would take at the reference size
(measured once and stored in the study, so every worker compares sizes at the same time).
Validation loss is reported at equal fractions of the budget, so the pruner and the decision
compare sizes at equal time. The decision also says how many epochs the final training of the
chosen size takes to last as long as ``final.epochs`` at the reference size (``final_epochs``):
a size that won with twice the epochs in the same time is trained as it was judged.

A larger batch's own range test can reach past what its full-length training survives (measured
on MNIST-1D: batch 64's test gave max LR 0.228 where batch 32's gave 0.0755; 80 epochs at 0.228
diverged part-way in one of 5 seeds, 93.3% mean test accuracy, and at 0.151 scored 96.3%). So by
default (``lr_cap = "linear"``) a size larger than the reference gets at most stage 1's max LR
times the size ratio, the linear scaling rule (Goyal et al. 2017) used as a ceiling.

Stages 1-3 tuned momentum and weight decay at the reference size, and one run per size is a
noisy sample (on MNIST-1D batch 128 beat batch 32 by 0-10% in validation loss from one seed,
and scored about 0.5 points lower on test retrained from five). So another size replaces the
reference only when it wins by more than ``margin`` (10%) of the reference's loss.

A size that runs out of device memory is marked infeasible (user attr ``infeasible``), pruned
and skipped with a message; the other sizes carry on.
"""

from __future__ import annotations

import gc
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from tuner.locks import storage_lock
from tuner.lr_range import LRRange, NoUsableMinimum, decide_range
from tuner.stages.base import Decision, HParams, Sizes, Speed, Stage, epoch_steps
from tuner.stages.grid import GridChoice, decide_grid, metric_text, scored
from tuner.stages.lr_range import RangeDecision, range_test_seconds
from tuner.stages.momentum import MomentumDecision
from tuner.stages.weight_decay import WeightDecayDecision
from tuner.text import first_line
from tuner.trials import run_grid

if TYPE_CHECKING:
    from tuner.config import StudyConfig
    from tuner.context import Context

log = logging.getLogger(__name__)
BUDGET_ATTR = "budget_s"
THROUGHPUT_ATTR = "reference_samples_per_s"
THROUGHPUT_SECONDS = 0.3  # what tuner.budget allows for each throughput measurement


@dataclass(frozen=True, kw_only=True)
class BatchSizeDecision(Decision):
    batch_size: int
    min_lr: float  # the LR range at that size
    max_lr: float
    final_epochs: int  # epochs of the final training at that size (equal time)
    budget_s: float | None = None  # training seconds per candidate (None: no runs)

    def summary(self) -> str:
        return f"batch size {self.batch_size} (LR {self.min_lr:.3g} – {self.max_lr:.3g})"


def planned_steps(budget_s: float, steps_per_s: float) -> int:
    """Optimizer steps that fit in the budget at the measured throughput."""
    return max(1, math.floor(budget_s * steps_per_s))


def final_training_seconds(cfg: StudyConfig, n_train: int, samples_per_s: float) -> float:
    """Training seconds of ``final.epochs`` epochs at ``train.batch_size``."""
    bs = cfg.train.batch_size
    return cfg.final.epochs * epoch_steps(n_train, bs) * bs / samples_per_s


def resolve_budget(ctx: Context, study: optuna.Study) -> tuple[float, float]:
    """The budget per size (configured, or the measured time of a final training) and the
    reference size's throughput, measured on first use and stored, so that every worker (and a
    resumed run) compares sizes at the same time."""
    cfg = ctx.config
    with storage_lock(ctx.storage, f"{study.study_name}/budget"):
        throughput = study.user_attrs.get(THROUGHPUT_ATTR)
        if throughput is None:
            throughput = cfg.train.batch_size * ctx.steps_per_second(reference_hparams(ctx))
            study.set_user_attr(THROUGHPUT_ATTR, throughput)
        if cfg.batch_size.budget_s > 0:
            return cfg.batch_size.budget_s, float(throughput)
        budget = study.user_attrs.get(BUDGET_ATTR)
        if budget is None:
            budget = final_training_seconds(cfg, len(ctx.splits.train), throughput)
            study.set_user_attr(BUDGET_ATTR, budget)
            log.info("budget per batch size: %.2f s, the measured training time of %d epochs at "
                     "batch size %d", budget, cfg.final.epochs, cfg.train.batch_size)
    return float(budget), float(throughput)


def equal_time_epochs(epochs: int, samples_per_s: float, reference_samples_per_s: float) -> int:
    """Epochs that take as long at ``samples_per_s`` as ``epochs`` at the reference rate."""
    return max(1, round(epochs * samples_per_s / reference_samples_per_s))


def linear_cap(reference_max_lr: float, batch_size: int, reference_batch: int) -> float:
    """The linear scaling rule: the reference's max LR x ``batch_size / reference_batch``."""
    return reference_max_lr * batch_size / reference_batch


def cap_range(found: LRRange, batch_size: int, reference_batch: int, reference_max_lr: float,
              min_lr_div: float) -> LRRange:
    """``found``, its max LR capped at ``reference_max_lr`` x ``batch_size / reference_batch``
    for a size larger than the reference (min LR = max / ``min_lr_div`` again)."""
    if batch_size <= reference_batch:
        return found
    cap = linear_cap(reference_max_lr, batch_size, reference_batch)
    if found.max_lr <= cap:
        return found
    return LRRange(cap / min_lr_div, cap,
                   f"{found.why}; max LR {found.max_lr:.3g} capped at {cap:.3g}, stage 1's "
                   f"{reference_max_lr:.3g} x {batch_size}/{reference_batch} (linear scaling)")


def keep_reference(choice: GridChoice, trials: Sequence[FrozenTrial], reference: int,
                   margin: float) -> GridChoice:
    """``choice``, unless it beat the reference size's COMPLETE trial by no more than ``margin``
    of the reference's final validation loss: then the reference size."""
    ref = next((t for t in trials if t.params.get("batch_size") == reference and scored(t)),
               None)
    best = next(t for t in trials if t.params.get("batch_size") == choice.value
                and t.state == TrialState.COMPLETE)
    if ref is None or choice.value == reference or best.value < ref.value * (1 - margin):
        return choice
    return GridChoice(reference, f"the reference size {reference} kept: {choice.value}'s final "
                                 f"validation loss {best.value:.4g} is within {margin:.0%} of its "
                                 f"{ref.value:.4g} ({choice.why})")


def candidates(cfg: StudyConfig, n_train: int) -> list[int]:
    """The configured sizes that fit in the training split."""
    return [b for b in cfg.batch_size.values if b <= n_train]


def reuses_stage1(cfg: StudyConfig, batch_size: int) -> bool:
    """Whether ``batch_size``'s range test would be stage 1's (same size and length)."""
    return (batch_size == cfg.train.batch_size
            and cfg.batch_size.range_test_iters == cfg.lr_range.num_iters)


def reference_hparams(ctx: Context, batch_size: int | None = None,
                      found: LRRange | None = None) -> HParams:
    """Stage 1's range (or ``found``), stages 2-3's momentum and weight decay."""
    lr = found or ctx.decision(RangeDecision)
    mom = ctx.decision(MomentumDecision)
    return HParams(lr.min_lr, lr.max_lr, mom.max_momentum, mom.min_momentum,
                   ctx.decision(WeightDecayDecision).weight_decay,
                   batch_size or ctx.config.train.batch_size)


def cost(cfg: StudyConfig, speed: Speed, sizes: Sizes) -> float:
    """Seconds of this stage: per size a range test (unless stage 1's is reused), two
    throughput measurements, the equal-time run and its evaluations."""
    b = cfg.batch_size
    sizes_run = candidates(cfg, sizes.n_train)
    if sizes_run == [cfg.train.batch_size]:
        return 0.0  # the reference size alone: decided without runs
    if b.budget_s > 0:
        budget = b.budget_s
    else:
        bs = cfg.train.batch_size
        budget = cfg.final.epochs * epoch_steps(sizes.n_train, bs) * speed.step_s[bs]
    per_size = budget + b.reports * sizes.n_val * speed.eval_sample_s + 2 * THROUGHPUT_SECONDS
    return sum(per_size + (0.0 if reuses_stage1(cfg, bs) else
                           range_test_seconds(cfg, speed, bs, b.range_test_iters))
               for bs in sizes_run)


def size_range(ctx: Context, trial: Trial, bs: int) -> LRRange:
    """The LR range of batch size ``bs``: stage 1's where its test would be the same, else its
    own short range test (capped by linear scaling above the reference)."""
    cfg = ctx.config
    stage1 = ctx.decision(RangeDecision)
    if bs == stage1.batch_size and reuses_stage1(cfg, bs):
        return LRRange(stage1.min_lr, stage1.max_lr, "stage 1's range")
    curve = ctx.range_tests(trial, bs, num_iters=cfg.batch_size.range_test_iters,
                            prefix="range_")
    try:
        found = decide_range(curve.val_lrs, curve.val_losses, cfg.lr_range.min_lr_div)
    except NoUsableMinimum as exc:
        trial.set_user_attr("no_range", str(exc))
        raise optuna.TrialPruned(f"batch size {bs}: no LR range: {exc}") from None
    if cfg.batch_size.lr_cap == "linear":
        trial.set_user_attr("range_test_max_lr", found.max_lr)
        found = cap_range(found, bs, cfg.train.batch_size, stage1.max_lr,
                          cfg.lr_range.min_lr_div)
    return found


def measure(ctx: Context, trial: Trial, sizes: list[int], budget_s: float) -> float:
    """One candidate: its range, its throughput, a 1cycle run sized to ``budget_s``."""
    bcfg = ctx.config.batch_size
    bs = trial.suggest_categorical("batch_size", sizes)
    found = size_range(ctx, trial, bs)
    trial.set_user_attr("min_lr", found.min_lr)
    trial.set_user_attr("max_lr", found.max_lr)
    trial.set_user_attr("lr_why", found.why)
    hp = reference_hparams(ctx, bs, found)
    steps_per_s = ctx.steps_per_second(hp)
    steps = planned_steps(budget_s, steps_per_s)
    n_train = len(ctx.splits.train)
    trial.set_user_attr("steps_per_second", steps_per_s)
    trial.set_user_attr("planned_steps", steps)
    trial.set_user_attr("epochs", steps * bs / n_train)
    last = ctx.one_cycle_run(trial, hp, total_steps=steps,
                             eval_every=max(1, math.ceil(steps / bcfg.reports)),
                             seed=ctx.config.train.seed).last
    trial.set_user_attr("train_seconds", last["seconds"])
    log.info("batch size %d: LR %.3g-%.3g, %d steps (%.1f epochs) in %.1f s: val loss %.4f%s",
             bs, found.min_lr, found.max_lr, steps, steps * bs / n_train, last["seconds"],
             last["val_loss"], metric_text(ctx.config.train.metric_name(), [last["val_metric"]]))
    return last["val_loss"]


def run(ctx: Context, study: optuna.Study) -> BatchSizeDecision:
    cfg = ctx.config
    sizes = candidates(cfg, len(ctx.splits.train))
    if len(sizes) < len(cfg.batch_size.values):
        log.warning("batch sizes %s exceed the %d training samples and are skipped",
                    [b for b in cfg.batch_size.values if b not in sizes], len(ctx.splits.train))
    stage1 = ctx.decision(RangeDecision)
    if sizes == [cfg.train.batch_size]:  # nothing to compare: no runs
        return BatchSizeDecision(
            batch_size=sizes[0], min_lr=stage1.min_lr, max_lr=stage1.max_lr,
            final_epochs=cfg.final.epochs,
            why=f"the only candidate is the reference size {sizes[0]} (batch_size.values = "
                f"{list(cfg.batch_size.values)}): stage 1's LR range, no runs")
    budget_s, reference_rate = resolve_budget(ctx, study)

    def objective(trial: Trial) -> float:
        try:
            return measure(ctx, trial, sizes, budget_s)
        except Exception as exc:
            if not ctx.is_out_of_memory(exc):
                raise
            error = first_line(exc)
        # Outside the except block the failed step's tensors are garbage: free them now.
        gc.collect()
        ctx.release_memory()
        message = (f"batch size {trial.params['batch_size']} does not fit in memory on "
                   f"{ctx.device} ({error})")
        trial.set_user_attr("infeasible", message)
        log.warning("%s: infeasible, skipped", message)
        raise optuna.TrialPruned(message)

    trials = run_grid(study, [{"batch_size": b} for b in sizes], objective)
    choice = keep_reference(decide_grid(trials, "batch_size", "batch size"), trials,
                            cfg.train.batch_size, cfg.batch_size.margin)
    best = next(t for t in trials if t.params["batch_size"] == choice.value
                and "max_lr" in t.user_attrs)
    rate = best.user_attrs["steps_per_second"] * choice.value
    final_epochs = (cfg.final.epochs if choice.value == cfg.train.batch_size
                    else equal_time_epochs(cfg.final.epochs, rate, reference_rate))
    return BatchSizeDecision(
        batch_size=choice.value, min_lr=best.user_attrs["min_lr"],
        max_lr=best.user_attrs["max_lr"], budget_s=budget_s, final_epochs=final_epochs,
        why=f"{choice.why}, each with {budget_s:.3g} s of training; {final_epochs} epochs of "
            f"batch size {choice.value} take as long as {cfg.final.epochs} of batch size "
            f"{cfg.train.batch_size}")


STAGE = Stage(name="batch_size", title="Batch size at equal wall-clock time",
              decision=BatchSizeDecision, run=run,
              reports=lambda ctx: ctx.config.batch_size.reports, cost=cost,
              param="batch_size", param_label="batch size")
