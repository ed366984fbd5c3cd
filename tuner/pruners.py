"""A pruner for small grids: stop a trial that is clearly behind the best one at the same step.

Why not Optuna's MedianPruner: with its default ``n_startup_trials=5`` it never prunes a 4-point
grid, and with fewer startup trials the median of one to three runs is a coin toss. In a grid
stage every point is run anyway; what pruning should save is the rest of a run that is already
clearly lost. So the reference is the *best* finished trial at the same step, and a trial is
stopped only when its validation loss is worse than that by more than a relative ``margin``.
A non-finite value (a diverging run) is pruned at once, before any warm-up.
"""

from __future__ import annotations

import math

import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def is_clearly_worse(value: float, best: float, margin: float, minimize: bool = True) -> bool:
    """``value`` is behind ``best`` by more than ``margin`` of ``|best|``."""
    slack = margin * abs(best)
    return value > best + slack if minimize else value < best - slack


class MarginPruner(BasePruner):
    """Prune when the last reported value trails the best COMPLETE trial's value at that step.

    Args:
        margin: relative tolerance; 0.1 prunes a loss more than 10% above the best.
        n_warmup_steps: steps (report indices) before which only non-finite values prune.
        n_min_trials: COMPLETE trials with a value at the step needed before pruning.
    """

    def __init__(self, margin: float = 0.1, n_warmup_steps: int = 2, n_min_trials: int = 1
                 ) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, but got {margin=}.")
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be >= 0, but got {n_warmup_steps=}.")
        if n_min_trials < 1:
            raise ValueError(f"n_min_trials must be >= 1, but got {n_min_trials=}.")
        self._margin = margin
        self._n_warmup_steps = n_warmup_steps
        self._n_min_trials = n_min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return True
        if step < self._n_warmup_steps:
            return False
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if step in t.intermediate_values and math.isfinite(t.intermediate_values[step])
        ]
        if len(others) < self._n_min_trials:
            return False
        minimize = study.direction == StudyDirection.MINIMIZE
        best = min(others) if minimize else max(others)
        return is_clearly_worse(value, best, self._margin, minimize)
