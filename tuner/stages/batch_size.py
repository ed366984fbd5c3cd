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
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from tuner.device import is_out_of_memory, release_memory
from tuner.locks import storage_lock
from tuner.lr_range import LRRange, NoUsableMinimum, decide_range
from tuner.stages.common import (
    Context,
    GridChoice,
    HParams,
    decide_grid,
    epoch_steps,
    one_cycle_run,
    scored,
)
from tuner.stages.lr_range import run_range_test
from tuner.train import make_sgd, measure_throughput
from tuner.trials import run_grid

NAME = "batch_size"
log = logging.getLogger(__name__)


def planned_steps(budget_s: float, steps_per_s: float) -> int:
    """Optimizer steps that fit in the budget at the measured throughput."""
    return max(1, math.floor(budget_s * steps_per_s))


BUDGET_ATTR = "budget_s"
THROUGHPUT_ATTR = "reference_samples_per_s"


def reference_throughput(ctx: Context) -> float:
    """Training samples per second at ``train.batch_size`` on this device (measured)."""
    cfg = ctx.config
    bs = cfg.train.batch_size
    scratch = ctx.new_model(cfg.train.seed)
    optimizer = make_sgd(scratch, ctx.decisions["lr_range"]["min_lr"],
                         ctx.decisions["momentum"]["max_momentum"],
                         ctx.decisions["weight_decay"]["weight_decay"])
    return bs * measure_throughput(scratch, optimizer, ctx.splits.train, bs,
                                   generator=ctx.generator(cfg.train.seed))


def final_training_seconds(ctx: Context, samples_per_s: float) -> float:
    """Training seconds of ``final.epochs`` epochs at ``train.batch_size``."""
    bs = ctx.config.train.batch_size
    steps = ctx.config.final.epochs * epoch_steps(len(ctx.splits.train), bs)
    return steps * bs / samples_per_s


def resolve_budget(ctx: Context, study: optuna.Study) -> tuple[float, float]:
    """The budget per size (configured, or the measured time of a final training) and the
    reference size's throughput, measured on first use and stored, so that every worker (and a
    resumed run) compares sizes at the same time."""
    with storage_lock(ctx.storage, f"{study.study_name}/budget"):
        throughput = study.user_attrs.get(THROUGHPUT_ATTR)
        if throughput is None:
            throughput = reference_throughput(ctx)
            study.set_user_attr(THROUGHPUT_ATTR, throughput)
        if ctx.config.batch_size.budget_s > 0:
            return ctx.config.batch_size.budget_s, float(throughput)
        budget = study.user_attrs.get(BUDGET_ATTR)
        if budget is None:
            budget = final_training_seconds(ctx, throughput)
            study.set_user_attr(BUDGET_ATTR, budget)
            log.info("budget per batch size: %.2f s, the measured training time of %d epochs at "
                     "batch size %d", budget, ctx.config.final.epochs, ctx.config.train.batch_size)
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


def pruner(ctx: Context) -> optuna.pruners.BasePruner:
    return ctx.pruner(reports=ctx.config.batch_size.reports)


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config
    bcfg = cfg.batch_size
    mom = ctx.decisions["momentum"]
    wd = ctx.decisions["weight_decay"]["weight_decay"]
    train, val = ctx.splits.train, ctx.splits.val
    stage1 = ctx.decisions["lr_range"]
    sizes = [b for b in bcfg.values if b <= len(train)]
    if len(sizes) < len(bcfg.values):
        log.warning("batch sizes %s exceed the %d training samples and are skipped",
                    [b for b in bcfg.values if b > len(train)], len(train))
    if sizes == [cfg.train.batch_size]:  # nothing to compare: no runs
        return {"batch_size": sizes[0], "min_lr": stage1["min_lr"], "max_lr": stage1["max_lr"],
                "final_epochs": cfg.final.epochs,
                "why": f"the only candidate is the reference size {sizes[0]} (batch_size.values "
                       f"= {list(bcfg.values)}): stage 1's LR range, no runs"}
    budget_s, reference_rate = resolve_budget(ctx, study)

    def objective(trial: Trial) -> float:
        try:
            return measure(trial)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            error = str(exc).strip().splitlines()[0]
        # Outside the except block the failed step's tensors are garbage: free them now.
        gc.collect()
        release_memory(ctx.device)
        bs = trial.params["batch_size"]
        message = f"batch size {bs} does not fit in memory on {ctx.device} ({error})"
        trial.set_user_attr("infeasible", message)
        log.warning("%s: infeasible, skipped", message)
        raise optuna.TrialPruned(message)

    def measure(trial: Trial) -> float:
        bs = trial.suggest_categorical("batch_size", sizes)
        if bs == stage1.get("batch_size") and bcfg.range_test_iters == cfg.lr_range.num_iters:
            # The same test stage 1 ran (same size, seeds and length): reuse its range.
            found = LRRange(stage1["min_lr"], stage1["max_lr"], "stage 1's range")
        else:
            curve = run_range_test(ctx, trial, bs, num_iters=bcfg.range_test_iters,
                                   prefix="range_")
            try:
                found = decide_range(curve.val_lrs, curve.val_losses, cfg.lr_range.min_lr_div)
            except NoUsableMinimum as exc:
                trial.set_user_attr("no_range", str(exc))
                raise optuna.TrialPruned(f"batch size {bs}: no LR range: {exc}") from None
            if bcfg.lr_cap == "linear":
                trial.set_user_attr("range_test_max_lr", found.max_lr)
                found = cap_range(found, bs, cfg.train.batch_size, stage1["max_lr"],
                                  cfg.lr_range.min_lr_div)
        trial.set_user_attr("min_lr", found.min_lr)
        trial.set_user_attr("max_lr", found.max_lr)
        trial.set_user_attr("lr_why", found.why)

        scratch = ctx.new_model(cfg.train.seed)
        steps_per_s = measure_throughput(
            scratch, make_sgd(scratch, found.min_lr, mom["max_momentum"], wd), train, bs,
            generator=ctx.generator(cfg.train.seed))
        steps = planned_steps(budget_s, steps_per_s)
        trial.set_user_attr("steps_per_second", steps_per_s)
        trial.set_user_attr("planned_steps", steps)
        trial.set_user_attr("epochs", steps * bs / len(train))

        hp = HParams(found.min_lr, found.max_lr, mom["max_momentum"], mom["min_momentum"], wd, bs)
        last = one_cycle_run(ctx, trial, hp, total_steps=steps,
                             eval_every=max(1, math.ceil(steps / bcfg.reports)),
                             seed=cfg.train.seed, train=train, val=val).last
        trial.set_user_attr("train_seconds", last["seconds"])
        log.info("batch size %d: LR %.3g-%.3g, %d steps (%.1f epochs) in %.1f s: val loss %.4f, "
                 "accuracy %.1f%%", bs, found.min_lr, found.max_lr, steps, steps * bs / len(train),
                 last["seconds"], last["val_loss"], 100 * last["val_accuracy"])
        return last["val_loss"]

    trials = run_grid(study, [{"batch_size": b} for b in sizes], objective)
    choice = keep_reference(decide_grid(trials, "batch_size", "batch size"), trials,
                            cfg.train.batch_size, bcfg.margin)
    best = next(t for t in trials if t.params["batch_size"] == choice.value
                and "max_lr" in t.user_attrs)
    rate = best.user_attrs["steps_per_second"] * choice.value
    final_epochs = (cfg.final.epochs if choice.value == cfg.train.batch_size
                    else equal_time_epochs(cfg.final.epochs, rate, reference_rate))
    return {"batch_size": choice.value, "min_lr": best.user_attrs["min_lr"],
            "max_lr": best.user_attrs["max_lr"], "budget_s": budget_s,
            "final_epochs": final_epochs,
            "why": f"{choice.why}, each with {budget_s:.3g} s of training; {final_epochs} "
                   f"epochs of batch size {choice.value} take as long as {cfg.final.epochs} "
                   f"of batch size {cfg.train.batch_size}"}
