"""What every stage shares: the run's context, one 1cycle training run, the grid decision."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import optuna
import torch
from optuna.trial import FrozenTrial, Trial, TrialState
from torch import nn

from tuner.config import StudyConfig
from tuner.data import Data, Splits
from tuner.device import prepare_model
from tuner.pruners import MarginPruner
from tuner.schedules import one_cycle
from tuner.train import Diverged, evaluate, fit, make_sgd
from tuner.trials import trial_params

log = logging.getLogger(__name__)


@dataclass
class Context:
    """Everything a stage needs; ``decisions`` holds the earlier stages' decisions by name."""

    config: StudyConfig
    splits: Splits  # already on ``device``
    model_fn: Callable[[], nn.Module]
    device: torch.device
    storage: optuna.storages.BaseStorage
    run: str
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def pruner(self, reports: int) -> optuna.pruners.BasePruner:
        """The pruner for runs of ``reports`` validation measurements each."""
        cfg = self.config.pruner
        return MarginPruner(cfg.margin, math.ceil(cfg.warmup_fraction * reports))

    def new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return prepare_model(self.model_fn(), self.device)

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)


class RunResult(NamedTuple):
    last: dict[str, Any]  # the last history row: step, train_loss, seconds[, val_loss, ...]
    model: nn.Module


@dataclass(frozen=True)
class HParams:
    """One 1cycle run's hyper-parameters."""

    lr_min: float
    lr_max: float
    mom_max: float
    mom_min: float
    weight_decay: float
    batch_size: int


def one_cycle_run(ctx: Context, trial: Trial, hp: HParams, *, total_steps: int,
                  eval_every: int, seed: int, train: Data, val: Data | None,
                  prune: bool = True, report: bool = True) -> RunResult:
    """Train a fresh model with 1cycle; report validation loss every ``eval_every`` steps.

    Report index ``k`` is the k-th measurement (an epoch when ``eval_every`` is an epoch). With
    ``val=None`` (final training on train + validation) the training loss is reported instead.
    A diverging run is pruned and recorded as such. Returns the last history row and the model.
    """
    cfg = ctx.config
    model = ctx.new_model(seed)
    optimizer = make_sgd(model, hp.lr_min, hp.mom_max, hp.weight_decay, cfg.train.nesterov)
    history: list[dict[str, Any]] = []

    def schedule(step: int):  # noqa: ANN202
        return one_cycle(step, total_steps, hp.lr_min, hp.lr_max, hp.mom_max, hp.mom_min,
                         cfg.schedule.cycle_fraction, cfg.schedule.final_div)

    def on_eval(step: int, train_loss: float, seconds: float) -> None:
        k = math.ceil(step / eval_every)
        row: dict[str, Any] = {"step": step, "train_loss": train_loss, "seconds": seconds}
        if val is not None:
            ev = evaluate(model, val, cfg.train.eval_batch_size)
            row.update(val_loss=ev.loss, val_accuracy=ev.accuracy)
        history.append(row)
        if not report:
            return
        reported = row.get("val_loss", train_loss)
        if math.isfinite(reported):
            trial.report(reported, k)
        if prune and trial.should_prune():
            trial.set_user_attr("history", history)
            trial.set_user_attr("pruned_at", k)
            raise optuna.TrialPruned(f"pruned at report {k}: loss {reported:.4g}")

    try:
        fit(model, optimizer, train, total_steps=total_steps, batch_size=hp.batch_size,
            schedule=schedule, eval_every=eval_every, on_eval=on_eval,
            generator=ctx.generator(seed))
    except Diverged as exc:
        if report:
            trial.set_user_attr("history", history)
        trial.set_user_attr("diverged", str(exc) if report else f"seed {seed}: {exc}")
        raise optuna.TrialPruned(f"diverged: {exc}") from None
    if report:
        trial.set_user_attr("history", history)
    return RunResult(history[-1], model)


def repeated_run(ctx: Context, trial: Trial, hp: HParams, *, repeats: int, epochs: int
                 ) -> float:
    """The mean final validation loss of ``repeats`` short 1cycle runs from different seeds.

    One short run is a noisy sample: grid points a few hundredths apart in validation loss swap
    places from one seed to the next. The first run reports each epoch (so the pruner can stop
    a bad point after one run, and the dashboard shows its curve); the others only add their
    final loss. Each run's final loss is kept in the user attr ``val_losses``.
    """
    cfg = ctx.config
    per_epoch = epoch_steps(len(ctx.splits.train), hp.batch_size)
    rows = []
    for repeat in range(repeats):
        rows.append(one_cycle_run(ctx, trial, hp, total_steps=epochs * per_epoch,
                                  eval_every=per_epoch, seed=cfg.train.seed + repeat,
                                  train=ctx.splits.train, val=ctx.splits.val,
                                  report=repeat == 0).last)
    losses = [row["val_loss"] for row in rows]
    trial.set_user_attr("val_losses", losses)
    trial.set_user_attr("val_accuracies", [row["val_accuracy"] for row in rows])
    return sum(losses) / len(losses)


class GridChoice(NamedTuple):
    value: Any
    why: str


def describe_trial(t: FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE:
        return f"{t.value:.4g}"
    if "diverged" in t.user_attrs:
        return "diverged"
    if "infeasible" in t.user_attrs:
        return "out of memory"
    return f"pruned at report {t.user_attrs.get('pruned_at', t.last_step)}"


def scored(t: FrozenTrial) -> bool:
    """COMPLETE with a finite final loss."""
    return t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)


def decide_grid(trials: Sequence[FrozenTrial], param: str, label: str | None = None
                ) -> GridChoice:
    """The value of ``param`` whose COMPLETE trial has the lowest final validation loss."""
    label = label or param
    complete = [t for t in trials if scored(t)]
    if not complete:
        seen = ", ".join(f"{trial_params(t)[param]}: {describe_trial(t)}" for t in trials)
        raise RuntimeError(f"every {label} trial was pruned or diverged ({seen}); the LR range "
                           f"is probably too high: lower lr_range.end_lr.")
    best = min(complete, key=lambda t: t.value)
    others = ", ".join(f"{trial_params(t)[param]:g}: {describe_trial(t)}"
                       for t in sorted(trials, key=lambda t: trial_params(t)[param], reverse=True))
    why = (f"{label} {best.params[param]:g} gave the lowest final validation loss "
           f"{best.value:.4g} (all: {others})")
    return GridChoice(best.params[param], why)


def percent(fractions: Sequence[float]) -> str:
    return ", ".join(f"{100 * f:.1f}%" for f in fractions)


def epoch_steps(n: int, batch_size: int) -> int:
    steps = n // batch_size
    if steps < 1:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training samples.")
    return steps
