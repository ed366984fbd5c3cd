"""tuner.report_data: the numbers behind the report, read from a run's studies (no plotly)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tuner.report_data import (
    NoSuchRun,
    decision_text,
    downsample,
    get_grid_stage_info,
    get_range_test_info,
    load_run,
    loss_window,
    open_existing_storage,
    resolve_run,
    schedule_points,
    trials_table,
    write_csv,
)
from tuner.storage import STAGES, StorageError, open_storage, open_study

from .conftest import TinyRun, tiny_config


def test_load_run_reads_every_stage_of_the_tiny_run(tiny_run: TinyRun) -> None:
    cfg = tiny_config()
    info = load_run(tiny_run.url)
    d = tiny_run.result.decisions
    assert info.run == "tiny"
    assert [s.stage for s in info.stages] == list(STAGES)
    assert all(s.status == "done" and s.seconds is not None and s.chosen for s in info.stages)
    assert info.config["momentum"]["values"] == list(cfg.momentum.values)
    assert info.environment_recorded and info.environment["device"] == "cpu"
    assert info.environment["torch"] and info.tool["version"]

    rt = info.range_test
    assert rt is not None and rt.log_lr
    assert len(rt.lrs) == len(rt.train_losses) == len(rt.train_smoothed) > 100
    assert len(rt.val_lrs) == len(rt.val_losses) == len(rt.val_accuracies) > 2
    assert (rt.min_lr, rt.max_lr) == (d["lr_range"]["min_lr"], d["lr_range"]["max_lr"])
    assert rt.max_lr in rt.val_lrs  # the max LR is read off the validation curve
    assert set(rt.suggestions) <= {"valley", "minimum", "steepest"}
    assert rt.val_losses_each == []  # a single test: no per-test curves

    for grid, param, values in [(info.momentum, "max_momentum", cfg.momentum.values),
                                (info.weight_decay, "weight_decay", cfg.weight_decay.values)]:
        assert grid is not None
        assert sorted(c.value for c in grid.trials) == sorted(values)
        assert [c.value for c in grid.trials if c.chosen] == [d[grid.stage][param]]
        assert grid.planned_reports == 3
        for c in grid.trials:
            assert c.reports == list(range(1, len(c.val_losses) + 1))
            assert len(c.val_losses) == len(c.val_accuracies) == len(c.seconds)

    bs = info.batch_size
    assert bs is not None and bs.chosen == d["batch_size"]["batch_size"]
    # The reference size keeps stage 1's range test; every other size ran its own.
    assert sorted(bs.range_tests) == sorted(set(cfg.batch_size.values) - {cfg.train.batch_size})
    for c in bs.trials:
        assert c.seconds == sorted(c.seconds) and c.attrs["planned_steps"] >= 1
        if c.value in bs.range_tests:
            assert bs.range_tests[c.value].max_lr == c.attrs["max_lr"]
        else:
            assert c.attrs["max_lr"] == d["lr_range"]["max_lr"]

    final = info.final
    assert final is not None and final.scored_on == "test"
    assert final.accuracy == d["final"]["test_accuracy"]
    assert [c.value for c in final.trials] == list(cfg.final.seeds)
    # one report per epoch; the epochs are the batch-size stage's equal-time count
    assert all(c.val_losses == [] and len(c.train_losses) == d["final"]["epochs"]
               for c in final.trials)
    hp = d["final"]
    assert final.schedule_lrs[0] == pytest.approx(hp["lr_min"])
    assert max(final.schedule_lrs) == pytest.approx(hp["lr_max"], rel=0.02)  # nearest step
    assert final.schedule_lrs[-1] == pytest.approx(hp["lr_min"] / cfg.schedule.final_div)
    assert min(final.schedule_momenta) == pytest.approx(hp["mom_min"], rel=0.02)
    # the last step starts the last epoch
    assert d["final"]["epochs"] - 1 <= final.schedule_epochs[-1] < d["final"]["epochs"]


def test_final_scored_on_validation_says_so() -> None:
    d = {"val_accuracy": 0.9, "val_accuracy_sd": 0.01, "val_loss": 0.3, "scored_on": "val",
         "seeds": [0, 1]}
    assert decision_text("final", d) == ("validation accuracy 90.00% ± 1.00 over 2 seed(s), "
                                         "validation loss 0.3000")


def test_schedule_points_keep_the_corners() -> None:
    hp = {"lr_min": 0.1, "lr_max": 1.0, "mom_max": 0.95, "mom_min": 0.85}
    steps, lrs, moms = schedule_points(1001, hp, cycle_fraction=0.9, final_div=100, max_points=7)
    assert steps[0] == 0 and steps[-1] == 1000 and 450 in steps and 900 in steps
    assert lrs[steps.index(450)] == pytest.approx(1.0)
    assert moms[steps.index(450)] == pytest.approx(0.85)
    assert lrs[-1] == pytest.approx(0.001)


def test_downsample_keeps_ends_and_bounds_the_count() -> None:
    xs = list(range(1000))
    x, y = downsample(xs, [2 * v for v in xs], 50)
    assert len(x) == 50 and x[0] == 0 and x[-1] == 999 and y == [2 * v for v in x]
    assert downsample([1, 2], [3, 4], 50) == ([1, 2], [3, 4])


MOMENTA = (0.99, 0.97, 0.9)


def _grid_trial(param: str, value: float, state: TrialState, losses: list[float],
                **attrs: object) -> optuna.trial.FrozenTrial:
    history = [{"step": 10 * (k + 1), "train_loss": v, "seconds": 0.1 * (k + 1), "val_loss": v,
                "val_accuracy": 0.5} for k, v in enumerate(losses)]
    return create_trial(
        state=state, value=losses[-1] if state == TrialState.COMPLETE else None,
        params={param: value}, distributions={param: CategoricalDistribution(MOMENTA)},
        intermediate_values={k + 1: v for k, v in enumerate(losses) if math.isfinite(v)},
        user_attrs={"history": history, **attrs})


def test_pruned_and_diverged_trials_end_where_they_were_cut_off(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    study = open_study(storage, "r", "momentum")
    study.add_trial(_grid_trial("max_momentum", 0.9, TrialState.COMPLETE, [2.0, 1.5, 1.0, 0.8]))
    study.add_trial(_grid_trial("max_momentum", 0.99, TrialState.PRUNED, [2.0, 1.9, 1.8],
                                pruned_at=3))
    study.add_trial(_grid_trial("max_momentum", 0.97, TrialState.PRUNED, [2.0, math.nan],
                                diverged="training loss became nan at step 20"))
    study.set_user_attr("decision", {"max_momentum": 0.9, "min_momentum": 0.85, "why": "x"})
    study.set_user_attr("config", {"momentum": {"epochs": 4}})

    info = get_grid_stage_info(study, "momentum")
    assert info is not None and info.chosen == 0.9 and info.planned_reports == 4
    by_value = {c.value: c for c in info.trials}
    assert [c.value for c in info.trials] == [0.9, 0.97, 0.99]
    assert by_value[0.9].chosen and by_value[0.9].label == "0.9 (chosen)"
    assert by_value[0.99].state == "pruned" and by_value[0.99].reports == [1, 2, 3]
    assert by_value[0.99].label == "0.99 (pruned at 3)"
    assert by_value[0.97].state == "diverged" and by_value[0.97].val_losses == [2.0, None]
    assert not by_value[0.97].chosen and by_value[0.97].objective is None

    table = trials_table(storage, "r")
    assert list(table["state"]) == ["complete", "pruned", "diverged"]
    assert list(table["param_value"]) == [0.9, 0.99, 0.97]


def test_range_test_that_diverged_marks_where_it_stopped(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    study = open_study(storage, "r", "lr_range")
    lrs = [10 ** (-3 + 4 * i / 99) for i in range(100)]
    losses = [2.3 - 1.5 * math.sin(math.pi * i / 80) if i < 80 else 2.3 + (i - 80) for i in
              range(100)] + [math.inf]
    curve = {"lrs": lrs + [10.0], "train_losses": losses, "val_steps": [0, 50, 99],
             "val_lrs": [lrs[0], lrs[50], lrs[99]], "val_losses": [2.3, 1.0, 5.0],
             "val_accuracies": [0.1, 0.6, 0.1], "stop_reason": "training loss became inf",
             "stop_step": 101}
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={
        "curve": curve, "suggestions": {"valley": 0.01, "minimum": math.nan, "steepest": 0.02},
        "val_losses_each": [[2.3, 1.0, 5.0], [2.3, 1.1, 4.0]]}))
    info = get_range_test_info(study)
    assert info is not None
    assert info.stop_lr == 10.0 and info.stop_loss is not None and math.isfinite(info.stop_loss)
    assert info.train_losses[-1] is None and info.train_smoothed[-1] is None
    assert info.suggestions == {"valley": 0.01, "steepest": 0.02}  # the NaN rule is left out
    assert info.min_lr is None and "no LR range" in info.why  # not decided (yet)
    assert len(info.val_losses_each) == 2
    lo, hi = loss_window(info)
    assert lo < 1.0 and 2.3 < hi < 2.3 * 1.7  # the explosion is cut off


def test_a_run_cut_short_reports_what_it_has(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    open_study(storage, "r", "lr_range")
    info = load_run(storage, "r")
    assert [s.status for s in info.stages] == ["started"] + ["not started"] * (len(STAGES) - 1)
    assert info.range_test is info.momentum is info.final is None
    assert not info.environment_recorded and info.environment["torch"]


def test_newest_run_by_default_and_unknown_runs_named(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    with pytest.raises(NoSuchRun, match="no tuner run"):
        resolve_run(storage)
    open_study(storage, "old", "lr_range")
    open_study(storage, "new", "lr_range")
    assert resolve_run(storage) == "new"
    assert resolve_run(storage, "old") == "old"
    with pytest.raises(NoSuchRun, match="no run 'nope'.*old, new"):
        resolve_run(storage, "nope")


def test_reading_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no such database file"):
        open_existing_storage(f"sqlite:///{tmp_path}/nope.db")
    assert not (tmp_path / "nope.db").exists()


def test_trials_table_and_csv_hold_every_trial(tiny_run: TinyRun, tmp_path: Path) -> None:
    table = trials_table(tiny_run.url)
    storage = open_storage(tiny_run.url)
    n = sum(len(optuna.load_study(study_name=f"tiny/{s}", storage=storage).trials)
            for s in STAGES)
    assert len(table) == n
    assert set(table["stage"]) == set(STAGES)
    assert {"state", "value", "param_value", "last_val_loss", "duration_s"} <= set(table.columns)
    final = table[table["stage"] == "final"]
    assert final["test_accuracy"].notna().all()

    paths = write_csv(tiny_run.url, None, tmp_path / "csv")
    assert [p.name for p in paths] == ["trials.csv", "history.csv", "range_test.csv"]
    assert len(pd.read_csv(paths[0])) == n
    history = pd.read_csv(paths[1])
    assert {"stage", "number", "report", "step", "seconds", "train_loss"} <= set(history.columns)
    assert set(history["stage"]) == set(STAGES) - {"lr_range"}


def test_refine_info_marks_the_staged_and_the_chosen_trial(tiny_run: TinyRun) -> None:
    from tuner.report_data import get_refine_info

    study = optuna.load_study(study_name=f"{tiny_run.run}/refine", storage=tiny_run.url)
    info = get_refine_info(study)
    assert info is not None and len([p for p in info.points if not p.repeat]) == 3
    assert info.staged == 0
    decision = tiny_run.result.decisions["refine"]
    assert info.why == decision["why"]
    staged = info.points[0]
    assert staged.max_lr == decision["staged"]["max_lr"]
    assert staged.weight_decay == decision["staged"]["weight_decay"]
    search = [p for p in info.points if not p.repeat]
    chosen = next(p for p in search if p.number == info.chosen)
    assert (chosen.max_lr, chosen.momentum, chosen.weight_decay) == (
        tiny_run.result.max_lr, tiny_run.result.momentum, tiny_run.result.weight_decay)
    best = min((p for p in search if p.value is not None), key=lambda p: p.value)
    reruns = [p for p in info.points if p.repeat]
    if best.number == info.staged:  # kept without a contest
        assert info.chosen == info.staged and reruns == []
    else:  # the best was rerun from the next seed, and so were the staged values
        assert {(p.max_lr, p.weight_decay) for p in reruns} == {
            (best.max_lr, best.weight_decay), (staged.max_lr, staged.weight_decay)}
        assert info.chosen in (best.number, info.staged)


def test_refine_info_is_none_when_the_refinement_was_off(tmp_path: Path) -> None:
    from tuner.report_data import get_refine_info

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/t.db"),
                                study_name="x/refine")
    assert get_refine_info(study) is None
