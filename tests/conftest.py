"""Shared fixtures: MNIST-1D generated once per session, and a tiny configuration that runs
the whole pipeline in seconds on a CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import pytest

import tuner
from tuner.config import (
    BatchSizeConfig,
    DataConfig,
    FinalConfig,
    LRCheckConfig,
    LRRangeConfig,
    MomentumConfig,
    RefineConfig,
    StudyConfig,
    TrainConfig,
    WeightDecayConfig,
)
from tuner.data import Splits, load_splits


def tiny_config(**changes: object) -> StudyConfig:
    """Every stage, each as small as still meaningful (seconds in all)."""
    cfg = StudyConfig(
        name="tiny",
        train=TrainConfig(batch_size=64, threads=1),
        lr_range=LRRangeConfig(num_iters=300, eval_every=10, repeats=1, start_lr=1e-2),
        lr_check=LRCheckConfig(factors=(1.0, 2.0), prefer=2.0, epochs=3,
                               repeats=1),
        momentum=MomentumConfig(values=(0.95, 0.9), epochs=3, repeats=1),
        weight_decay=WeightDecayConfig(values=(1e-4, 0.0), epochs=3, repeats=1),
        batch_size=BatchSizeConfig(values=(64, 128), budget_s=0.4, range_test_iters=300,
                                   reports=3),
        final=FinalConfig(epochs=3, seeds=(0,)),
    )
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="session")
def mnist1d_splits() -> Splits:
    return load_splits(DataConfig())


class TinyRun(NamedTuple):
    url: str
    path: Path  # the SQLite file
    run: str
    result: tuner.Result


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, mnist1d_splits: Splits) -> TinyRun:
    """One finished tiny run in a SQLite file, shared by the report, dashboard and notebook
    tests. Read it only: copy the file (``shutil.copy``) before changing anything."""
    path = tmp_path_factory.mktemp("tiny_run") / "tuner.db"
    url = f"sqlite:///{path}"
    # With a short refinement (three trials), so that every stage has something to show, and
    # momentum's weight decay held outside the grid, so that stage 3b runs whichever value the
    # grid chooses (it re-checks nothing at the held one; which of 1e-4 and 0 the tiny grid
    # chooses moves with the installed packages' numerics).
    cfg = tiny_config(refine=RefineConfig(total_s=3600.0, max_trials=3),
                      momentum=MomentumConfig(values=(0.95, 0.9), epochs=3, repeats=1,
                                              weight_decay=1e-3))
    result = tuner.run(cfg, storage=url, splits=mnist1d_splits)
    return TinyRun(url, path, result.run, result)
