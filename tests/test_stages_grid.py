"""tuner.stages.grid: the grid decision and the grid-stage factory (momentum, weight decay)."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.config import RefineConfig, StudyConfig
from tuner.context import Context, Workload
from tuner.stages import momentum, weight_decay
from tuner.stages.base import HParams, Sizes, Speed, Stage
from tuner.stages.grid import (
    GridChoice,
    decide_grid,
    describe_trial,
    grid_seconds,
    metric_text,
    scored,
)
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.momentum import MomentumDecision
from tuner.stages.weight_decay import WeightDecayDecision

from .conftest import tiny_config

VALUES = [0.99, 0.97, 0.95, 0.9]
SPEED = Speed({bs: 0.003 for bs in (32, 64, 128)}, 3e-6)
SIZES = Sizes(n_train=3200, n_val=800)


def grid_trials(outcomes: dict[float, float | str]) -> list[FrozenTrial]:
    """One trial per momentum value: a float is a COMPLETE value, 'pruned'/'diverged' a PRUNED
    trial (reported at step 3)."""
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for value, outcome in outcomes.items():
        study.enqueue_trial({"max_momentum": value})  # fixes what suggest_categorical returns
        trial = study.ask()
        assert trial.suggest_categorical("max_momentum", VALUES) == value
        if isinstance(outcome, float):
            trial.report(outcome, 3)
            study.tell(trial, outcome)
        else:
            trial.report(5.0, 3)
            if outcome == "diverged":
                trial.set_user_attr("diverged", "training loss became nan at step 7")
            else:
                trial.set_user_attr("pruned_at", 3)
            study.tell(trial, state=TrialState.PRUNED)
    return study.get_trials()


def test_best_is_the_lowest_value() -> None:
    trials = grid_trials({0.99: 0.52, 0.97: 0.41, 0.95: 0.47, 0.9: "pruned"})
    choice = decide_grid(trials, "max_momentum")
    assert isinstance(choice, GridChoice)
    assert choice.value == 0.97
    assert "max_momentum 0.97" in choice.why
    assert "0.41" in choice.why
    assert "pruned at report 3" in choice.why
    assert "\n" not in choice.why


def test_label_is_used_in_the_reason() -> None:
    trials = grid_trials({0.99: 0.5, 0.95: 0.4})
    choice = decide_grid(trials, "max_momentum", label="max momentum")
    assert choice.value == 0.95
    assert choice.why.startswith("max momentum 0.95")


def test_reason_lists_every_trial_by_decreasing_value() -> None:
    trials = grid_trials({0.9: 0.6, 0.99: 0.5, 0.95: "diverged", 0.97: 0.7})
    why = decide_grid(trials, "max_momentum").why
    assert choice_order(why) == ["0.99", "0.97", "0.95", "0.9"]
    assert "0.95: diverged" in why


def choice_order(why: str) -> list[str]:
    listed = why.split("(all: ", 1)[1].rstrip(")")
    return [item.split(":")[0].strip() for item in listed.split(", ")]


def test_pruned_trial_with_a_lower_reported_value_is_not_chosen() -> None:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for value, state in ((0.99, TrialState.COMPLETE), (0.9, TrialState.PRUNED)):
        study.enqueue_trial({"max_momentum": value})
        trial = study.ask()
        trial.suggest_categorical("max_momentum", VALUES)
        trial.report(0.1 if state == TrialState.PRUNED else 0.5, 1)
        if state == TrialState.COMPLETE:
            study.tell(trial, 0.5)
        else:
            study.tell(trial, state=state)
    assert decide_grid(study.get_trials(), "max_momentum").value == 0.99


def test_failed_and_running_trials_are_ignored() -> None:
    trials = grid_trials({0.99: 0.5, 0.95: 0.45})
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.enqueue_trial({"max_momentum": 0.9})
    running = study.ask()
    running.suggest_categorical("max_momentum", VALUES)
    running.report(0.01, 3)
    study.enqueue_trial({"max_momentum": 0.97})
    failed = study.ask()
    failed.suggest_categorical("max_momentum", VALUES)
    failed.report(0.01, 3)
    study.tell(failed, state=TrialState.FAIL)
    extra = study.get_trials()
    assert [t.state for t in extra] == [TrialState.RUNNING, TrialState.FAIL]
    assert decide_grid([*trials, *extra], "max_momentum").value == 0.95


def test_all_pruned_raises() -> None:
    trials = grid_trials({0.99: "pruned", 0.95: "diverged"})
    with pytest.raises(RuntimeError) as info:
        decide_grid(trials, "max_momentum", label="max momentum")
    message = str(info.value)
    assert "every max momentum trial" in message
    assert "0.99: pruned at report 3" in message
    assert "0.95: diverged" in message
    assert "lr_range.end_lr" in message


def test_no_trials_raises() -> None:
    with pytest.raises(RuntimeError):
        decide_grid([], "max_momentum")


def test_describe_trial() -> None:
    trials = grid_trials({0.99: 0.123456, 0.97: "pruned", 0.95: "diverged"})
    assert [describe_trial(t) for t in trials] == ["0.1235", "pruned at report 3", "diverged"]


def test_describe_an_infeasible_trial() -> None:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trial = study.ask()
    trial.set_user_attr("infeasible", "batch size 512 does not fit in memory")
    study.tell(trial, state=TrialState.PRUNED)
    assert describe_trial(study.get_trials()[0]) == "out of memory"


def test_scored_is_complete_with_a_finite_loss() -> None:
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for value in (0.5, math.inf):
        study.tell(study.ask(), value)
    study.tell(study.ask(), state=TrialState.PRUNED)
    assert [scored(t) for t in study.get_trials()] == [True, False, False]


def test_metric_text() -> None:
    assert metric_text("accuracy", [0.5, 0.1234]) == ", accuracy 50.00%, 12.34%"
    assert metric_text("f1", [0.5]) == ", f1 0.5"
    assert metric_text(None, [None]) == ""


def test_grid_seconds_count_values_repeats_epochs_and_one_evaluation_per_epoch() -> None:
    cfg = StudyConfig()  # batch size 32
    section = dataclasses.replace(cfg.momentum, values=(0.99, 0.97, 0.95, 0.9), repeats=2,
                                  epochs=30)
    epoch = 100 * 0.003 + 800 * 3e-6  # 3200 / 32 steps, then one pass over the validation set
    assert grid_seconds(cfg, section, SPEED, SIZES) == pytest.approx(4 * 2 * 30 * epoch)


@pytest.mark.parametrize("stage", [momentum.STAGE, weight_decay.STAGE], ids=lambda s: s.name)
def test_grid_stages_cost_and_prune_by_their_own_section(stage: Stage) -> None:
    cfg = tiny_config()
    section = getattr(cfg, stage.name)
    assert stage.param == ("max_momentum" if stage.name == "momentum" else "weight_decay")
    assert stage.cost(cfg, SPEED, SIZES) == grid_seconds(cfg, section, SPEED, SIZES)
    ctx = Context(cfg, None, None, "x")  # type: ignore[arg-type] -- reports reads the config
    assert stage.reports(ctx) == section.epochs


RANGE = RangeDecision(min_lr=0.02, max_lr=0.2, batch_size=64, why="test")
CHECKED = LRDecision(min_lr=0.0282, max_lr=0.282, factor=1.41, reading=0.2, batch_size=64,
                     why="test")
MOMENTUM = MomentumDecision(max_momentum=0.9, min_momentum=0.85, why="test")


def fake_repeated_run(losses: dict[float, float], seen: list[tuple[HParams, int, int]]):  # noqa: ANN201
    """A ``Context.repeated_run`` that trains nothing: the loss of each grid value."""

    def repeated_run(_ctx, trial, hp, *, repeats, epochs):  # noqa: ANN001, ANN202
        seen.append((hp, repeats, epochs))
        value = trial.params.get("max_momentum", trial.params.get("weight_decay"))
        trial.set_user_attr("val_metrics", [0.5] * repeats)
        return losses[value]

    return repeated_run


def test_momentum_stage_runs_its_grid_on_the_checked_range(
        mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    cfg = tiny_config()  # momentum values (0.95, 0.9)
    seen: list[tuple[HParams, int, int]] = []
    monkeypatch.setattr(Context, "repeated_run", fake_repeated_run({0.95: 0.4, 0.9: 0.3}, seen))
    ctx = Context(cfg, Workload(mnist1d_splits, lambda: None, torch.device("cpu")),  # type: ignore[arg-type,return-value]
                  optuna.storages.InMemoryStorage(), "x",
                  {"lr_range": RANGE, "lr_check": CHECKED})
    study = optuna.create_study(storage=ctx.storage, study_name="x/momentum")
    decision = momentum.STAGE.run(ctx, study)
    assert decision == MomentumDecision(max_momentum=0.9, min_momentum=cfg.momentum.min_momentum,
                                        why=decision.why)
    assert decision.why.startswith("max momentum 0.9 gave the lowest")
    assert sorted(hp.max_momentum for hp, _, _ in seen) == [0.9, 0.95]
    for hp, repeats, epochs in seen:
        assert (hp.min_lr, hp.max_lr, hp.batch_size) == (0.0282, 0.282, cfg.train.batch_size)
        assert hp.min_momentum == cfg.momentum.min_momentum
        assert hp.weight_decay == cfg.resolved().momentum.weight_decay
        assert (repeats, epochs) == (cfg.momentum.repeats, cfg.momentum.epochs)


def test_weight_decay_stage_uses_the_chosen_momentum(
        mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    cfg = tiny_config()  # weight decay values (1e-4, 0.0)
    seen: list[tuple[HParams, int, int]] = []
    monkeypatch.setattr(Context, "repeated_run", fake_repeated_run({1e-4: 0.2, 0.0: 0.3}, seen))
    ctx = Context(cfg, Workload(mnist1d_splits, lambda: None, torch.device("cpu")),  # type: ignore[arg-type,return-value]
                  optuna.storages.InMemoryStorage(), "x",
                  {"lr_range": RANGE, "lr_check": CHECKED, "momentum": MOMENTUM})
    study = optuna.create_study(storage=ctx.storage, study_name="x/weight_decay")
    decision = weight_decay.STAGE.run(ctx, study)
    assert isinstance(decision, WeightDecayDecision) and decision.weight_decay == 1e-4
    assert sorted(hp.weight_decay for hp, _, _ in seen) == [0.0, 1e-4]
    for hp, repeats, epochs in seen:
        assert (hp.max_momentum, hp.min_momentum) == (0.9, 0.85)
        assert (hp.min_lr, hp.max_lr) == (0.0282, 0.282)
        assert (repeats, epochs) == (cfg.weight_decay.repeats, cfg.weight_decay.epochs)


@pytest.mark.parametrize("stage", [momentum.STAGE, weight_decay.STAGE], ids=lambda s: s.name)
def test_a_grid_the_refinement_replaces_runs_nothing(
        stage: Stage, mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    cfg = tiny_config(refine=RefineConfig(total_s=60.0, replaces=(stage.name,)))
    monkeypatch.setattr(Context, "repeated_run", lambda *a, **k: pytest.fail("no runs"))
    ctx = Context(cfg.resolved(), Workload(mnist1d_splits, lambda: None, torch.device("cpu")),  # type: ignore[arg-type,return-value]
                  optuna.storages.InMemoryStorage(), "x",
                  {"lr_range": RANGE, "lr_check": CHECKED, "momentum": MOMENTUM})
    study = optuna.create_study(storage=ctx.storage, study_name=f"x/{stage.name}")
    decision = stage.run(ctx, study)
    assert study.trials == []
    # planned as one run per value: what the refinement's search needs at least to cover them
    one_seed = dataclasses.replace(getattr(cfg.resolved(), stage.name), repeats=1)
    assert stage.cost(cfg, SPEED, SIZES) == pytest.approx(grid_seconds(cfg, one_seed, SPEED, SIZES))
    # the starting value: the LR check's momentum, the weight decay held while it ran
    if stage.name == "momentum":
        assert decision.max_momentum == cfg.lr_check.max_momentum
    else:
        assert decision.weight_decay == cfg.resolved().momentum.weight_decay
    grid = ", ".join(f"{v:.3g}" for v in getattr(cfg.resolved(), stage.name).values)
    assert f"no runs: the refinement searches across {grid}" in decision.why
