"""Stage 4: batch size, compared under an equal wall-clock budget (not equal epochs).

Each candidate gets its own LR range from a short range test (larger batches tolerate larger
LRs: the paper's Fig. 6; the reference size keeps stage 1's range), its throughput is measured,
and its 1cycle schedule is sized so the whole cycle fits in the budget: ``budget_s`` seconds of
training, or by default the measured time a final training would take at the reference size
(measured once and stored in the study, so every worker compares sizes at the same time).
Validation loss is reported at equal fractions of the budget, so the pruner and the decision
compare sizes at equal time.

A size that runs out of device memory is marked infeasible (user attr ``infeasible``), pruned
and skipped with a message; the other sizes carry on.
"""

from __future__ import annotations

import gc
import logging
import math
from typing import Any

import optuna
from optuna.trial import Trial

from tuner.device import is_out_of_memory, release_memory
from tuner.locks import storage_lock
from tuner.lr_range import LRRange, NoUsableMinimum, decide_range
from tuner.stages.common import Context, HParams, decide_grid, epoch_steps, one_cycle_run
from tuner.stages.lr_range import run_range_test
from tuner.train import make_sgd, measure_throughput
from tuner.trials import run_grid

NAME = "batch_size"
log = logging.getLogger(__name__)


def planned_steps(budget_s: float, steps_per_s: float) -> int:
    """Optimizer steps that fit in the budget at the measured throughput."""
    return max(1, math.floor(budget_s * steps_per_s))


BUDGET_ATTR = "budget_s"


def final_training_seconds(ctx: Context) -> float:
    """Training seconds of ``final.epochs`` epochs at ``train.batch_size`` on this device."""
    cfg = ctx.config
    bs = cfg.train.batch_size
    scratch = ctx.new_model(cfg.train.seed)
    optimizer = make_sgd(scratch, ctx.decisions["lr_range"]["min_lr"],
                         ctx.decisions["momentum"]["max_momentum"],
                         ctx.decisions["weight_decay"]["weight_decay"])
    steps_per_s = measure_throughput(scratch, optimizer, ctx.splits.train, bs,
                                     generator=ctx.generator(cfg.train.seed))
    return cfg.final.epochs * epoch_steps(len(ctx.splits.train), bs) / steps_per_s


def resolve_budget(ctx: Context, study: optuna.Study) -> float:
    """The configured budget, or the measured one (stored on first use, read back after)."""
    if ctx.config.batch_size.budget_s > 0:
        return ctx.config.batch_size.budget_s
    with storage_lock(ctx.storage, f"{study.study_name}/budget"):
        stored = study.user_attrs.get(BUDGET_ATTR)
        if stored is not None:
            return float(stored)
        budget = final_training_seconds(ctx)
        study.set_user_attr(BUDGET_ATTR, budget)
    log.info("budget per batch size: %.2f s, the measured training time of %d epochs at batch "
             "size %d", budget, ctx.config.final.epochs, ctx.config.train.batch_size)
    return budget


def pruner(ctx: Context) -> optuna.pruners.BasePruner:
    return ctx.pruner(reports=ctx.config.batch_size.reports)


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config
    bcfg = cfg.batch_size
    mom = ctx.decisions["momentum"]
    wd = ctx.decisions["weight_decay"]["weight_decay"]
    train, val = ctx.splits.train, ctx.splits.val
    budget_s = resolve_budget(ctx, study)
    stage1 = ctx.decisions["lr_range"]
    sizes = [b for b in bcfg.values if b <= len(train)]
    if len(sizes) < len(bcfg.values):
        log.warning("batch sizes %s exceed the %d training samples and are skipped",
                    [b for b in bcfg.values if b > len(train)], len(train))

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
        trial.set_user_attr("min_lr", found.min_lr)
        trial.set_user_attr("max_lr", found.max_lr)

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
    choice = decide_grid(trials, "batch_size", "batch size")
    best = next(t for t in trials if t.params["batch_size"] == choice.value
                and "max_lr" in t.user_attrs)
    return {"batch_size": choice.value, "min_lr": best.user_attrs["min_lr"],
            "max_lr": best.user_attrs["max_lr"], "budget_s": budget_s,
            "why": f"{choice.why}, each with {budget_s:.3g} s of training"}
