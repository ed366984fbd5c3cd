"""Datasets held as tensors, and a batch iterator that shuffles on the device.

Small datasets live in memory (or on the GPU) as one tensor each, as in airbench: no DataLoader
workers, no per-sample Python. ``load_splits`` returns train / validation / test, the validation
split carved from the training split with a fixed seed, so the test split is touched only by the
final evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tuner.config import DataConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorData:
    """Inputs ``x`` (N, ...) float and integer labels ``y`` (N,), on one device."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x and y differ in length: {len(self.x)=}, {len(self.y)=}.")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> TensorData:
        return TensorData(self.x.to(device), self.y.to(device))

    def subset(self, index: torch.Tensor) -> TensorData:
        return TensorData(self.x[index], self.y[index])

    def head(self, n: int) -> TensorData:
        return TensorData(self.x[:n], self.y[:n])


def concat(a: TensorData, b: TensorData) -> TensorData:
    return TensorData(torch.cat([a.x, b.x]), torch.cat([a.y, b.y]))


@dataclass(frozen=True)
class Splits:
    train: TensorData
    val: TensorData
    test: TensorData
    num_classes: int

    def to(self, device: torch.device | str) -> Splits:
        return Splits(self.train.to(device), self.val.to(device), self.test.to(device),
                      self.num_classes)


def split_validation(data: TensorData, val_fraction: float, seed: int
                     ) -> tuple[TensorData, TensorData]:
    """Split ``data`` into (train, val) with a fixed-seed permutation."""
    n_val = round(len(data) * val_fraction)
    if not 0 < n_val < len(data):
        raise ValueError(f"val_fraction={val_fraction} leaves no samples on one side of "
                         f"{len(data)} training samples.")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[n_val:]), data.subset(perm[:n_val])


def load_mnist1d() -> tuple[TensorData, TensorData]:
    """MNIST-1D generated locally by ``mnist1d.make_dataset`` (default args: 4000 / 1000)."""
    from mnist1d.data import make_dataset

    d = make_dataset()  # seeded inside (seed 42); ~2 s of numpy
    def as_data(x: np.ndarray, y: np.ndarray) -> TensorData:
        return TensorData(torch.tensor(x, dtype=torch.float32).unsqueeze(1),
                          torch.tensor(y, dtype=torch.int64))
    return as_data(d["x"], d["y"]), as_data(d["x_test"], d["y_test"])


DatasetLoader = Callable[[], tuple[TensorData, TensorData]]
DATASETS: dict[str, DatasetLoader] = {"mnist1d": load_mnist1d}


def load_splits(cfg: DataConfig) -> Splits:
    train_full, test = DATASETS[cfg.name]()
    train, val = split_validation(train_full, cfg.val_fraction, cfg.split_seed)
    num_classes = int(torch.cat([train_full.y, test.y]).max()) + 1
    log.info("data %s: %d train / %d val / %d test, %d classes", cfg.name, len(train), len(val),
             len(test), num_classes)
    return Splits(train, val, test, num_classes)


def batches(data: TensorData, batch_size: int, generator: torch.Generator | None = None,
            ) -> Iterator[TensorData]:
    """One epoch of shuffled full batches (the last partial batch is dropped).

    The permutation is drawn on the data's device; indexing gathers each batch there.
    """
    if batch_size > len(data):
        raise ValueError(f"batch_size={batch_size} exceeds the {len(data)} training samples.")
    perm = torch.randperm(len(data), device=data.x.device, generator=generator)
    for i in range(len(data) // batch_size):
        yield data.subset(perm[i * batch_size:(i + 1) * batch_size])


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size
