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

from torch import nn

from tuner.config import StudyConfig, load_study
from tuner.context import load_workload, runtime_device
from tuner.dashboard import annotate_stage
from tuner.pipeline import Result, run
from tuner.storage import DEFAULT_STORAGE
from tuner.task import StepFn
from tuner.user_data import DatasetLike, user_splits

__all__ = ["DatasetLike", "tune"]


def tune(model_fn: Callable[[], nn.Module], train_set: DatasetLike, val_set: DatasetLike,
         config: StudyConfig | str | Path | None = None, *,
         test_set: DatasetLike | None = None, storage: str = DEFAULT_STORAGE,
         run_name: str | None = None, fresh: bool = False, budget_s: float | None = None,
         step_fn: StepFn | None = None, collate_fn: Callable | None = None) -> Result:
    """Tune ``model_fn``'s hyper-parameters on ``train_set``, choosing by ``val_set``.

    ``config`` is a ``StudyConfig``, a study file's path, or None for the defaults (run name
    ``"tune"``); its ``data`` and ``model`` names are not used. With ``test_set`` the final
    training runs on train + validation and is scored on it once (``result.test_loss``,
    ``result.metric``); without, it runs on train and is scored on validation. Returns the
    stored run's name and the chosen values (``tuner.Result``); the same call resumes.
    ``budget_s`` fits a new run to that many tuning seconds (``tuner.budget``).

    ``step_fn(model, batch) -> loss`` (or ``(loss, metric_sum, count)``) replaces the built-in
    ``(x, y)`` step: the datasets' items then reach it as they are, batched by a DataLoader
    with ``collate_fn`` (torch's default collate when None).
    """
    if config is None:
        config = StudyConfig(name="tune")
    elif not isinstance(config, StudyConfig):
        config = load_study(config)
    device = runtime_device(config)
    splits = user_splits(train_set, val_set, test_set, config.data, device,
                         classes=config.train.class_targets(),
                         items=step_fn is not None or collate_fn is not None or
                         bool(config.train.step), collate=collate_fn)
    workload = load_workload(config, model_fn, splits, step_fn)
    return run(config, storage=storage, run_name=run_name, fresh=fresh, budget_s=budget_s,
               workload=workload, on_decided=annotate_stage)
