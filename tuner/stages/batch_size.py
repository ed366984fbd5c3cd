"""Stage 4: batch size, compared under an equal wall-clock budget (not equal epochs).

Each candidate gets its own LR range from a short range test (larger batches tolerate larger
LRs: the paper's Fig. 6), its reading times the multiple the LR check (stage 1b) chose at the
reference size, which keeps its checked range; its throughput is measured, and its 1cycle
schedule is sized so the whole cycle fits in the budget: ``budget_s`` seconds of
training, or by default the measured time a final training would take at the reference size.
Validation loss is reported at equal fractions of the budget, so the pruner and the decision
compare sizes at equal time. The decision also says how many epochs the final training of the
chosen size takes to last as long as ``final.epochs`` at the reference size (``final_epochs``):
a size that won with twice the epochs in the same time is trained as it was judged.

Throughputs are measured once, before any run, for every size and the reference: 3 times 0.2 s
each, round-robin over the sizes, the median kept, and stored in the study (``samples_per_s``)
so that every worker and a resumed run plan from the same numbers. By default a size gets the
samples of the reference's final training times its rate over the reference's: a machine
slowed down alike for every size changes no step count. (Measured per trial, a process started
beside one size's measurement gave it 1.9 steps/s instead of about 600, and changed the
choice.) Training on the CPU in one thread, the time is the process's CPU time: on a 2-vCPU VM
busy with other training, a process spinning beside the measurement moved the rates of batch
32 and 128 over 64's by 15% (median of 27 idle/hogged pairs, 41% at worst) against 23% (76%)
by the wall clock. With more threads it is the wall clock: CPU time counts every thread, their
waiting for one another too (with two threads on that VM both clocks' ratios moved severalfold
beside a hog: set ``train.threads = 1`` on a shared machine).

A larger batch's own range test can reach past what its full-length training survives (measured
on MNIST-1D: batch 64's test gave max LR 0.228 where batch 32's gave 0.0755; 80 epochs at 0.228
diverged part-way in one of 5 seeds, 93.3% mean test accuracy, and at 0.151 scored 96.3%). So by
default (``lr_cap = "linear"``) a size larger than the reference gets at most the checked max LR
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
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from tuner.locks import storage_lock
from tuner.lr_range import LRRange, NoUsableMinimum, read_range
from tuner.stages.base import Decision, HParams, Sizes, Speed, Stage, epoch_steps
from tuner.stages.grid import GridChoice, decide_grid, metric_text, scored
from tuner.stages.lr_range import range_test_seconds
from tuner.stages.lr_recheck import in_force
from tuner.stages.momentum import MomentumDecision
from tuner.stages.weight_decay import WeightDecayDecision
from tuner.text import first_line
from tuner.trials import run_grid

if TYPE_CHECKING:
    from tuner.config import StudyConfig
    from tuner.context import Context

log = logging.getLogger(__name__)
BUDGET_ATTR = "budget_s"
THROUGHPUT_ATTR = "samples_per_s"  # {str(batch size): samples per second}, measured once
INFEASIBLE_ATTR = "infeasible_sizes"  # {str(batch size): why}: out of memory when measured
# Each size's throughput is measured THROUGHPUT_ROUNDS times, round-robin over the sizes and
# the reference, for THROUGHPUT_ROUND_SECONDS each; a size's rate is the reference's median
# rate times the median of its per-round ratios to the reference. Paired ratios cancel what a
# round's load does to every size alike: on a 2-vCPU VM their spread from one measurement to
# the next was 1.05-1.10x (9 x 0.1 s, idle or beside a CPU hog), against 1.15-1.30x for the
# ratio of medians of 3 x 0.2 s. tuner.budget's one measurement per size lasts
# THROUGHPUT_SECONDS.
THROUGHPUT_SECONDS = 0.2
THROUGHPUT_ROUND_SECONDS = 0.1
THROUGHPUT_ROUNDS = 9


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


def equal_time_steps(reference_samples: int, speed_ratio: float, batch_size: int) -> int:
    """Optimizer steps of ``batch_size`` that take as long as ``reference_samples`` at the
    reference size, ``speed_ratio`` being its samples per second over the reference's."""
    return max(1, math.floor(reference_samples * speed_ratio / batch_size))


def size_steps(cfg: StudyConfig, n_train: int, batch_size: int, rates: dict[int, float]
               ) -> int:
    """The steps of ``batch_size``'s run, from the samples per second of each size (``rates``).

    By default the samples a final training processes at the reference size (``final.epochs``
    epochs), times the size's rate over the reference's: only the ratio counts, so a machine
    slowed down alike for every size gives the same steps. With ``batch_size.budget_s``, that
    many seconds at the size's rate."""
    if cfg.batch_size.budget_s > 0:
        return planned_steps(cfg.batch_size.budget_s, rates[batch_size] / batch_size)
    ref = cfg.train.batch_size
    samples = cfg.final.epochs * epoch_steps(n_train, ref) * ref
    return equal_time_steps(samples, rates[batch_size] / rates[ref], batch_size)


def final_training_seconds(cfg: StudyConfig, n_train: int, samples_per_s: float) -> float:
    """Training seconds of ``final.epochs`` epochs at ``train.batch_size``."""
    bs = cfg.train.batch_size
    return cfg.final.epochs * epoch_steps(n_train, bs) * bs / samples_per_s


@dataclass(frozen=True)
class Budget:
    seconds: float  # training seconds per size: configured, or a final training's at the rate
    rates: dict[int, float]  # samples per second by batch size (the reference's included)
    infeasible: dict[int, str]  # the sizes out of memory when measured: why


def paired_rates(samples: dict[int, list[float]], reference: int) -> dict[int, float]:
    """Each size's samples per second from rounds of measurements (``samples[bs][k]``: round
    k): the reference's median, and for another size that times the median of its ratios to
    the reference in the same round (a size missing from some rounds: over those it has)."""
    ref = samples[reference]
    rates = {reference: statistics.median(ref)}
    for bs, values in samples.items():
        if bs != reference:
            ratios = [v / r for v, r in zip(values, ref, strict=False)]  # fewer rounds: OOM
            rates[bs] = rates[reference] * statistics.median(ratios)
    return rates


def measure_rates(ctx: Context, sizes: Sequence[int]) -> tuple[dict[int, float], dict[int, str]]:
    """Samples per second of each size and of the reference (``paired_rates`` of
    ``THROUGHPUT_ROUNDS`` rounds of ``THROUGHPUT_ROUND_SECONDS`` per size). A size other than
    the reference that runs out of memory is left out with why (the second dict)."""
    reference = ctx.config.train.batch_size
    order = [reference, *(bs for bs in sizes if bs != reference)]
    samples: dict[int, list[float]] = {bs: [] for bs in order}
    infeasible: dict[int, str] = {}
    for _ in range(THROUGHPUT_ROUNDS):
        for bs in order:
            if bs in infeasible:
                continue
            try:
                steps_per_s = ctx.steps_per_second(reference_hparams(ctx, bs),
                                                   min_seconds=THROUGHPUT_ROUND_SECONDS)
            except Exception as exc:
                if bs == reference or not ctx.is_out_of_memory(exc):
                    raise
                error = first_line(exc)
            else:
                samples[bs].append(bs * steps_per_s)
                continue
            # Outside the except block the failed step's tensors are garbage: free them now.
            gc.collect()
            ctx.release_memory()
            infeasible[bs] = f"batch size {bs} does not fit in memory on {ctx.device} ({error})"
            log.warning("%s: infeasible, skipped", infeasible[bs])
    rates = paired_rates({bs: v for bs, v in samples.items() if bs not in infeasible}, reference)
    return rates, infeasible


def resolve_budget(ctx: Context, study: optuna.Study, sizes: Sequence[int]) -> Budget:
    """Every size's throughput (the reference's too), measured before any run and stored, so
    that every worker (and a resumed run) plans each size's steps from the same numbers; and
    the budget per size (configured, or the reference's final training at its rate)."""
    cfg = ctx.config
    ref = cfg.train.batch_size
    with storage_lock(ctx.storage, f"{study.study_name}/budget"):
        rates = {int(b): float(r) for b, r in study.user_attrs.get(THROUGHPUT_ATTR, {}).items()}
        infeasible = {int(b): str(why)
                      for b, why in study.user_attrs.get(INFEASIBLE_ATTR, {}).items()}
        missing = [b for b in sorted({*sizes, ref}) if b not in rates and b not in infeasible]
        if missing:
            measured, failed = measure_rates(ctx, missing)
            # Sizes added on a resume are measured beside the reference now, against its stored
            # rate: scaled by stored / now, each keeps its ratio to the reference as measured.
            scale = rates[ref] / measured[ref] if ref in rates else 1.0
            rates.update({b: r * scale for b, r in measured.items() if b in missing})
            infeasible.update(failed)
            study.set_user_attr(THROUGHPUT_ATTR, {str(b): r for b, r in sorted(rates.items())})
            study.set_user_attr(INFEASIBLE_ATTR, {str(b): w for b, w in infeasible.items()})
            log.info("throughput (samples/s): %s", ", ".join(
                f"batch size {b}: {r:.4g}" for b, r in sorted(rates.items())))
        if cfg.batch_size.budget_s > 0:
            return Budget(cfg.batch_size.budget_s, rates, infeasible)
        budget = study.user_attrs.get(BUDGET_ATTR)
        if budget is None:
            budget = final_training_seconds(cfg, len(ctx.splits.train), rates[ref])
            study.set_user_attr(BUDGET_ATTR, budget)
            log.info("budget per batch size: %.2f s, the measured training time of %d epochs at "
                     "batch size %d", budget, cfg.final.epochs, ref)
    return Budget(float(budget), rates, infeasible)


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
                   f"{found.why}; max LR {found.max_lr:.3g} capped at {cap:.3g}, the checked "
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


def keeps_checked_range(cfg: StudyConfig, batch_size: int) -> bool:
    """Whether ``batch_size`` keeps the checked LR range without a test of its own: the
    reference size, at which stages 1-3 ran (a shorter test would read it differently)."""
    return batch_size == cfg.train.batch_size


def reference_hparams(ctx: Context, batch_size: int | None = None,
                      found: LRRange | None = None) -> HParams:
    """The checked range (or ``found``), the momentum and weight decay stages chose."""
    lr = found or in_force(ctx)
    mom = ctx.decision(MomentumDecision)
    return HParams(lr.min_lr, lr.max_lr, mom.max_momentum, mom.min_momentum,
                   ctx.decision(WeightDecayDecision).weight_decay,
                   batch_size or ctx.config.train.batch_size)


def cost(cfg: StudyConfig, speed: Speed, sizes: Sizes) -> float:
    """Seconds of this stage: the throughput measurements (``THROUGHPUT_ROUNDS`` of
    ``THROUGHPUT_ROUND_SECONDS`` per size, the reference's included), and per size a range test
    (unless the size keeps the checked range), the equal-time run and its evaluations."""
    b = cfg.batch_size
    sizes_run = candidates(cfg, sizes.n_train)
    if sizes_run == [cfg.train.batch_size]:
        return 0.0  # the reference size alone: decided without runs
    if b.budget_s > 0:
        budget = b.budget_s
    else:
        bs = cfg.train.batch_size
        budget = cfg.final.epochs * epoch_steps(sizes.n_train, bs) * speed.step_s[bs]
    measuring = (len({*sizes_run, cfg.train.batch_size}) * THROUGHPUT_ROUNDS
                 * THROUGHPUT_ROUND_SECONDS)
    per_size = budget + b.reports * sizes.n_val * speed.eval_sample_s
    return measuring + sum(per_size + (0.0 if keeps_checked_range(cfg, bs) else
                                       range_test_seconds(cfg, speed, bs, b.range_test_iters))
                           for bs in sizes_run)


def scale_range(found: LRRange, factor: float, min_lr_div: float) -> LRRange:
    """``found``'s max LR times ``factor``, the multiple of its reading that the LR check chose
    at the reference size (min LR = max / ``min_lr_div``)."""
    if factor == 1:
        return found
    max_lr = found.max_lr * factor
    return LRRange(max_lr / min_lr_div, max_lr,
                   f"{found.why}; x{factor:.3g}, the multiple of the reading the LR check chose "
                   f"at the reference size")


def size_range(ctx: Context, trial: Trial, bs: int) -> LRRange:
    """The LR range of batch size ``bs``: at the reference size the checked range (``in_force``);
    another size reads its own short range test, times the factor the check chose (capped by
    linear scaling above the reference)."""
    cfg = ctx.config
    checked = in_force(ctx)
    if keeps_checked_range(cfg, bs):
        return LRRange(checked.min_lr, checked.max_lr, "the checked range (stage 1b, or 3b)")
    curve = ctx.range_tests(trial, bs, num_iters=cfg.batch_size.range_test_iters,
                            prefix="range_")
    try:
        found = read_range(curve, cfg.lr_range.reading, cfg.lr_range.min_lr_div)
    except NoUsableMinimum as exc:
        trial.set_user_attr("no_range", str(exc))
        raise optuna.TrialPruned(f"batch size {bs}: no LR range: {exc}") from None
    trial.set_user_attr("range_test_max_lr", found.max_lr)
    found = scale_range(found, checked.factor, cfg.lr_range.min_lr_div)
    if cfg.batch_size.lr_cap == "linear":
        found = cap_range(found, bs, cfg.train.batch_size, checked.max_lr,
                          cfg.lr_range.min_lr_div)
    return found


def measure(ctx: Context, trial: Trial, sizes: list[int], budget: Budget) -> float:
    """One candidate: its range, a 1cycle run of the steps its measured throughput gives."""
    bcfg = ctx.config.batch_size
    bs = trial.suggest_categorical("batch_size", sizes)
    if bs in budget.infeasible:  # out of memory when its throughput was measured
        trial.set_user_attr("infeasible", budget.infeasible[bs])
        log.warning("%s: infeasible, skipped", budget.infeasible[bs])
        raise optuna.TrialPruned(budget.infeasible[bs])
    found = size_range(ctx, trial, bs)
    trial.set_user_attr("min_lr", found.min_lr)
    trial.set_user_attr("max_lr", found.max_lr)
    trial.set_user_attr("lr_why", found.why)
    hp = reference_hparams(ctx, bs, found)
    n_train = len(ctx.splits.train)
    steps = size_steps(ctx.config, n_train, bs, budget.rates)
    trial.set_user_attr("samples_per_second", budget.rates[bs])
    trial.set_user_attr("steps_per_second", budget.rates[bs] / bs)
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
    checked = in_force(ctx)
    if sizes == [cfg.train.batch_size]:  # nothing to compare: no runs
        return BatchSizeDecision(
            batch_size=sizes[0], min_lr=checked.min_lr, max_lr=checked.max_lr,
            final_epochs=cfg.final.epochs,
            why=f"the only candidate is the reference size {sizes[0]} (batch_size.values = "
                f"{list(cfg.batch_size.values)}): the checked LR range, no runs")
    budget = resolve_budget(ctx, study, sizes)
    budget_s, rates = budget.seconds, budget.rates

    def objective(trial: Trial) -> float:
        try:
            return measure(ctx, trial, sizes, budget)
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
    final_epochs = (cfg.final.epochs if choice.value == cfg.train.batch_size
                    else equal_time_epochs(cfg.final.epochs, rates[choice.value],
                                           rates[cfg.train.batch_size]))
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
