"""Data a user brings: datasets passed to ``tuner.tune``, or made by ``data.name =
"module:callable"`` in a study file (called with no arguments, returning ``(train, val)`` or
``(train, val, test)``).

Each split may be a ``TensorData``, an ``(x, y)`` pair of tensors or arrays, or a map-style torch
``Dataset``. With the built-in step (``(x, y)`` batches) they take the fast path of
``tuner.data.make_splits``; targets are class indices for ``loss = "cross_entropy"`` and kept as
they are (float values, 0/1 per label) otherwise. With a step function or a collate function,
every split is read as it is by a DataLoader (``ItemsData``): dict batches, several inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from tuner.config import ConfigError, DataConfig
from tuner.data import ItemsData, Splits, TensorData, make_splits, split_validation
from tuner.imports import import_callable
from tuner.sources import Arrays, Split

DatasetLike = TensorData | tuple[Any, Any] | Dataset


def as_source(data: DatasetLike, what: str, classes: bool = True) -> Split:
    """A dataset argument as a source: tensors stay tensors (class indices as int64 when
    ``classes``, float values otherwise), datasets stay datasets."""
    if isinstance(data, TensorData):
        x, y = data.x, data.y
    elif isinstance(data, TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
    elif isinstance(data, tuple) and len(data) == 2 and all(
            isinstance(t, torch.Tensor | np.ndarray) for t in data):
        x, y = (torch.as_tensor(t) for t in data)
    elif isinstance(data, Dataset) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data
    else:
        raise TypeError(f"{what} must be a TensorData, an (x, y) pair of tensors or a map-style "
                        f"torch Dataset, but got {type(data).__name__}.")
    if len(x) != len(y):
        raise ValueError(f"{what}: x and y differ in length: {len(x)=}, {len(y)=}.")
    if x.dtype == torch.float64:
        x = x.float()
    return Arrays(x, y.long() if classes else y.float(), what)


def as_items(data: DatasetLike, what: str, device: torch.device,
             collate: Callable | None, workers: int) -> ItemsData:
    """A split read as it is, batch by batch (for a step function)."""
    if isinstance(data, TensorData):
        data = TensorDataset(data.x, data.y)
    elif isinstance(data, tuple):
        data = TensorDataset(*(torch.as_tensor(t) for t in data))
    if not isinstance(data, Dataset):
        raise TypeError(f"{what} must be a map-style torch Dataset (or tensors), but got "
                        f"{type(data).__name__}.")
    return ItemsData(data, torch.arange(len(data)), device, collate, workers)  # type: ignore


def user_splits(train: DatasetLike, val: DatasetLike | None, test: DatasetLike | None,
                cfg: DataConfig, device: torch.device, *, classes: bool, items: bool,
                collate: Callable | None = None, name: str = "tune") -> Splits:
    """Splits of the user's data (``val`` None: carved from ``train`` with ``val_fraction``)."""
    if not items:
        return make_splits(as_source(train, "train_set", classes),
                           as_source(val, "val_set", classes) if val is not None else None,
                           as_source(test, "test_set", classes) if test is not None else None,
                           cfg, device, name=name, classes=classes)
    train_d = as_items(train, "train_set", device, collate, cfg.workers)
    if val is None:
        train_d, val_d = split_validation(train_d, cfg.val_fraction, cfg.split_seed)
    else:
        val_d = as_items(val, "val_set", device, collate, cfg.workers)
    test_d = as_items(test, "test_set", device, collate, cfg.workers) if test is not None else None
    return Splits(train_d, val_d, test_d, 0)


def load_user_data(cfg: DataConfig, device: torch.device, *, classes: bool, items: bool
                   ) -> Splits:
    """``data.name = "module:callable"``: call it, then ``user_splits``."""
    made = import_callable(cfg.name, "data.name", cfg.path, "data.path")()
    if not isinstance(made, Sequence) or len(made) not in (2, 3):
        raise ConfigError(f"data.name={cfg.name!r} must return (train, val) or (train, val, "
                          f"test), but got {type(made).__name__}.")
    collate = (import_callable(cfg.collate, "data.collate", cfg.path, "data.path")
               if cfg.collate else None)
    train, val, *rest = made
    return user_splits(train, val, rest[0] if rest else None, cfg, device, classes=classes,
                       items=items, collate=collate, name=cfg.name)
