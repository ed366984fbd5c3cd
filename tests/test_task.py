"""tuner.task: the loss, the metric and a user's step function; bad steps fail in one line on
the first batch, before anything is stored."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tuner.config import ConfigError, TrainConfig
from tuner.context import load_workload
from tuner.data import Splits, TensorData
from tuner.task import (
    CLASSIFICATION,
    accuracy_sum,
    batch_size_of,
    check_first_step,
    make_task,
)

from .conftest import tiny_config


def test_default_task_is_cross_entropy_with_accuracy() -> None:
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    out = CLASSIFICATION.step(model, (x, y), None)
    assert out.loss.item() == pytest.approx(nn.functional.cross_entropy(model(x), y).item())
    assert out.metric_sum.item() == (model(x).argmax(1) == y).sum().item()
    assert out.count == 8 and make_task(TrainConfig()).metric_name == "accuracy"


def test_builtin_losses_and_multilabel_accuracy() -> None:
    out = torch.tensor([[2.0, -1.0], [-3.0, 0.5]])
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert accuracy_sum(out, labels).item() == pytest.approx(0.5 + 1.0)  # per-label, per sample
    bce = make_task(TrainConfig(loss="bce_with_logits", metric="accuracy"))
    assert bce.loss(out, labels).item() == pytest.approx(
        nn.functional.binary_cross_entropy_with_logits(out, labels).item())
    mse = make_task(TrainConfig(loss="mse"))
    assert mse.metric is None and mse.metric_name is None and not mse.classification
    assert mse.loss(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])).item() == 2.5
    smooth = make_task(TrainConfig(label_smoothing=0.1))
    logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert smooth.loss(logits, y).item() == pytest.approx(
        nn.functional.cross_entropy(logits, y, label_smoothing=0.1).item())


def test_batch_size_of_dicts_and_tuples() -> None:
    assert batch_size_of({"tokens": torch.zeros(5, 7), "mask": torch.ones(5, 7)}) == 5
    assert batch_size_of((torch.zeros(3, 2), torch.zeros(3), torch.zeros(3))) == 3


def loss_of_shape(model: nn.Module, batch) -> torch.Tensor:  # noqa: ANN001
    x, _ = batch
    return model(x).sum(dim=1)  # one loss per sample: not a scalar


def nan_loss(model: nn.Module, batch) -> torch.Tensor:  # noqa: ANN001
    x, _ = batch
    return model(x).sum() * math.nan


@pytest.mark.parametrize(("step", "expected"), [
    (loss_of_shape, "must return a scalar loss tensor"),
    (nan_loss, "returned a loss of nan on the first batch"),
])
def test_a_bad_step_function_is_one_line_before_anything_runs(step, expected: str,  # noqa: ANN001
                                                              ) -> None:
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    data = TensorData(x, y)
    splits = Splits(data, data, None, 2)
    with pytest.raises(ConfigError) as info:
        load_workload(tiny_config(), lambda: nn.Linear(4, 2), splits, step_fn=step)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_step_function_may_report_a_metric() -> None:
    def step(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
        out = model(batch["x"])
        return (nn.functional.cross_entropy(out, batch["y"]),
                (out.argmax(1) == batch["y"]).sum(), len(batch["y"]))

    task = make_task(TrainConfig(), step)
    batch = {"x": torch.randn(6, 4), "y": torch.randint(0, 2, (6,))}
    out = task.step(nn.Linear(4, 2), batch, None)
    assert out.count == 6 and 0 <= out.metric_sum.item() <= 6
    check_first_step(task, nn.Linear(4, 2), batch)  # a good step passes


def test_a_callable_that_does_not_import_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        make_task(TrainConfig(loss="nosuch_module:loss"))
    message = str(info.value)
    assert message.startswith("train.loss='nosuch_module:loss': cannot import module")
    assert "\n" not in message
    (tmp_path / "mylosses.py").write_text("def half_mse(out, y):\n"
                                          "    return ((out.squeeze(1) - y) ** 2).mean() / 2\n")
    task = make_task(TrainConfig(loss="mylosses:half_mse", path=str(tmp_path)))
    assert task.loss(torch.tensor([[2.0]]), torch.tensor([0.0])).item() == 2.0
    with pytest.raises(ConfigError, match="has no 'nope'"):
        make_task(TrainConfig(loss="mylosses:nope", path=str(tmp_path)))
