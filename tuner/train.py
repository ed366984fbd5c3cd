"""The training loop: data on the device, hyper-parameters set per step from a pure schedule.

``fit`` runs a fixed number of optimizer steps and calls back at regular intervals; the stages
build their runs from it (the range test, the 1cycle runs, the final training). What a step
computes (loss, metric, a user's step function) is the ``Task``'s business (``tuner.task``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from tuner.config import NormStats
from tuner.data import Data, batches, eval_batches
from tuner.device import autocast, input_format, synchronize
from tuner.schedules import LRMomentum
from tuner.task import CLASSIFICATION, Task


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"training loss became {loss} at step {step}")
        self.step = step
        self.loss = loss


@dataclass(frozen=True)
class Evaluation:
    loss: float
    metric: float | None  # the task's metric (accuracy by default); None: the task has none


def _running_stat_norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[int]:
    """Within the block, BatchNorm-type layers normalize each batch by its own statistics (the
    rest of the model as it was set); their running averages and modes are restored afterwards,
    so evaluating leaves the model as it was. Yields how many such layers the model has.

    While the LR climbs in a range test, the running averages lag the weights (momentum 0.1
    averages over ~10 steps, of weights that move fast): evaluated by them, a net that is
    still learning can score a spike or a second basin. The batch's own statistics (over a large
    batch) measure the weights as they are, as a precise-BN recount would (Wu & Johnson 2021).
    """
    norms = _running_stat_norms(model)
    saved = [(m, m.training, [b.clone() for b in m.buffers(recurse=False)]) for m in norms]
    try:
        for m in norms:
            m.train()
        yield len(norms)
    finally:
        with torch.no_grad():
            for m, training, buffers in saved:
                m.train(training)
                for live, copy in zip(m.buffers(recurse=False), buffers, strict=True):
                    live.copy_(copy)


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, batch_size: int = 2048,
             task: Task = CLASSIFICATION, norm_stats: NormStats = "running") -> Evaluation:
    """Mean loss and metric over ``data``, in large batches without gradients (each batch's
    mean loss weighted by its size).

    ``norm_stats="batch"``: BatchNorm layers use each batch's own statistics
    (``batch_statistics``); the batches are then made equal in size (no small last batch whose
    statistics would be noise)."""
    was_training = model.training
    model.eval()
    with batch_statistics(model) if norm_stats == "batch" else nullcontext(0) as norms:
        if norms:
            batch_size = math.ceil(len(data) / math.ceil(len(data) / batch_size))
        result = _evaluate(model, data, batch_size, task)
    model.train(was_training)
    return result


def _evaluate(model: nn.Module, data: Data, batch_size: int, task: Task) -> Evaluation:
    device = data.device
    memory_format = input_format(model, device)
    loss_sum = torch.zeros((), device=device)
    metric_sum = torch.zeros((), device=device)
    n = 0
    with autocast(device):
        for batch in eval_batches(data, batch_size):
            out = task.step(model, batch, memory_format)
            loss_sum += out.loss.detach().float() * out.count
            if out.metric_sum is not None:
                metric_sum += out.metric_sum
            n += out.count
    metric = metric_sum.item() / n if task.metric_name is not None else None
    return Evaluation(loss_sum.item() / n, metric)  # .item(): one sync per call


def make_sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float,
             nesterov: bool = False) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay, nesterov=nesterov and momentum > 0)


def set_hparams(optimizer: torch.optim.Optimizer, lr: float, momentum: float | None) -> None:
    """The LR, and the momentum: SGD's ``momentum`` or Adam's beta1 (``betas[0]``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if momentum is None:
            continue
        if "betas" in group:
            group["betas"] = (momentum, group["betas"][1])
        else:
            group["momentum"] = momentum


Schedule = Callable[[int], LRMomentum]
# Called every ``eval_every`` steps and at the last step with (step, mean train loss since the
# last call, training seconds so far). It may raise (e.g. optuna.TrialPruned) to stop the run.
EvalCallback = Callable[[int, float, float], None]
StepCallback = Callable[[int, float, float], None]  # (step, lr, loss): forces a sync per step


@dataclass(frozen=True)
class FitResult:
    steps: int
    train_seconds: float  # optimizer steps only; callbacks (evaluation) are not counted


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, data: Data, *,
        total_steps: int, batch_size: int, schedule: Schedule, eval_every: int,
        on_eval: EvalCallback, on_step: StepCallback | None = None,
        generator: torch.Generator | None = None, task: Task = CLASSIFICATION) -> FitResult:
    """Train for ``total_steps`` optimizer steps over shuffled epochs of ``data``.

    Raises ``Diverged`` as soon as a (checked) training loss is not finite: at every step when
    ``on_step`` is given, else at each ``eval_every`` boundary (to avoid a GPU sync per step).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, but got {total_steps=}.")
    device = data.device
    memory_format = input_format(model, device)  # channels_last for conv nets on CUDA
    model.train()
    step, train_seconds = 0, 0.0
    loss_sum, loss_count = torch.zeros((), device=device), 0
    synchronize(device)
    t0 = time.perf_counter()
    while step < total_steps:
        for batch in batches(data, batch_size, generator):
            lr, momentum = schedule(step)
            set_hparams(optimizer, lr, momentum)
            with autocast(device):
                loss = task.step(model, batch, memory_format, with_metric=False).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.detach()
            loss_count += 1
            if on_step is not None:
                value = loss.item()
                if not math.isfinite(value):
                    raise Diverged(step, value)
                on_step(step, lr, value)
            if step % eval_every == 0 or step == total_steps:
                synchronize(device)
                train_seconds += time.perf_counter() - t0
                mean_loss = loss_sum.item() / loss_count
                if not math.isfinite(mean_loss):
                    raise Diverged(step, mean_loss)
                on_eval(step, mean_loss, train_seconds)
                loss_sum.zero_()
                loss_count = 0
                synchronize(device)
                t0 = time.perf_counter()
            if step == total_steps:
                break
    return FitResult(step, train_seconds)


def measure_throughput(model: nn.Module, optimizer: torch.optim.Optimizer, data: Data,
                       batch_size: int, min_seconds: float = 0.5, warmup_steps: int = 5,
                       generator: torch.Generator | None = None,
                       task: Task = CLASSIFICATION, cpu_time: bool = False) -> float:
    """Training steps per second of ``fit`` at ``batch_size``, after a warm-up (the caller's
    model and optimizer are changed: pass scratch copies).

    ``cpu_time``: timed by this process's CPU time (``time.process_time``, all its threads)
    instead of the wall clock, so that a process sharing the CPU takes no time from the
    measurement. Only for training on the CPU (a GPU's work is not this process's CPU time);
    with one thread it is the wall time of an idle machine."""
    lr = optimizer.param_groups[0]["lr"]
    clock = time.process_time if cpu_time else time.perf_counter

    def timed(steps: int) -> float:
        start = clock()
        fit(model, optimizer, data, total_steps=steps, batch_size=batch_size,
            schedule=lambda _s: LRMomentum(lr, None), eval_every=steps,
            on_eval=lambda *_: None, generator=generator, task=task)
        return clock() - start

    timed(warmup_steps)  # first steps pay for allocation and (on CUDA) kernel selection
    steps, seconds = 8, 0.0
    while True:
        seconds = timed(steps)
        if seconds >= min_seconds:
            return steps / seconds
        steps = max(steps * 2, int(steps * min_seconds / max(seconds, 1e-6) * 1.2))
