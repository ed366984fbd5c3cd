"""Runs built by hand in a SQLite file (no training): a run started as ``tuner run`` starts one,
stage studies holding trials made with ``optuna.trial.create_trial`` and decisions stored as the
pipeline stores them. For the readers' tests (report, tables, status, dashboard)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from tuner.config import StudyConfig
from tuner.stages import Decision, stage
from tuner.storage import DECISION_ATTR, Run, open_study

from .conftest import tiny_config


def start_run(tmp_path: Path, name: str = "r", config: StudyConfig | None = None,
              db: str = "t.db") -> Run:
    """A run as ``tuner run`` starts it: its settings and tool stamp in the first stage's study."""
    return Run.start(f"sqlite:///{tmp_path / db}", config or tiny_config(), name)


def stage_study(run: Run, name: str) -> optuna.Study:
    return open_study(run.storage, run.name, stage(name))


def decide(study: optuna.Study, decision: Decision) -> None:
    """Store ``decision`` as the pipeline does."""
    study.set_user_attr(DECISION_ATTR, decision.to_json())


def grid_trial(param: str, value: Any, state: TrialState, losses: Sequence[float],
               choices: Sequence[Any], **attrs: object) -> FrozenTrial:
    """A grid trial with one history row (and validation measurement) per loss."""
    history = [{"step": 10 * (k + 1), "train_loss": v, "seconds": 0.1 * (k + 1), "val_loss": v,
                "val_accuracy": 0.5} for k, v in enumerate(losses)]
    return create_trial(
        state=state, value=losses[-1] if state == TrialState.COMPLETE else None,
        params={param: value}, distributions={param: CategoricalDistribution(tuple(choices))},
        intermediate_values={k + 1: v for k, v in enumerate(losses) if math.isfinite(v)},
        user_attrs={"history": history, **attrs})
