"""tuner.pruners: MarginPruner against the best COMPLETE trial at the same step."""

from __future__ import annotations

import math

import optuna
import pytest

from tuner.pruners import MarginPruner, is_clearly_worse


def make_study(pruner: MarginPruner, direction: str = "minimize") -> optuna.Study:
    return optuna.create_study(storage=optuna.storages.InMemoryStorage(), pruner=pruner,
                               direction=direction)


def add_complete(study: optuna.Study, values: dict[int, float], final: float | None = None
                 ) -> None:
    trial = study.ask()
    for step, value in values.items():
        trial.report(value, step)
    study.tell(trial, final if final is not None else values[max(values)])


def should_prune(study: optuna.Study, values: dict[int, float]) -> bool:
    """Report ``values`` on a new RUNNING trial and ask the study's pruner about the last one."""
    trial = study.ask()
    for step, value in values.items():
        trial.report(value, step)
    return trial.should_prune()


# --- is_clearly_worse -----------------------------------------------------------------------


def test_is_clearly_worse_minimize() -> None:
    assert is_clearly_worse(1.15, 1.0, 0.1)
    assert not is_clearly_worse(1.05, 1.0, 0.1)
    assert not is_clearly_worse(0.5, 1.0, 0.1)
    assert is_clearly_worse(1.01, 1.0, 0.0)
    assert not is_clearly_worse(1.0, 1.0, 0.0)


def test_is_clearly_worse_uses_the_magnitude_of_a_negative_best() -> None:
    assert is_clearly_worse(-0.85, -1.0, 0.1)
    assert not is_clearly_worse(-0.95, -1.0, 0.1)


def test_is_clearly_worse_maximize() -> None:
    assert is_clearly_worse(0.85, 1.0, 0.1, minimize=False)
    assert not is_clearly_worse(0.95, 1.0, 0.1, minimize=False)
    assert not is_clearly_worse(1.5, 1.0, 0.1, minimize=False)


# --- MarginPruner ---------------------------------------------------------------------------


def test_prunes_a_trial_clearly_behind_the_best() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=2))
    add_complete(study, {0: 2.0, 1: 1.5, 2: 1.0, 3: 0.8})
    add_complete(study, {0: 2.0, 1: 1.6, 2: 1.4, 3: 1.2})  # a worse complete trial
    assert should_prune(study, {0: 2.0, 1: 1.5, 2: 1.2})  # 1.2 > 1.0 * 1.1
    assert should_prune(study, {3: 0.9})  # 0.9 > 0.8 * 1.1


def test_does_not_prune_within_the_margin() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=2))
    add_complete(study, {0: 2.0, 1: 1.5, 2: 1.0, 3: 0.8})
    assert not should_prune(study, {2: 1.05})
    assert not should_prune(study, {3: 0.85})
    assert not should_prune(study, {2: 0.5})  # better than the best


def test_does_not_prune_before_warmup() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=2))
    add_complete(study, {0: 2.0, 1: 1.5, 2: 1.0})
    assert not should_prune(study, {0: 20.0})
    assert not should_prune(study, {0: 2.0, 1: 15.0})
    assert should_prune(study, {0: 2.0, 1: 1.5, 2: 10.0})


def test_warmup_zero_prunes_at_the_first_step() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=0))
    add_complete(study, {0: 2.0})
    assert should_prune(study, {0: 3.0})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_is_always_pruned(value: float) -> None:
    # Before warm-up and with no COMPLETE trial at all.
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=5))
    assert should_prune(study, {0: value})


def test_no_complete_trial_no_prune() -> None:
    study = make_study(MarginPruner(margin=0.0, n_warmup_steps=0))
    assert not should_prune(study, {0: 1.0, 1: 5.0})
    # RUNNING and PRUNED trials are no reference either.
    pruned = study.ask()
    pruned.report(0.1, 1)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert not should_prune(study, {1: 5.0})


def test_only_complete_trials_with_a_value_at_that_step_count() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=0))
    add_complete(study, {0: 1.0})  # no value at step 3
    assert not should_prune(study, {3: 100.0})
    add_complete(study, {3: 1.0})
    assert should_prune(study, {3: 100.0})


def test_non_finite_reference_values_are_ignored() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=0))
    add_complete(study, {0: math.nan}, final=1.0)
    assert not should_prune(study, {0: 100.0})


def test_pruned_trials_lower_values_are_not_the_reference() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=0))
    add_complete(study, {1: 1.0})
    pruned = study.ask()
    pruned.report(0.1, 1)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    assert not should_prune(study, {1: 1.05})


def test_n_min_trials() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=0, n_min_trials=2))
    add_complete(study, {0: 1.0})
    assert not should_prune(study, {0: 5.0})
    add_complete(study, {0: 1.2})
    assert should_prune(study, {0: 5.0})


def test_no_report_no_prune() -> None:
    study = make_study(MarginPruner(margin=0.0, n_warmup_steps=0))
    add_complete(study, {0: 1.0})
    assert not study.ask().should_prune()


def test_maximize_direction() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=0), direction="maximize")
    add_complete(study, {0: 0.9})
    add_complete(study, {0: 0.5})
    assert should_prune(study, {0: 0.7})  # < 0.9 - 0.09
    assert not should_prune(study, {0: 0.85})
    assert not should_prune(study, {0: 0.95})


def test_pruner_works_through_study_optimize() -> None:
    study = make_study(MarginPruner(margin=0.1, n_warmup_steps=1))
    curves = [[2.0, 1.0, 0.5], [2.0, 1.5, 1.2], [2.0, 1.05, 0.52]]

    def objective(trial: optuna.Trial) -> float:
        curve = curves[trial.number]
        for step, value in enumerate(curve):
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return curve[-1]

    study.optimize(objective, n_trials=3)
    states = [t.state for t in study.trials]
    TS = optuna.trial.TrialState
    assert states == [TS.COMPLETE, TS.PRUNED, TS.COMPLETE]
    assert study.trials[1].last_step == 1


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"margin": -0.1}, "margin"), ({"n_warmup_steps": -1}, "n_warmup_steps"),
     ({"n_min_trials": 0}, "n_min_trials")],
)
def test_invalid_arguments(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MarginPruner(**kwargs)
