"""Runs built by hand in a SQLite file (no training): a run started as ``tuner run`` starts one,
stage studies holding trials made with ``optuna.trial.create_trial`` and decisions stored as the
pipeline stores them. For the readers' tests (report, tables, status, dashboard)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from tuner.config import StudyConfig, TrainConfig
from tuner.stages import Decision, stage
from tuner.stages.base import HParams
from tuner.stages.batch_size import BatchSizeDecision
from tuner.stages.final import FinalDecision
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.lr_recheck import RecheckDecision
from tuner.stages.momentum import MomentumDecision
from tuner.stages.refine import RefineDecision
from tuner.stages.weight_decay import WeightDecayDecision
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
               choices: Sequence[Any], metric: float | None = 0.5, **attrs: object
               ) -> FrozenTrial:
    """A grid trial with one history row (and validation measurement) per loss; ``metric``:
    each row's ``val_metric`` (None: the run measures none)."""
    history = [{"step": 10 * (k + 1), "train_loss": v, "seconds": 0.1 * (k + 1), "val_loss": v,
                "val_metric": metric} for k, v in enumerate(losses)]
    return create_trial(
        state=state, value=losses[-1] if state == TrialState.COMPLETE else None,
        params={param: value}, distributions={param: CategoricalDistribution(tuple(choices))},
        intermediate_values={k + 1: v for k, v in enumerate(losses) if math.isfinite(v)},
        user_attrs={"history": history, **attrs})


def range_curve(metric: float | None) -> dict[str, Any]:
    """A stored range-test curve (``RangeCurve``'s fields) over 1e-3 ... 10, its minimum at 0.1;
    ``metric``: each validation measurement's (None: none)."""
    lrs = [10 ** (-3 + 4 * i / 40) for i in range(41)]
    losses = [2.0 - 0.25 * (math.log10(lr) + 3) if lr <= 0.1 else 1.5 + 2 * (lr - 0.1)
              for lr in lrs]
    val = list(range(0, 41, 5))
    return {"lrs": lrs, "train_losses": losses, "val_steps": val,
            "val_lrs": [lrs[i] for i in val], "val_losses": [losses[i] for i in val],
            "val_metrics": [metric] * len(val), "stop_reason": "end_lr reached",
            "stop_step": None}


def _final_trial(seed: int, loss: float, metric: float | None) -> FrozenTrial:
    """A final training's trial as the final stage stores it (scored on the test split)."""
    attrs: dict[str, Any] = {"scored_on": "test", "test_loss": loss, "train_seconds": 1.0,
                             "history": [{"step": 10 * k, "train_loss": 1 / k, "seconds": 0.1 * k}
                                         for k in range(1, 4)]}
    if metric is not None:
        attrs["test_metric"] = metric
    return create_trial(state=TrialState.COMPLETE, value=loss, params={"seed": seed},
                        distributions={"seed": CategoricalDistribution((0, 1))},
                        user_attrs=attrs)


# The range test's reading, and the max LR the LR check chose from it (x1.41; x2 diverged).
READ = RangeDecision(min_lr=0.01, max_lr=0.1, batch_size=64, why="read off the curve",
                     stop_reason="end_lr reached", suggestions={"valley": 0.02})
CHECKED = LRDecision(min_lr=0.0141, max_lr=0.141, factor=1.41, reading=0.1, batch_size=64,
                     why="x1.41 the range test's 0.1: lowest final val loss")
CHECK_GRID = (0.1, 0.141, 0.2)


def range_test_decided(tmp_path: Path) -> Run:
    """A run whose range test has decided (``READ``, with its curve), nothing after it."""
    run = start_run(tmp_path)
    study = stage_study(run, "lr_range")
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.5,
                                 user_attrs={"curve": range_curve(0.5)}))
    decide(study, READ)
    return run


def check_lr(run: Run, metric: float | None = 0.5) -> optuna.Study:
    """The LR check, decided: x1 and x1.41 the reading complete, x2 diverged."""
    study = stage_study(run, "lr_check")
    for v, state, losses in ((0.1, TrialState.COMPLETE, [1.0, 0.5]),
                             (0.141, TrialState.COMPLETE, [1.0, 0.45]),
                             (0.2, TrialState.PRUNED, [1.0, math.nan])):
        attrs = {"diverged": "training loss became nan"} if state == TrialState.PRUNED else {}
        study.add_trial(grid_trial("max_lr", v, state, losses, CHECK_GRID, metric, **attrs))
    decide(study, CHECKED)
    return study


def _grid_stages(run: Run, metric: float | None, optimizer: str) -> None:
    """Momentum, weight decay and batch size, decided at the checked LR (one size ran its own
    range test)."""
    m = stage_study(run, "momentum")
    for v, losses in ((0.95, [1.0, 0.5]), (0.9, [1.0, 0.7])):
        m.add_trial(grid_trial("max_momentum", v, TrialState.COMPLETE, losses, (0.95, 0.9),
                               metric))
    decide(m, MomentumDecision(max_momentum=0.95, min_momentum=0.85, optimizer=optimizer,
                               why="lowest val loss"))
    w = stage_study(run, "weight_decay")
    for v, losses in ((1e-4, [1.0, 0.4]), (0.0, [1.0, 0.6])):
        w.add_trial(grid_trial("weight_decay", v, TrialState.COMPLETE, losses, (1e-4, 0.0),
                               metric))
    decide(w, WeightDecayDecision(weight_decay=1e-4, why="lowest val loss"))
    decide(stage_study(run, "lr_recheck"), RecheckDecision(
        min_lr=CHECKED.min_lr, max_lr=CHECKED.max_lr, factor=CHECKED.factor,
        reading=CHECKED.reading, weight_decay=1e-4, ran=False,
        why="no runs: weight decay 0.0001 is the one the check ran at"))
    b = stage_study(run, "batch_size")
    b.add_trial(grid_trial("batch_size", 64, TrialState.COMPLETE, [1.0, 0.4], (64, 128), metric,
                           max_lr=CHECKED.max_lr, min_lr=CHECKED.min_lr, planned_steps=20))
    b.add_trial(grid_trial("batch_size", 128, TrialState.COMPLETE, [1.0, 0.5], (64, 128),
                           metric, max_lr=0.141, min_lr=0.0141, range_test_max_lr=0.1,
                           planned_steps=10, range_curve=range_curve(metric)))
    decide(b, BatchSizeDecision(batch_size=64, min_lr=CHECKED.min_lr, max_lr=CHECKED.max_lr,
                                final_epochs=3, budget_s=0.4,
                                why="lowest val loss at equal time"))


def _refine(run: Run, metric: float | None, hp: HParams) -> None:
    """A refinement of one trial besides the staged values, which it keeps."""
    study = stage_study(run, "refine")
    dists = {"max_lr": FloatDistribution(0.01, 1.0, log=True),
             "max_momentum": CategoricalDistribution((0.95, 0.9)),
             "weight_decay": CategoricalDistribution((1e-4, 0.0))}
    for max_lr, loss in ((hp.max_lr, 0.4), (0.2, 0.45)):
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, value=loss, distributions=dists,
            params={"max_lr": max_lr, "max_momentum": 0.95, "weight_decay": 1e-4},
            user_attrs={"history": [{"step": 10, "train_loss": loss, "seconds": 0.1,
                                     "val_loss": loss, "val_metric": metric}]}))
    decide(study, RefineDecision(values=hp, staged=hp, trials=2, why="kept the staged values"))


def finished_run(tmp_path: Path, train: TrainConfig, metric: float | None, name: str = "r"
                 ) -> Run:
    """A run built by hand, every stage decided, trained with ``train``; ``metric``: every
    measurement's metric value (None: the run measures none)."""
    run = start_run(tmp_path, name, tiny_config(train=train).resolved())  # as a run stores it
    lr = stage_study(run, "lr_range")
    lr.add_trial(create_trial(state=TrialState.COMPLETE, value=1.5, user_attrs={
        "curve": range_curve(metric), "suggestions": {"valley": 0.02}}))
    decide(lr, READ)
    check_lr(run, metric)
    _grid_stages(run, metric, train.optimizer)
    hp = HParams(CHECKED.min_lr, CHECKED.max_lr, 0.95, 0.85, 1e-4, 64)
    _refine(run, metric, hp)
    f = stage_study(run, "final")
    for seed, loss in ((0, 0.3), (1, 0.32)):
        f.add_trial(_final_trial(seed, loss, None if metric is None else metric + seed / 100))
    name_ = train.metric_name()
    metrics = None if metric is None else [metric, metric + 0.01]
    decide(f, FinalDecision(
        values=hp, epochs=3, scored_on="test", loss=0.31,
        loss_sd=0.014, losses=[0.3, 0.32], seeds=[0, 1], optimizer=train.optimizer,
        metric_name=name_, metric=None if metrics is None else sum(metrics) / 2,
        metric_sd=None if metrics is None else 0.007, metrics=metrics,
        why="1cycle for 3 epochs on train + validation, 2 seed(s)"))
    return run


def text_of(*parts: object) -> str:
    """Everything a reader showed, in lower case (for "no accuracy anywhere" checks)."""
    return "\n".join(str(p) for p in parts).lower()


# What the readers are checked with beside the tiny run's SGD and accuracy: a regression
# (AdamW, MSE, no metric) and a custom metric (Adam, a callable named f1).
REGRESSION = TrainConfig(batch_size=64, threads=1, optimizer="adamw", loss="mse")
F1 = TrainConfig(batch_size=64, threads=1, optimizer="adam", metric="my_metrics:f1")
