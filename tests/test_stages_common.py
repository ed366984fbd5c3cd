"""tuner.stages.common.decide_grid and tuner.stages.batch_size.planned_steps."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tuner.stages.batch_size import planned_steps
from tuner.stages.common import GridChoice, decide_grid, describe_trial, epoch_steps

VALUES = [0.99, 0.97, 0.95, 0.9]


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


def test_epoch_steps() -> None:
    assert epoch_steps(1000, 128) == 7
    assert epoch_steps(128, 128) == 1
    with pytest.raises(ValueError, match="exceeds"):
        epoch_steps(100, 128)


@pytest.mark.parametrize(
    ("budget_s", "steps_per_s", "expected"),
    [(6.0, 10.0, 60), (1.0, 2.9, 2), (2.5, 100.0, 250), (0.01, 1.0, 1), (0.0, 50.0, 1)],
)
def test_planned_steps(budget_s: float, steps_per_s: float, expected: int) -> None:
    steps = planned_steps(budget_s, steps_per_s)
    assert isinstance(steps, int)
    assert steps == expected


def test_planned_steps_grows_with_budget_and_throughput() -> None:
    assert planned_steps(6.0, 20.0) == 2 * planned_steps(6.0, 10.0)
    assert planned_steps(12.0, 10.0) == 2 * planned_steps(6.0, 10.0)


def test_repeated_run_averages_seeds_and_reports_the_first(tmp_path, mnist1d_splits) -> None:  # noqa: ANN001
    import torch

    from tuner.models import build_model
    from tuner.stages.common import Context, HParams, repeated_run
    from tuner.storage import open_storage

    from .conftest import tiny_config

    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    ctx = Context(tiny_config(), mnist1d_splits, lambda: build_model("mnist1d_cnn", 10),
                  torch.device("cpu"), storage, "x")
    study = optuna.create_study(storage=storage, study_name="x/momentum")
    trial = study.ask()
    hp = HParams(0.01, 0.1, 0.95, 0.85, 1e-4, 64)
    value = repeated_run(ctx, trial, hp, repeats=2, epochs=2)
    study.tell(trial, value)
    (done,) = study.get_trials()
    losses = done.user_attrs["val_losses"]
    assert len(losses) == 2 and losses[0] != losses[1]  # two seeds, two different runs
    assert value == pytest.approx(sum(losses) / 2)
    assert sorted(done.intermediate_values) == [1, 2]  # one report per epoch, first seed only
    assert done.intermediate_values[2] == pytest.approx(losses[0])
    assert len(done.user_attrs["history"]) == 2
