"""What the MNIST-1D benchmarks share: the data, one 1cycle training run, test scoring (of the
published CNN unless another ``model_fn`` is given)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tuner.config import DataConfig, ScheduleConfig
from tuner.data import Splits, concat, load_splits
from tuner.models import mnist1d_cnn
from tuner.schedules import LRMomentum, one_cycle
from tuner.train import evaluate, fit, make_sgd

SCHEDULE = ScheduleConfig()  # the tool's 1cycle settings, for every method alike


@dataclass(frozen=True)
class Choice:
    """A configuration to retrain: 1cycle from max_lr/10 to max_lr, momentum max -> 0.85."""

    max_lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    min_lr: float | None = None  # default max_lr / 10 (the paper's rule)

    def describe(self) -> str:
        return (f"lr {self.lr_min:.3g}-{self.max_lr:.3g}, mom {self.momentum:g}, "
                f"wd {self.weight_decay:g}, bs {self.batch_size}")

    @property
    def lr_min(self) -> float:
        return self.min_lr if self.min_lr is not None else self.max_lr / 10


def splits() -> Splits:
    return load_splits(DataConfig())


def train_one_cycle(choice: Choice, train, epochs: int, seed: int, on_epoch=None,  # noqa: ANN001, ANN201
                    model_fn: Callable[[], nn.Module] = mnist1d_cnn):
    """Train a fresh ``model_fn()`` (the MNIST-1D CNN) with 1cycle; ``on_epoch(epoch, model)``
    after each epoch."""
    torch.manual_seed(seed)
    model = model_fn()
    optimizer = make_sgd(model, choice.lr_min, choice.momentum, choice.weight_decay)
    per_epoch = len(train) // choice.batch_size
    total = per_epoch * epochs

    def schedule(step: int) -> LRMomentum:
        return one_cycle(step, total, choice.lr_min, choice.max_lr, choice.momentum, 0.85,
                         SCHEDULE.cycle_fraction, SCHEDULE.final_div)

    def on_eval(step: int, _loss: float, _s: float) -> None:
        if on_epoch is not None:
            on_epoch(step // per_epoch, model)

    fit(model, optimizer, train, total_steps=total, batch_size=choice.batch_size,
        schedule=schedule, eval_every=per_epoch, on_eval=on_eval,
        generator=torch.Generator().manual_seed(seed))
    return model


def test_accuracy(choice: Choice, data: Splits, epochs: int, seeds: list[int],
                  model_fn: Callable[[], nn.Module] = mnist1d_cnn
                  ) -> tuple[float, float, list[float]]:
    """Retrain on train + validation once per seed; mean and sd of test accuracy."""
    train = concat(data.train, data.val)
    accs = []
    for seed in seeds:
        model = train_one_cycle(choice, train, epochs, seed, model_fn=model_fn)
        accs.append(evaluate(model, data.test).metric)
    return statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0, accs
