"""The training side of a run: what is trained (``Workload``) and what a stage may do with it
(``Context``). Stage modules get a ``Context`` and call its methods; they import no torch.

Hidden costs: every method here trains or evaluates a model, and the first call on a device pays
for allocation (and on CUDA for kernel selection).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import optuna
import torch
from optuna.trial import Trial
from torch import nn

from tuner.config import ConfigError, StudyConfig, TrainConfig
from tuner.data import Data, ItemsData, Splits, concat, eval_batches, load_splits
from tuner.device import is_out_of_memory, prepare_model, release_memory, resolve_device
from tuner.lr_range import RangeCurve, mean_curve, suggestions
from tuner.models import model_factory
from tuner.optimizers import make_optimizer
from tuner.pruners import MarginPruner
from tuner.range_test import range_test
from tuner.schedules import one_cycle
from tuner.sources import is_user_data
from tuner.stages.base import D, Decision, HParams, epoch_steps, find
from tuner.task import CLASSIFICATION, StepFn, Task, check_first_step, make_task
from tuner.text import first_line
from tuner.train import Diverged, Evaluation, evaluate, fit, measure_throughput
from tuner.user_data import load_user_data


@dataclass(frozen=True)
class Workload:
    """The data (already on ``device``), the model factory, what a step computes and the
    optimizer's settings; every model, optimizer and shuffling generator of a run, the budget's
    speed measurements included, is made here."""

    splits: Splits
    model_fn: Callable[[], nn.Module]
    device: torch.device
    task: Task = CLASSIFICATION
    train: TrainConfig = field(default_factory=TrainConfig)  # optimizer, beta2, eps, nesterov

    def new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return prepare_model(self.model_fn(), self.device)

    def optimizer(self, model: nn.Module, lr: float, momentum: float, weight_decay: float
                  ) -> torch.optim.Optimizer:
        """``train.optimizer`` on ``model`` (``momentum``: SGD's, or Adam's beta1)."""
        return make_optimizer(model, self.train, lr, momentum, weight_decay)

    def evaluate(self, model: nn.Module, data: Data) -> Evaluation:
        return evaluate(model, data, self.train.eval_batch_size, self.task)

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the data's device (``randperm`` on CUDA data needs a CUDA one)."""
        return torch.Generator(device=self.splits.train.device).manual_seed(seed)

    def steps_per_second(self, batch_size: int, *, seed: int, lr: float = 1e-3,
                         momentum: float = 0.9, weight_decay: float = 0.0,
                         min_seconds: float = 0.5, cpu_time: bool = False) -> float:
        """Training steps per second at ``batch_size`` on a scratch model (after a warm-up),
        by the wall clock or (``cpu_time``) this process's CPU time."""
        scratch = self.new_model(seed)
        return measure_throughput(scratch, self.optimizer(scratch, lr, momentum, weight_decay),
                                  self.splits.train, batch_size, min_seconds=min_seconds,
                                  generator=self.generator(seed), task=self.task,
                                  cpu_time=cpu_time)


def runtime_device(config: StudyConfig) -> torch.device:
    """Set torch's CPU threads (``train.threads``) and resolve ``train.device``."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    return resolve_device(config.train.device)


def load_workload(config: StudyConfig, model_fn: Callable[[], nn.Module] | None = None,
                  splits: Splits | None = None, step_fn: StepFn | None = None) -> Workload:
    """Set threads and device, read (or move) the data, build the model factory and the task,
    once, and try one step on the first training batch.

    The data is read and checked before any storage is touched: a bad file stores nothing.
    """
    device = runtime_device(config)
    if splits is not None:
        splits = splits.to(device)
    elif is_user_data(config.data.name):  # the user's own data
        splits = load_user_data(config.data, device, classes=config.train.class_targets(),
                                items=bool(config.train.step or config.data.collate))
    else:
        splits = load_splits(config.data, device)
    if model_fn is None:
        model_fn = model_factory(config.model, splits.num_classes)
    workload = Workload(splits, model_fn, device, make_task(config.train, step_fn), config.train)
    try:
        first = next(iter(eval_batches(splits.train, config.train.batch_size)))
    except Exception as exc:
        if not isinstance(splits.train, ItemsData):
            raise
        raise ConfigError(f"cannot batch the training items: {type(exc).__name__}: "
                          f"{first_line(exc)} (items of different sizes need a collate function: "
                          f"data.collate, or tuner.tune(collate_fn=...)).") from None
    check_first_step(workload.task, workload.new_model(config.train.seed), first)
    return workload


class RunResult(NamedTuple):
    last: dict[str, Any]  # the last history row: step, train_loss, seconds[, val_loss, ...]
    model: nn.Module


class Score(NamedTuple):
    """A final training scored once: on ``split`` ("test", or "val" without a test split)."""

    split: str
    evaluation: Evaluation
    seconds: float


@dataclass
class Context:
    """Everything a stage needs: the settings, the workload, the storage and the decisions so
    far (by stage name), and the training operations stages are built from."""

    config: StudyConfig
    workload: Workload
    storage: optuna.storages.BaseStorage
    run: str
    decisions: dict[str, Decision] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.config = self.config.resolved()  # the optimizer's weight decays where unset

    @property
    def splits(self) -> Splits:
        return self.workload.splits

    @property
    def device(self) -> torch.device:
        return self.workload.device

    def decision(self, kind: type[D]) -> D:
        return find(self.decisions, kind)

    def pruner(self, reports: int, varies_max_lr: bool = False) -> optuna.pruners.BasePruner:
        """The pruner for runs of ``reports`` validation measurements each. Runs that differ in
        max LR (``varies_max_lr``) are compared only from the end of the cycle
        (``schedule.cycle_fraction``), where each has come down to its min LR: before it, a run
        at a larger max LR is at a larger LR at the same step and its loss is higher until it
        anneals (measured in the refinement at 120 s: runs at 0.099-0.13 with weight decay 1e-3
        pruned at 70% of the run, where a completed one at 0.145 ended level with the best)."""
        cfg = self.config.pruner
        warmup = cfg.warmup_fraction
        if varies_max_lr:
            warmup = max(warmup, self.config.schedule.cycle_fraction)
        return MarginPruner(cfg.margin, math.ceil(warmup * reports))

    def epoch_steps(self, batch_size: int) -> int:
        return epoch_steps(len(self.splits.train), batch_size)

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return is_out_of_memory(exc)

    def release_memory(self) -> None:
        release_memory(self.device)

    def steps_per_second(self, hp: HParams, min_seconds: float = 0.5) -> float:
        """Training steps per second with ``hp`` on a scratch model. Training on the CPU in one
        thread, with no DataLoader worker processes (whose time it would miss), it is timed by
        the process's CPU time, which another process on the machine does not take
        (``tuner.stages.batch_size`` has the measurements)."""
        cpu_time = (self.device.type == "cpu" and torch.get_num_threads() == 1
                    and not getattr(self.splits.train, "workers", 0))
        return self.workload.steps_per_second(
            hp.batch_size, seed=self.config.train.seed, lr=hp.min_lr, momentum=hp.max_momentum,
            weight_decay=hp.weight_decay, min_seconds=min_seconds, cpu_time=cpu_time)

    def one_cycle_run(self, trial: Trial, hp: HParams, *, total_steps: int, eval_every: int,
                      seed: int, train: Data | None = None, validate: bool = True,
                      prune: bool = True, report: bool = True) -> RunResult:
        """Train a fresh model with 1cycle; report validation loss every ``eval_every`` steps.

        Report index ``k`` is the k-th measurement (an epoch when ``eval_every`` is an epoch).
        With ``validate=False`` (final training) the training loss is reported instead. A
        diverging run is pruned and recorded as such. Returns the last history row and model.
        """
        return _one_cycle_run(self, trial, hp, total_steps=total_steps, eval_every=eval_every,
                              seed=seed, train=train if train is not None else self.splits.train,
                              val=self.splits.val if validate else None, prune=prune,
                              report=report)

    def repeated_run(self, trial: Trial, hp: HParams, *, repeats: int, epochs: int) -> float:
        """The mean final validation loss of ``repeats`` short 1cycle runs from different seeds.

        One short run is a noisy sample: grid points a few hundredths apart in validation loss
        swap places from one seed to the next. The first run reports each epoch (so the pruner
        can stop a bad point after one run, and the dashboard shows its curve); the others only
        add their final loss. Each run's final loss is kept in the user attr ``val_losses``.
        """
        per_epoch = self.epoch_steps(hp.batch_size)
        rows = [self.one_cycle_run(trial, hp, total_steps=epochs * per_epoch,
                                   eval_every=per_epoch, seed=self.config.train.seed + repeat,
                                   report=repeat == 0).last
                for repeat in range(repeats)]
        losses = [row["val_loss"] for row in rows]
        trial.set_user_attr("val_losses", losses)
        trial.set_user_attr("val_metrics", [row["val_metric"] for row in rows])
        return sum(losses) / len(losses)

    def range_tests(self, trial: Trial, batch_size: int, num_iters: int | None = None,
                    prefix: str = "") -> RangeCurve:
        """``lr_range.repeats`` range tests from different seeds, validation curves averaged.

        The mean curve and its suggestions go into the trial's user attrs (``{prefix}curve``),
        each test's validation losses beside it (``{prefix}val_losses_each``); without a prefix
        the mean validation loss is also reported as the trial's intermediate values, by step.
        """
        cfg = self.config
        curves = []
        for repeat in range(cfg.lr_range.repeats):
            seed = cfg.train.seed + repeat
            model = self.workload.new_model(seed)
            optimizer = self.workload.optimizer(model, cfg.lr_range.start_lr,
                                                cfg.lr_range.momentum, cfg.lr_range.weight_decay)
            curves.append(range_test(model, optimizer, self.splits.train, self.splits.val,
                                     cfg.lr_range, batch_size, num_iters=num_iters,
                                     eval_batch_size=cfg.train.eval_batch_size,
                                     generator=self.workload.generator(seed),
                                     task=self.workload.task))
        curve = mean_curve(curves)
        if not prefix:
            for step, loss in zip(curve.val_steps, curve.val_losses, strict=True):
                if math.isfinite(loss):
                    trial.report(loss, step)
        trial.set_user_attr(f"{prefix}curve", curve.to_dict())
        trial.set_user_attr(f"{prefix}val_losses_each", [c.val_losses for c in curves])
        trial.set_user_attr(f"{prefix}suggestions", suggestions(
            curve.lrs, curve.train_losses, cfg.lr_range.smooth)._asdict())
        return curve

    def final_run(self, trial: Trial, hp: HParams, *, epochs: int, seed: int) -> Score:
        """1cycle on train + validation, scored once on the test split; without a test split,
        on train only and scored on the validation split."""
        splits = self.splits
        if splits.test is not None:
            train, scored, split = concat(splits.train, splits.val), splits.test, "test"
        else:
            train, scored, split = splits.train, splits.val, "val"
        per_epoch = epoch_steps(len(train), hp.batch_size)
        result = self.one_cycle_run(trial, hp, total_steps=epochs * per_epoch,
                                    eval_every=per_epoch, seed=seed, train=train,
                                    validate=False, prune=False)
        return Score(split, self.workload.evaluate(result.model, scored), result.last["seconds"])


def _one_cycle_run(ctx: Context, trial: Trial, hp: HParams, *, total_steps: int,
                   eval_every: int, seed: int, train: Data, val: Data | None, prune: bool,
                   report: bool) -> RunResult:
    cfg = ctx.config
    model = ctx.workload.new_model(seed)
    optimizer = ctx.workload.optimizer(model, hp.min_lr, hp.max_momentum, hp.weight_decay)
    history: list[dict[str, Any]] = []

    def schedule(step: int):  # noqa: ANN202
        return one_cycle(step, total_steps, hp.min_lr, hp.max_lr, hp.max_momentum,
                         hp.min_momentum, cfg.schedule.cycle_fraction, cfg.schedule.final_div)

    def on_eval(step: int, train_loss: float, seconds: float) -> None:
        k = math.ceil(step / eval_every)
        row: dict[str, Any] = {"step": step, "train_loss": train_loss, "seconds": seconds}
        if val is not None:
            ev = ctx.workload.evaluate(model, val)
            row.update(val_loss=ev.loss, val_metric=ev.metric)
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
            generator=ctx.workload.generator(seed), task=ctx.workload.task)
    except Diverged as exc:
        if report:
            trial.set_user_attr("history", history)
        trial.set_user_attr("diverged", str(exc) if report else f"seed {seed}: {exc}")
        raise optuna.TrialPruned(f"diverged: {exc}") from None
    if report:
        trial.set_user_attr("history", history)
    return RunResult(history[-1], model)
