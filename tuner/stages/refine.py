"""Optional stage after the batch size: a short TPE search in a narrow box around the staged values.

Stages 1-4 each decide one value with the others held fixed, from a curve (the range test) or a
grid, and the batch-size stage re-derives the LR for the chosen size. The refinement checks the
combination itself: its first trial is the staged result, then Optuna's TPE samples the max LR
log-uniformly within ``lr_factor`` of it, momentum and weight decay among the staged values and
their neighbours in the stage grids, at the chosen batch size, each trial a short 1cycle run (the
momentum stage's length) pruned as the grids are. It stops before the tuning stages (1-4 and this
one) would pass ``total_s`` seconds in all (or after ``max_trials``); the lowest final validation
loss wins, so the staged result is kept unless a trial beats it. ``total_s = 0`` (the default)
skips it: the staged values pass through unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from tuner.locks import storage_lock
from tuner.stages.common import Context, HParams, epoch_steps, one_cycle_run
from tuner.trials import claim, new_trial, reap_orphans, run_trial

NAME = "refine"
TUNING_STAGES = ("lr_range", "momentum", "weight_decay", "batch_size")
log = logging.getLogger(__name__)


class Box(NamedTuple):
    """Where the refinement searches."""

    lr_low: float
    lr_high: float
    momenta: list[float]
    decays: list[float]


def neighbours(values: Sequence[float], chosen: float) -> list[float]:
    """``chosen`` and the grid values on either side of it, in ascending order."""
    grid = sorted(set(values) | {chosen})
    i = grid.index(chosen)
    return grid[max(0, i - 1):i + 2]


def staged(ctx: Context) -> dict[str, Any]:
    """The values stages 1-4 chose (the batch-size stage's LR range for the chosen size)."""
    d = ctx.decisions
    return {"min_lr": d["batch_size"]["min_lr"], "max_lr": d["batch_size"]["max_lr"],
            "max_momentum": d["momentum"]["max_momentum"],
            "min_momentum": d["momentum"]["min_momentum"],
            "weight_decay": d["weight_decay"]["weight_decay"],
            "batch_size": d["batch_size"]["batch_size"]}


def box(ctx: Context, base: dict[str, Any]) -> Box:
    cfg = ctx.config
    f = cfg.refine.lr_factor
    return Box(base["max_lr"] / f, base["max_lr"] * f,
               neighbours(cfg.momentum.values, base["max_momentum"]),
               neighbours(cfg.weight_decay.values, base["weight_decay"]))


def seconds_spent(trials: Sequence[FrozenTrial]) -> float:
    """Training seconds of the finished trials (all workers' together)."""
    return sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials
               if t.datetime_complete is not None and t.datetime_start is not None)


def pruner(ctx: Context) -> optuna.pruners.BasePruner:
    return ctx.pruner(reports=ctx.config.momentum.epochs)


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config
    base = staged(ctx)
    before = sum(ctx.decisions[s]["seconds"] for s in TUNING_STAGES)
    if cfg.refine.total_s <= 0:
        return {**base, "why": "no refinement (refine.total_s = 0): the staged values"}
    if before >= cfg.refine.total_s:
        return {**base, "why": f"no refinement: stages 1-4 took {before:.0f} s of "
                               f"refine.total_s = {cfg.refine.total_s:g} s: the staged values"}
    search = box(ctx, base)
    bs = base["batch_size"]
    per_epoch = epoch_steps(len(ctx.splits.train), bs)
    # Seeded for a reproducible run; a worker that joins later (or a resumption) starts from
    # another seed, so that two workers do not sample the same points.
    study.sampler = optuna.samplers.TPESampler(
        seed=cfg.train.seed + len(study.get_trials(deepcopy=False)))

    def objective(trial: Trial) -> float:
        max_lr = trial.suggest_float("max_lr", search.lr_low, search.lr_high, log=True)
        mom = trial.suggest_categorical("max_momentum", search.momenta)
        wd = trial.suggest_categorical("weight_decay", search.decays)
        hp = HParams(max_lr / cfg.lr_range.min_lr_div, max_lr, mom, base["min_momentum"], wd, bs)
        last = one_cycle_run(ctx, trial, hp, total_steps=cfg.momentum.epochs * per_epoch,
                             eval_every=per_epoch, seed=cfg.train.seed, train=ctx.splits.train,
                             val=ctx.splits.val).last
        log.info("refine: LR %.3g, momentum %g, weight decay %g: val loss %.4f, accuracy %.1f%%",
                 max_lr, mom, wd, last["val_loss"], 100 * last["val_accuracy"])
        return last["val_loss"]

    with storage_lock(ctx.storage, study.study_name):
        reap_orphans(study)
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial({"max_lr": base["max_lr"], "max_momentum": base["max_momentum"],
                                 "weight_decay": base["weight_decay"]})
    while True:
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                            TrialState.PRUNED))
        # The staged point's full run says what one more trial costs.
        typical = seconds_spent(finished[:1])
        if finished and before + seconds_spent(finished) + typical > cfg.refine.total_s:
            break
        started = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                           TrialState.PRUNED, TrialState.RUNNING))
        if 0 < cfg.refine.max_trials <= len(started):
            break
        trial = claim(study) or new_trial(study)
        run_trial(study, trial, objective)
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        time.sleep(0.5)  # other workers' last trials belong to the decision too
        with storage_lock(ctx.storage, study.study_name):
            reap_orphans(study)  # ... unless their worker died
    trials = study.get_trials(deepcopy=False)
    return decide(trials, base, cfg.lr_range.min_lr_div, seconds_spent(trials))


def decide(trials: Sequence[FrozenTrial], base: dict[str, Any], min_lr_div: float,
           seconds: float) -> dict[str, Any]:
    """The COMPLETE trial with the lowest final validation loss; the staged values if none."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]
    if not complete:
        return {**base, "trials": len(trials),
                "why": f"every one of {len(trials)} refinement trial(s) was pruned or "
                       f"diverged: the staged values"}
    best = min(complete, key=lambda t: (t.value, t.number))
    first = min(trials, key=lambda t: t.number)
    p = best.params
    decision = {**base, "min_lr": p["max_lr"] / min_lr_div, "max_lr": p["max_lr"],
                "max_momentum": p["max_momentum"], "weight_decay": p["weight_decay"],
                "trials": len(trials), "staged": base}
    if best.number == first.number:
        why = (f"the staged values kept their lowest validation loss {best.value:.4g} against "
               f"{len(trials) - 1} refinement trial(s) in {seconds:.0f} s")
    else:
        staged_loss = (f"{first.value:.4g}" if first.state == TrialState.COMPLETE
                       else "pruned")
        why = (f"LR {p['max_lr'] / min_lr_div:.3g} – {p['max_lr']:.3g}, momentum "
               f"{p['max_momentum']:g}, weight decay {p['weight_decay']:g} gave validation loss "
               f"{best.value:.4g} (staged values: {staged_loss}), best of {len(trials)} trials "
               f"in {seconds:.0f} s")
    decision["why"] = why
    return decision
