"""What one training step computes: the loss (and the metric's counts) of a batch.

A ``Task`` is built once from ``[train]`` (``loss``, ``label_smoothing``, ``metric``, ``step``)
and used by every training and evaluation loop, so the range test, the short runs and the final
training all optimise the same loss. The default, cross-entropy with accuracy on ``(x, y)``
batches, is the tool's behaviour before losses and metrics could be chosen.

A step function (``step = "module:callable"``, or ``tuner.tune(..., step_fn=...)``) is called
as ``step_fn(model, batch)`` with the batch as the data gives it (moved to the device) and
returns the mean loss, or ``(loss, metric_sum, count)`` to report a metric as well; the tool
still owns the optimizer, the schedule, pruning, timing and storage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from tuner.config import ConfigError, TrainConfig
from tuner.imports import import_callable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> mean loss
MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # -> sum over the batch
StepFn = Callable[[nn.Module, Any], Any]


class StepOutput(NamedTuple):
    loss: torch.Tensor  # the batch's mean loss (a scalar with a graph when training)
    metric_sum: torch.Tensor | None  # the metric summed over the batch's samples
    count: int  # samples in the batch


def accuracy_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions: argmax for class indices, logit > 0 per label for multi-label."""
    if out.dim() == y.dim() and out.shape == y.shape:  # multi-label: every label counts
        return ((out > 0) == (y > 0.5)).float().mean(dim=tuple(range(1, out.dim()))).sum()
    return (out.argmax(1) == y).sum()


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor (in a tuple or a dict)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    items = batch.values() if isinstance(batch, Mapping) else batch
    for item in items:
        if isinstance(item, torch.Tensor) or isinstance(item, Sequence | Mapping):
            return batch_size_of(item)
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}")


@dataclass(frozen=True)
class Task:
    loss: LossFn
    metric: MetricFn | None
    metric_name: str | None  # "accuracy", a callable's name, or None (no metric)
    step_fn: StepFn | None = None
    classification: bool = True  # targets are class indices (int64)

    def step(self, model: nn.Module, batch: Any, memory_format: torch.memory_format | None,
             with_metric: bool = True) -> StepOutput:
        """One batch's loss; its metric's sum too when ``with_metric`` (training steps skip
        it: an argmax per step that nobody reads)."""
        if self.step_fn is not None:
            return self._user_step(model, batch)
        x, y = batch
        if memory_format is not None and x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)
        out = model(x).float()
        loss = self.loss(out, y)
        metric = (self.metric(out.detach(), y) if with_metric and self.metric is not None
                  else None)
        return StepOutput(loss, metric, x.shape[0])

    def _user_step(self, model: nn.Module, batch: Any) -> StepOutput:
        result = self.step_fn(model, batch)
        if isinstance(result, tuple):
            loss, metric_sum, count = result
            return StepOutput(loss, torch.as_tensor(metric_sum), int(count))
        return StepOutput(result, None, batch_size_of(batch))


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, label_smoothing=label_smoothing)
    return loss


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.reshape(y.shape), y.float())


def bce_with_logits(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, y.float())


CLASSIFICATION = Task(cross_entropy(), accuracy_sum, "accuracy")  # the default


def make_task(cfg: TrainConfig, step_fn: StepFn | None = None) -> Task:
    """The task ``[train]`` names (``step_fn`` overrides ``train.step``)."""
    def named(key: str) -> Callable:
        return import_callable(getattr(cfg, key), f"train.{key}", cfg.path, "train.path")

    builtin = {"cross_entropy": cross_entropy(cfg.label_smoothing), "mse": mse,
               "bce_with_logits": bce_with_logits}
    loss = builtin[cfg.loss] if cfg.loss in builtin else named("loss")
    metric_name = cfg.metric_name()
    metric = (accuracy_sum if metric_name == "accuracy" else named("metric") if metric_name
              else None)
    if step_fn is None and cfg.step:
        step_fn = named("step")
    return Task(loss, metric, metric_name, step_fn, classification=cfg.class_targets())


def check_first_step(task: Task, model: nn.Module, batch: Any) -> None:
    """A step function must return a finite scalar loss on the first batch (one line if not)."""
    with torch.no_grad():
        out = task.step(model, batch, None)
    loss = out.loss
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ConfigError(f"the training step (train.step, or the built-in one with train.loss) "
                          f"must return a scalar loss tensor (or (loss, metric_sum, count)), "
                          f"but got {shape} on the first batch.")
    if not math.isfinite(loss.item()):
        raise ConfigError(f"the training step (train.step, or the built-in one with train.loss) "
                          f"returned a loss of {loss.item()} on the first batch, before any "
                          f"update: check the loss and the data.")
    if out.metric_sum is None and task.metric_name is not None:  # else it would report 0
        raise ConfigError(f"the training step returned a loss alone, but train.metric asks for "
                          f"{task.metric_name!r} ('auto' means accuracy with loss = "
                          f"'cross_entropy'): return (loss, metric_sum, count), or set "
                          f"train.metric = 'none'.")
