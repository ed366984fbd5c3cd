"""tuner.stages.lr_recheck: the LR check again at the chosen weight decay when it differs from
the one the check held; otherwise no runs and the check's range stands. The later stages use
the range in force (``in_force``)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch

from tuner.config import LRCheckConfig, RefineConfig
from tuner.context import Context, Workload
from tuner.stages import lr_recheck
from tuner.stages.base import HParams, Sizes, Speed
from tuner.stages.grid import grid_seconds
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.lr_recheck import RecheckDecision, in_force
from tuner.stages.momentum import MomentumDecision
from tuner.stages.weight_decay import WeightDecayDecision

from .conftest import tiny_config

RANGE = RangeDecision(min_lr=0.01, max_lr=0.1, batch_size=64, why="validation minimum")
CHECKED = LRDecision(min_lr=0.01, max_lr=0.1, factor=1.0, reading=0.1, batch_size=64,
                     why="x1 kept")
MOMENTUM = MomentumDecision(max_momentum=0.97, min_momentum=0.85, why="lowest")
FACTORS = LRCheckConfig(factors=(0.71, 1.0, 1.41, 2.0), epochs=4, repeats=2)


def context(splits, weight_decay: float, cfg=None) -> Context:  # noqa: ANN001
    cfg = cfg or tiny_config(lr_check=FACTORS)
    return Context(cfg, Workload(splits, lambda: None, torch.device("cpu")),  # type: ignore[arg-type,return-value]
                   optuna.storages.InMemoryStorage(), "x",
                   {"lr_range": RANGE, "lr_check": CHECKED, "momentum": MOMENTUM,
                    "weight_decay": WeightDecayDecision(weight_decay=weight_decay, why="w")})


def fake_runs(losses: dict[float, float], seen: list[HParams]):  # noqa: ANN201
    def repeated_run(_ctx, trial, hp, *, repeats, epochs):  # noqa: ANN001, ANN202
        seen.append(hp)
        trial.set_user_attr("val_metrics", [0.5] * repeats)
        return losses[round(hp.max_lr / RANGE.max_lr, 3)]

    return repeated_run


def recheck(ctx: Context) -> RecheckDecision:
    return lr_recheck.STAGE.run(ctx, optuna.create_study(storage=ctx.storage))


def test_another_weight_decay_runs_the_check_again_at_it(
        mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    held = tiny_config().resolved().momentum.weight_decay
    seen: list[HParams] = []
    monkeypatch.setattr(Context, "repeated_run",
                        fake_runs({0.71: 0.19, 1.0: 0.16, 1.41: 0.14, 2.0: 0.17}, seen))
    ctx = context(mnist1d_splits, held * 10)
    decision = recheck(ctx)
    assert decision.ran and decision.max_lr == pytest.approx(0.141)
    assert decision.min_lr == pytest.approx(0.0141) and decision.factor == pytest.approx(1.41)
    assert decision.why.startswith(f"at weight decay {held * 10:g}: x1.41 the range test's 0.1")
    assert sorted(round(hp.max_lr, 3) for hp in seen) == [0.071, 0.1, 0.141, 0.2]
    assert {(hp.weight_decay, hp.max_momentum) for hp in seen} == {(held * 10, 0.97)}
    ctx.decisions["lr_recheck"] = decision
    force = in_force(ctx)
    assert (force.max_lr, force.min_lr, force.factor) == (decision.max_lr, decision.min_lr,
                                                          decision.factor)
    assert force.reading == CHECKED.reading


def test_the_held_weight_decay_keeps_the_checks_range_without_runs(
        mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(Context, "repeated_run", lambda *a, **k: pytest.fail("no runs"))
    ctx = context(mnist1d_splits, tiny_config().resolved().momentum.weight_decay)
    assert in_force(ctx) is CHECKED  # before stage 3b: the check's
    decision = recheck(ctx)
    assert not decision.ran and (decision.max_lr, decision.factor) == (0.1, 1.0)
    assert "is the one the check ran at" in decision.why
    replaced = tiny_config(lr_check=FACTORS, refine=RefineConfig(total_s=60.0,
                                                                 replaces=("weight_decay",)))
    decision = recheck(context(mnist1d_splits, 0.0, replaced))
    assert not decision.ran and "weight_decay left to the refinement" in decision.why
    one = tiny_config(lr_check=LRCheckConfig(factors=(1.0,)))
    assert not recheck(context(mnist1d_splits, 0.0, one)).ran


def test_cost_is_the_checks_unless_it_cannot_run() -> None:
    speed, sizes = Speed({64: 0.003}, 3e-6), Sizes(3200, 800)
    cfg = tiny_config(lr_check=FACTORS)
    assert lr_recheck.STAGE.cost(cfg, speed, sizes) == pytest.approx(
        grid_seconds(cfg, cfg.lr_check, speed, sizes))
    left = cfg.replace(refine=dataclasses.replace(cfg.refine, total_s=60.0,
                                                  replaces=("weight_decay",)))
    assert lr_recheck.STAGE.cost(left, speed, sizes) == 0.0
