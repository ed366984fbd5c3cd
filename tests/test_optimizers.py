"""tuner.optimizers: SGD, AdamW and Adam from one registry, the schedule's momentum reaching
SGD's momentum or Adam's beta1 while a run trains."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

from tuner.config import TrainConfig
from tuner.context import Context, load_workload
from tuner.optimizers import OPTIMIZERS, make_optimizer
from tuner.stages.base import HParams
from tuner.storage import open_storage

from .conftest import tiny_config


@pytest.mark.parametrize(("name", "cls"), [("sgd", torch.optim.SGD),
                                           ("adamw", torch.optim.AdamW),
                                           ("adam", torch.optim.Adam)])
def test_registry_builds_each_optimizer(name: str, cls: type) -> None:
    model = torch.nn.Linear(3, 2)
    cfg = TrainConfig(optimizer=name, beta2=0.98, eps=1e-6)
    opt = make_optimizer(model, cfg, 0.01, 0.9, 1e-2)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 1e-2
    assert OPTIMIZERS[name].momentum(group) == 0.9
    if name != "sgd":
        assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-6


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_one_cycle_momentum_reaches_the_optimizer_during_a_run(
        optimizer: str, tmp_path: Path, mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(train=TrainConfig(batch_size=64, threads=1, optimizer=optimizer))
    ctx = Context(cfg, load_workload(cfg, splits=mnist1d_splits),
                  open_storage(f"sqlite:///{tmp_path}/t.db"), "x")
    seen: list[tuple[float, float]] = []  # (the schedule's momentum, the optimizer's)
    import tuner.context as context_module

    real_fit = context_module.fit

    def spying_fit(model, optimizer_, data, **kw):  # noqa: ANN001, ANN003, ANN202
        schedule = kw["schedule"]
        kind = OPTIMIZERS[cfg.train.optimizer]

        def on_step(step: int, _lr: float, _loss: float) -> None:
            seen.append((schedule(step - 1).momentum, kind.momentum(optimizer_.param_groups[0])))

        return real_fit(model, optimizer_, data, on_step=on_step, **kw)

    monkeypatch.setattr(context_module, "fit", spying_fit)
    hp = HParams(0.001, 0.01, 0.95, 0.85, 1e-2, 64)
    study = optuna.create_study(storage=ctx.storage, study_name="x/momentum")
    trial = study.ask()
    ctx.one_cycle_run(trial, hp, total_steps=40, eval_every=20, seed=0)
    assert len(seen) == 40
    assert all(expected == pytest.approx(actual) for expected, actual in seen)
    values = [actual for _, actual in seen]
    assert values[0] == pytest.approx(0.95) and min(values) == pytest.approx(0.85, abs=0.01)
