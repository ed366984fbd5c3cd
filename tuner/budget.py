"""Fit a study to a tuning budget in seconds (``tuner run --budget SECONDS``).

The stages' costs are estimated from throughputs measured on this machine (seconds per training
step at each candidate batch size, seconds per evaluated sample), then the study is cut down one
step at a time in a fixed order until stages 1-4 fit: fewer range-test repeats, fewer batch
sizes, then the LR check and the momentum and weight-decay grids left to the refinement's joint
search (``cuts``).
Whatever stages 1-4 leave goes to the refinement (``refine.total_s`` = the budget). The
estimates are upper bounds: a range test that diverges early and a pruned run cost less, and the
refinement takes up the slack.

A faster machine keeps more of the study in the same seconds; the cut-down study is stored with
the run like any other, so a resumed run or another worker uses it as it is.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from tuner.config import ConfigError, Replaceable, StudyConfig
from tuner.stages import STAGES
from tuner.stages.base import Sizes, Speed
from tuner.stages.batch_size import THROUGHPUT_SECONDS

if TYPE_CHECKING:
    from tuner.context import Workload

log = logging.getLogger(__name__)

# Stages 1-4 are planned to this share of the budget: a machine whose speed changes from minute
# to minute (a shared VM: 1.6x between two measurements here) makes 2 s of measuring a rough
# guide. The refinement is cut to the second and uses what they leave.
PLAN_SHARE = 0.8


def stage_seconds(cfg: StudyConfig, speed: Speed, sizes: Sizes) -> dict[str, float]:
    """Estimated seconds of the planned stages (those with a cost: 1-4), upper bounds: no early
    stop, no pruning. Each stage estimates its own."""
    cfg = cfg.resolved()
    return {s.name: s.cost(cfg, speed, sizes) for s in STAGES if s.cost is not None}


def _capped(section: object, **limits: int) -> object:
    """``section`` with each named field at most its limit."""
    return dataclasses.replace(section, **{k: min(v, getattr(section, k))  # type: ignore[type-var]
                                           for k, v in limits.items()})


def _limit(sections: Sequence[str], **limits: int) -> Callable[[StudyConfig], StudyConfig]:
    """Each named config section with those fields at most their limits: ``repeats=1``."""
    def cut(cfg: StudyConfig) -> StudyConfig:
        return cfg.replace(**{name: _capped(getattr(cfg, name), **limits) for name in sections})
    return cut


def _sizes(keep: Callable[[int, int], bool]) -> Callable[[StudyConfig], StudyConfig]:
    """Only the candidate batch sizes ``keep(size, reference)`` accepts (the reference always)."""
    def cut(cfg: StudyConfig) -> StudyConfig:
        ref = cfg.train.batch_size
        values = tuple(b for b in cfg.batch_size.values if b == ref or keep(b, ref)) or (ref,)
        return cfg.replace(batch_size=dataclasses.replace(cfg.batch_size, values=values))
    return cut


def _replace(*stages: Replaceable) -> Callable[[StudyConfig], StudyConfig]:
    """``stages`` run no trials; the refinement searches their values (``refine.replaces``)."""
    def cut(cfg: StudyConfig) -> StudyConfig:
        replaces = tuple(dict.fromkeys((*cfg.refine.replaces, *stages)))
        return cfg.replace(refine=dataclasses.replace(cfg.refine, replaces=replaces))
    return cut


class Cut(NamedTuple):
    name: str
    apply: Callable[[StudyConfig], StudyConfig]
    # applied only where it brings the estimate within the target: a cut that saves seconds
    # and costs the decision most of its reliability is worth it only if the plan then fits
    last_resort: bool = False


def cuts() -> list[Cut]:
    """The cut-downs in the order they are applied, each kept once applied.

    A grid's value is measured by two or three seeds per value or not at all: one short run per
    value ranks neighbouring values by chance (measured on the MNIST-1D CNN: the LR check's
    x0.71 and x1 swapped places from seed to seed, 30% apart in loss, and one-run momentum and
    weight-decay grids chose 0.99 and 1e-5 where the retraining wants 0.97 and 1e-3). So where
    two seeds do not fit, the grid runs nothing and the refinement searches its values jointly
    with the others: a pruned TPE search over the same values runs more points in the same time
    and must confirm its winner on a second seed (``tuner/stages/refine.py``).

    The batch size is the paper's last stage and the first cut: each size is one run as long as
    a final training (the costliest stage), compared from one seed, and the max LR, momentum and
    weight decay are what every later stage is measured at. The sizes keep being compared at a
    final training's time (a shorter horizon favours large batches, which get more epochs in it,
    and ranks them as the final training would not); fewer sizes are compared instead, the ones
    nearest the reference kept. (Measured at 60 and 120 s on the MNIST-1D CNN with the sizes kept
    and the check and grids cut: six searches of ten chose batch 64 or 128 at the linear cap's
    max LR, 94.1-95.4% after 40 epochs and 95.2-96.5% at equal time, a spread the searches at
    batch 32 did not have.)

    The LR check goes to the refinement together with the grids: its runs hold momentum and weight
    decay at ``lr_check.max_momentum`` and ``momentum.weight_decay``, and its winner holds at
    those values only (the check's loss at weight decay 1e-4 climbs with the max LR past x1; at
    1e-3 it is flat from x1 to x2). With the grids run, stage 3b re-checks at the chosen weight
    decay; with the grids left to the refinement nothing would, and the refinement would search
    around an LR measured for another weight decay (measured at 120 s, where the plan kept the
    check and not the grids: max LRs 0.070-0.099 where weight decay 1e-3 retrains best at
    0.10-0.13). The refinement instead searches the check's whole range jointly with them.

    The range test keeps two seeds to the last (one seed's reading moved 2.9x from seed to seed),
    and gives the second up only where that makes the plan fit: a range test costs a few seconds,
    less than one refinement run, and the reading is what the whole search is centred on
    (measured at 60 s on a machine too slow for any plan to fit: with one seed, one search of
    five ended at a max LR of 0.036 and scored 94.0%; with two, none below 0.074)."""
    return [
        Cut("range tests from 2 seeds", _limit(("lr_range",), repeats=2)),
        Cut("batch sizes within 4x of the reference",
            _sizes(lambda b, ref: ref <= 4 * b and b <= 4 * ref)),
        Cut("batch sizes within 2x of the reference",
            _sizes(lambda b, ref: ref <= 2 * b and b <= 2 * ref)),
        Cut("the reference batch size only (no batch-size runs)", _sizes(lambda b, ref: False)),
        Cut("the LR check, momentum and weight decay left to the refinement (no check or grid "
            "runs)", _replace("lr_check", "momentum", "weight_decay")),
        Cut("range tests from 1 seed", _limit(("lr_range",), repeats=1), last_resort=True),
    ]


def check_budget(budget_s: float) -> None:
    if not 0 < budget_s < math.inf:
        raise ConfigError(f"the tuning budget must be a finite number of seconds > 0, but got "
                          f"{budget_s=}.")


class Plan(NamedTuple):
    config: StudyConfig
    estimated_s: dict[str, float]  # stages 1-4 of the planned config
    applied: list[str]  # the cut-downs applied, in order
    fits: bool


def plan(cfg: StudyConfig, budget_s: float, speed: Speed, sizes: Sizes) -> Plan:
    """Cut ``cfg`` down until stages 1-4 are estimated to fit ``PLAN_SHARE`` of ``budget_s``;
    the refinement gets the rest (``refine.total_s = budget_s``)."""
    check_budget(budget_s)
    cfg = cfg.resolved()
    cfg = cfg.replace(refine=dataclasses.replace(cfg.refine, total_s=budget_s))
    target = PLAN_SHARE * budget_s
    applied: list[str] = []
    estimate = stage_seconds(cfg, speed, sizes)
    for cut in cuts():
        if sum(estimate.values()) <= target:
            break
        smaller = cut.apply(cfg)
        if smaller == cfg:
            continue
        smaller_estimate = stage_seconds(smaller, speed, sizes)
        if cut.last_resort and sum(smaller_estimate.values()) > target:
            continue
        cfg, estimate = smaller, smaller_estimate
        applied.append(cut.name)
    fits = sum(estimate.values()) <= target
    return Plan(cfg, estimate, applied, fits)


# Rounds of measurement, each size once a round, a size's median kept: a shared machine that
# stalls for a moment slows one round, not the plan (measured: one 0.2 s measurement per size
# read the machine 2x slow once in 5 runs, and the plan cut the study to its smallest).
SPEED_ROUNDS = 3
# A size whose 8 timed steps (measure_throughput's least) take this long is measured once: its
# steps already average a stall out, and more rounds of a large model cost seconds each.
ONE_ROUND_S = 0.5


def measure_speed(workload: Workload, batch_sizes: Sequence[int], eval_batch_size: int,
                  seed: int = 0) -> Speed:
    """Seconds per training step at each batch size and per evaluated sample, on scratch models
    made (and shuffled) as the stages make theirs: the median of ``SPEED_ROUNDS`` rounds."""
    from tuner.train import evaluate  # the training path, only when measuring

    splits = workload.splits
    sizes = [bs for bs in sorted(set(batch_sizes)) if bs <= len(splits.train)]
    rounds: dict[int, list[float]] = {bs: [] for bs in sizes}
    evals: list[float] = []
    model = workload.new_model(seed)
    evaluate(model, splits.val, eval_batch_size)  # warm-up
    for _ in range(SPEED_ROUNDS):
        for bs in sizes:
            if rounds[bs] and 8 * rounds[bs][0] >= ONE_ROUND_S:
                continue
            rounds[bs].append(1.0 / workload.steps_per_second(
                bs, seed=seed, min_seconds=THROUGHPUT_SECONDS / SPEED_ROUNDS))
        t0 = time.perf_counter()
        evaluate(model, splits.val, eval_batch_size)
        evals.append((time.perf_counter() - t0) / len(splits.val))
    return Speed({bs: statistics.median(v) for bs, v in rounds.items()}, statistics.median(evals))


def fit_to_budget(cfg: StudyConfig, budget_s: float, workload: Workload) -> Plan:
    """Measure this machine, then ``plan``; logs what was cut."""
    sizes = Sizes(len(workload.splits.train), len(workload.splits.val))
    speed = measure_speed(workload, [cfg.train.batch_size, *cfg.batch_size.values],
                          cfg.train.eval_batch_size, cfg.train.seed)
    result = plan(cfg, budget_s, speed, sizes)
    total = sum(result.estimated_s.values())
    cut = "; ".join(result.applied) or "nothing cut"
    if result.fits:
        log.info("budget %.0f s: stages 1-4 estimated at %.0f s at most (%s), the refinement "
                 "gets the rest", budget_s, total, cut)
    else:
        log.warning("budget %.0f s is too small for the staged search: cut to its smallest (%s) "
                    "it is still estimated at %.0f s", budget_s, cut, total)
    return result
