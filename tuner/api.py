"""``tuner.tune``: the whole pipeline on your own model factory and datasets, from Python.

    import tuner
    result = tuner.tune(make_model, train_set, val_set, tuner.StudyConfig(name="mine"))
    print(result.run, result.max_lr, result.momentum, result.weight_decay, result.batch_size)

The datasets may be ``tuner.data.TensorData``, a pair of tensors ``(x, y)``, or any map-style
``torch.utils.data.Dataset`` whose items are ``(input, label)`` (tensors, arrays or PIL images).
Data that fits is read once into tensors on the device and normalised there (``config.data``
says how: ``normalize``, ``augment``, ``hold``); larger data is read by a DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from tuner.config import StudyConfig, load_study
from tuner.context import Workload, runtime_device
from tuner.dashboard import annotate_stage
from tuner.data import TensorData, make_splits
from tuner.pipeline import Result, run
from tuner.sources import Arrays, Split
from tuner.storage import DEFAULT_STORAGE

DatasetLike = TensorData | tuple[torch.Tensor, torch.Tensor] | Dataset


def as_source(data: DatasetLike, what: str) -> Split:
    """A dataset argument as a source: tensors stay tensors, datasets stay datasets."""
    if isinstance(data, TensorData):
        return Arrays(data.x, data.y.long(), what)
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return Arrays(data.tensors[0], data.tensors[1].long(), what)
    if isinstance(data, tuple) and len(data) == 2 and all(
            isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ValueError(f"{what}: x and y differ in length: {len(x)=}, {len(y)=}.")
        return Arrays(x, y.long(), what)
    if isinstance(data, Dataset) and hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data
    raise TypeError(f"{what} must be a TensorData, an (x, y) pair of tensors or a map-style "
                    f"torch Dataset, but got {type(data).__name__}.")


def tune(model_fn: Callable[[], nn.Module], train_set: DatasetLike, val_set: DatasetLike,
         config: StudyConfig | str | Path | None = None, *,
         test_set: DatasetLike | None = None, storage: str = DEFAULT_STORAGE,
         run_name: str | None = None, fresh: bool = False,
         budget_s: float | None = None) -> Result:
    """Tune ``model_fn``'s hyper-parameters on ``train_set``, choosing by ``val_set``.

    ``config`` is a ``StudyConfig``, a study file's path, or None for the defaults (run name
    ``"tune"``); its ``data`` and ``model`` names are not used. With ``test_set`` the final
    training runs on train + validation and is scored on it once (``result.test_accuracy``);
    without, it runs on train and is scored on validation (``result.accuracy``). Returns the
    stored run's name and the chosen values (``tuner.Result``); the same call resumes.
    ``budget_s`` fits a new run to that many tuning seconds (``tuner.budget``).
    """
    if config is None:
        config = StudyConfig(name="tune")
    elif not isinstance(config, StudyConfig):
        config = load_study(config)
    device = runtime_device(config)
    splits = make_splits(as_source(train_set, "train_set"), as_source(val_set, "val_set"),
                         as_source(test_set, "test_set") if test_set is not None else None,
                         config.data, device, name="tune")
    return run(config, storage=storage, run_name=run_name, fresh=fresh, budget_s=budget_s,
               workload=Workload(splits, model_fn, device), on_decided=annotate_stage)
