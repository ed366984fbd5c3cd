"""tuner.report_data and tuner.tables: the numbers behind the report, read from a run's studies
(no plotly, no torch)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tuner.config import MomentumConfig, TrainConfig
from tuner.dashboard import make_dashboard_server
from tuner.lr_range import RISE_RATIO, rise_lr
from tuner.report import write_report
from tuner.report_data import (
    CheckedLR,
    Training,
    downsample,
    get_range_test_info,
    get_refine_info,
    load_run,
    loss_window,
    reading_rise,
    schedule_points,
)
from tuner.stages import NAMES, STAGES, stage
from tuner.stages.base import HParams
from tuner.stages.final import FinalDecision
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.momentum import MomentumDecision
from tuner.status import status_table
from tuner.storage import TOOL_ATTR, NoSuchRun, Run, RunConfigMismatch, StorageError, open_storage
from tuner.tables import history_table, summary_frame, trials_table, write_csv

from .conftest import TinyRun, tiny_config
from .hand_runs import (
    CHECK_GRID,
    CHECKED,
    F1,
    READ,
    REGRESSION,
    decide,
    finished_run,
    grid_trial,
    range_curve,
    range_test_decided,
    stage_study,
    start_run,
)


def test_load_run_reads_every_stage_of_the_tiny_run(tiny_run: TinyRun) -> None:
    cfg = tiny_config()
    info = load_run(tiny_run.url)
    d = tiny_run.result.decisions
    assert info.run == "tiny"
    assert [s.stage for s in info.stages] == list(NAMES)
    assert [s.title for s in info.stages] == [s.title for s in STAGES]
    assert all(s.status == "done" and s.seconds is not None and s.chosen for s in info.stages)
    assert [s.chosen for s in info.stages] == [d[s.name].summary() for s in STAGES]
    assert info.decisions == dict(d)
    assert info.config["momentum"]["values"] == list(cfg.momentum.values)
    assert info.environment["device"] == "cpu" and info.environment["torch"]
    assert info.tool["version"]
    assert list(info.details) == list(NAMES)  # the tiny run refines: every stage has numbers

    rt = info.range_test
    assert rt is not None and rt.log_lr and rt.batch_size == cfg.train.batch_size
    assert len(rt.lrs) == len(rt.train_losses) == len(rt.train_smoothed) > 100
    assert len(rt.val_lrs) == len(rt.val_losses) == len(rt.val_metrics) > 2
    assert all(m is not None and 0 <= m <= 1 for m in rt.val_metrics)  # accuracy
    assert rt.metric_name == "accuracy" and rt.optimizer_text == "SGD, momentum 0.9"
    assert (rt.min_lr, rt.max_lr, rt.why) == (d["lr_range"].min_lr, d["lr_range"].max_lr,
                                              d["lr_range"].why)
    # the max LR is read off the validation curve: its minimum, or its half-way climb / 2.83
    assert rt.max_lr in rt.val_lrs or rt.rise_lr == pytest.approx(rt.max_lr * RISE_RATIO)
    assert set(rt.suggestions) <= {"valley", "minimum", "steepest"}
    assert rt.val_losses_each == []  # a single test: no per-test curves
    checked = d["lr_check"]
    assert rt.checked == CheckedLR(checked.min_lr, checked.max_lr, checked.factor)
    assert checked.reading == rt.max_lr
    assert any(checked.factor == pytest.approx(f) for f in cfg.lr_check.factors)

    check = info.grid("lr_check")  # a grid of multiples of the reading
    assert check is not None and check.title == "Max LR check" and check.label == "max LR"
    assert check.param == "max_lr" and check.planned_reports == cfg.lr_check.epochs
    assert sorted(c.value for c in check.trials) == pytest.approx(
        [rt.max_lr * f for f in cfg.lr_check.factors])
    assert [c.value for c in check.trials if c.chosen] == [checked.max_lr]
    assert check.why == checked.why and check.budget_s is None and check.range_tests == {}

    for name, values in [("momentum", cfg.momentum.values),
                         ("weight_decay", cfg.weight_decay.values)]:
        grid = info.grid(name)
        assert grid is not None and grid.title == stage(name).title
        assert sorted(c.value for c in grid.trials) == sorted(values)
        assert [c.value for c in grid.trials if c.chosen] == [getattr(d[name], grid.param)]
        assert grid.planned_reports == 3 and grid.budget_s is None
    for name in ("lr_check", "momentum", "weight_decay"):
        for c in info.grid(name).trials:
            assert c.reports == list(range(1, len(c.val_losses) + 1))
            assert len(c.val_losses) == len(c.val_metrics) == len(c.seconds)

    bs = info.grid("batch_size")
    assert bs is not None and bs.chosen == d["batch_size"].batch_size
    assert bs.budget_s == d["batch_size"].budget_s == cfg.batch_size.budget_s
    # The reference size keeps the checked range; every other size ran its own range test.
    assert sorted(bs.range_tests) == sorted(set(cfg.batch_size.values) - {cfg.train.batch_size})
    for c in bs.trials:
        assert c.seconds == sorted(c.seconds) and c.attrs["planned_steps"] >= 1
        if c.value in bs.range_tests:
            assert bs.range_tests[c.value].max_lr == c.attrs["max_lr"]
            assert bs.range_tests[c.value].batch_size == c.value
        else:
            assert c.attrs["max_lr"] == d["lr_check"].max_lr


def test_final_info_of_the_tiny_run(tiny_run: TinyRun) -> None:
    cfg = tiny_config()
    final = load_run(tiny_run.url).final
    d = tiny_run.result.decisions["final"]
    assert isinstance(d, FinalDecision)
    assert final is not None and final.scored_on == "test"
    assert (final.metric, final.metric_sd, final.loss, final.hparams, final.epochs) == (
        d.metric, d.metric_sd, d.loss, d.values, d.epochs)
    assert final.metric_name == d.metric_name == "accuracy" and final.optimizer_text == "SGD"
    assert [c.value for c in final.trials] == list(cfg.final.seeds)
    # one report per epoch; the epochs are the batch-size stage's equal-time count
    assert all(c.val_losses == [] and len(c.train_losses) == d.epochs for c in final.trials)
    hp = d.values
    assert final.schedule_lrs[0] == pytest.approx(hp.min_lr)
    assert max(final.schedule_lrs) == pytest.approx(hp.max_lr, rel=0.02)  # nearest step
    assert final.schedule_lrs[-1] == pytest.approx(hp.min_lr / cfg.schedule.final_div)
    assert min(final.schedule_momenta) == pytest.approx(hp.min_momentum, rel=0.02)
    # the last step starts the last epoch
    assert d.epochs - 1 <= final.schedule_epochs[-1] < d.epochs


def test_each_stage_names_its_objective(tiny_run: TinyRun) -> None:
    studies = Run.find(tiny_run.url).studies()
    for st in STAGES:
        assert studies[st.name].metric_names == [st.metric], st.name


def test_final_scored_on_validation_says_so(tmp_path: Path) -> None:
    run = start_run(tmp_path)
    study = stage_study(run, "final")
    study.add_trial(create_trial(
        state=TrialState.COMPLETE, value=0.9, params={"seed": 0},
        distributions={"seed": CategoricalDistribution((0, 1))},
        user_attrs={"scored_on": "val", "val_loss": 0.3, "val_metric": 0.9, "history": [
            {"step": 10 * k, "train_loss": 1 / k, "seconds": 0.1 * k} for k in range(1, 5)]}))
    hp = HParams(0.01, 0.1, 0.95, 0.85, 1e-4, 64)
    decide(study, FinalDecision(values=hp, epochs=4, scored_on="val", loss=0.3, loss_sd=0.01,
                                losses=[0.29, 0.31], seeds=[0, 1], metric_name="accuracy",
                                metric=0.9, metric_sd=0.01, metrics=[0.89, 0.91],
                                why="scored on the validation split"))
    info = load_run(run)
    assert info.stages[-1].chosen == ("validation accuracy 90.00% ± 1.00 over 2 seed(s), "
                                      "validation loss 0.3000")
    final = info.final
    assert final is not None and final.scored_on == "val" and final.hparams == hp
    assert final.schedule_epochs[0] == 0 and final.schedule_epochs[-1] == pytest.approx(3.9)
    assert final.schedule_lrs[0] == pytest.approx(hp.min_lr)


def test_schedule_points_keep_the_corners() -> None:
    hp = HParams(min_lr=0.1, max_lr=1.0, max_momentum=0.95, min_momentum=0.85,
                 weight_decay=0.0, batch_size=32)
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


def test_pruned_and_diverged_trials_end_where_they_were_cut_off(tmp_path: Path) -> None:
    run = start_run(tmp_path, config=tiny_config(
        momentum=MomentumConfig(values=MOMENTA, epochs=4)))
    study = stage_study(run, "momentum")
    study.add_trial(grid_trial("max_momentum", 0.9, TrialState.COMPLETE, [2.0, 1.5, 1.0, 0.8],
                               MOMENTA))
    study.add_trial(grid_trial("max_momentum", 0.99, TrialState.PRUNED, [2.0, 1.9, 1.8],
                               MOMENTA, pruned_at=3))
    study.add_trial(grid_trial("max_momentum", 0.97, TrialState.PRUNED, [2.0, math.nan],
                               MOMENTA, diverged="training loss became nan at step 20"))
    decide(study, MomentumDecision(max_momentum=0.9, min_momentum=0.85, why="x"))

    info = load_run(run).grid("momentum")
    assert info is not None and info.chosen == 0.9 and info.planned_reports == 4
    assert info.label == "max momentum" and info.why == "x"
    by_value = {c.value: c for c in info.trials}
    assert [c.value for c in info.trials] == [0.9, 0.97, 0.99]
    assert by_value[0.9].chosen and by_value[0.9].label == "0.9 (chosen)"
    assert by_value[0.99].state == "pruned" and by_value[0.99].reports == [1, 2, 3]
    assert by_value[0.99].label == "0.99 (pruned at 3)"
    assert by_value[0.97].state == "diverged" and by_value[0.97].val_losses == [2.0, None]
    assert not by_value[0.97].chosen and by_value[0.97].objective is None

    table = trials_table(run)
    table = table[table["stage"] == "momentum"]
    assert list(table["state"]) == ["complete", "pruned", "diverged"]
    assert list(table["param"]) == ["max_momentum"] * 3
    assert list(table["param_value"]) == [0.9, 0.99, 0.97]


def _range_trial() -> optuna.trial.FrozenTrial:
    lrs = [10 ** (-3 + 4 * i / 99) for i in range(100)]
    losses = [2.3 - 1.5 * math.sin(math.pi * i / 80) if i < 80 else 2.3 + (i - 80) for i in
              range(100)] + [math.inf]
    curve = {"lrs": lrs + [10.0], "train_losses": losses, "val_steps": [0, 50, 99],
             "val_lrs": [lrs[0], lrs[50], lrs[99]], "val_losses": [2.3, 1.0, 5.0],
             "val_metrics": [0.1, 0.6, 0.1], "stop_reason": "training loss became inf",
             "stop_step": 101}
    return create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={
        "curve": curve, "suggestions": {"valley": 0.01, "minimum": math.nan, "steepest": 0.02},
        "val_losses_each": [[2.3, 1.0, 5.0], [2.3, 1.1, 4.0]]})


def test_range_test_that_diverged_marks_where_it_stopped(tmp_path: Path) -> None:
    study = stage_study(start_run(tmp_path), "lr_range")
    study.add_trial(_range_trial())
    info = get_range_test_info(study)
    assert info is not None
    assert info.stop_lr == 10.0 and info.stop_loss is not None and math.isfinite(info.stop_loss)
    assert info.train_losses[-1] is None and info.train_smoothed[-1] is None
    assert info.suggestions == {"valley": 0.01, "steepest": 0.02}  # the NaN rule is left out
    assert info.min_lr is None and "no LR range" in info.why  # not decided (yet)
    assert len(info.val_losses_each) == 2
    lo, hi = loss_window(info)
    assert lo < 1.0 and 2.3 < hi < 2.3 * 1.7  # the explosion is cut off

    decide(study, RangeDecision(min_lr=0.1, max_lr=1.0, batch_size=32, why="read off"))
    info = get_range_test_info(study)
    assert (info.min_lr, info.max_lr, info.batch_size, info.why) == (0.1, 1.0, 32, "read off")


def test_the_half_way_climb_is_given_only_where_the_max_lr_was_read_there() -> None:
    curve = range_curve(0.5)  # first 2.0, lowest 1.5 at 0.1, then 1.93 at the next point 0.316
    lrs, losses = curve["val_lrs"], curve["val_losses"]
    rise = rise_lr(lrs, losses)
    assert rise is not None and 0.1 < rise < 0.32
    assert reading_rise(lrs, losses, rise / RISE_RATIO) == rise
    assert reading_rise(lrs, losses, 0.1) is None  # read at the minimum
    assert reading_rise(lrs, losses, None) is None  # no range read
    # a missing (None) last measurement ends the curve after the climb: still found
    assert reading_rise(lrs, [*losses[:-1], None], rise / RISE_RATIO) == rise


def test_the_lr_check_is_a_grid_of_max_lrs_marked_on_the_range_test(tmp_path: Path) -> None:
    run = finished_run(tmp_path, TrainConfig(batch_size=64, threads=1), 0.5)
    info = load_run(run)
    check = info.grid("lr_check")
    assert check is not None and (check.param, check.label) == ("max_lr", "max LR")
    assert [c.label for c in check.trials] == ["0.1", "0.141 (chosen)", "0.2 (diverged)"]
    assert check.chosen == CHECKED.max_lr and check.why == CHECKED.why
    assert summary_frame(info).loc["lr_check", "decision"] == CHECKED.summary()
    rt = info.range_test  # the reading stays the range test's; the check's choice beside it
    assert (rt.min_lr, rt.max_lr) == (READ.min_lr, READ.max_lr)
    assert rt.checked == CheckedLR(0.0141, 0.141, 1.41)
    assert rt.checked.label == "checked max LR 0.141 (x1.41)"
    study = run.studies()["lr_range"]  # read alone, a range test marks no check
    assert get_range_test_info(study).checked is None
    assert get_range_test_info(study, checked=CHECKED).checked == rt.checked

    table = trials_table(run)
    rows = table[table["stage"] == "lr_check"]
    assert list(rows["param"]) == ["max_lr"] * 3
    assert list(rows["param_value"]) == list(CHECK_GRID)
    assert list(rows["state"]) == ["complete", "complete", "diverged"]
    history = history_table(run)
    assert set(history.loc[history["stage"] == "lr_check", "param_value"]) == set(CHECK_GRID)


def test_a_check_of_one_factor_shows_its_decision_without_a_grid(tmp_path: Path) -> None:
    run = range_test_decided(tmp_path)
    decide(stage_study(run, "lr_check"), LRDecision(
        min_lr=0.01, max_lr=0.1, factor=1.0, reading=0.1, batch_size=64,
        why="x1 the range test's 0.1: the only factor, no runs"))
    info = load_run(run)
    assert list(info.details) == ["lr_range"] and info.grid("lr_check") is None
    check = next(s for s in info.stages if s.stage == "lr_check")
    assert (check.status, check.chosen) == ("done", "LR 0.01 – 0.1 (x1 the range test's 0.1)")
    assert info.range_test.checked == CheckedLR(0.01, 0.1, 1.0)


def test_a_run_cut_short_reports_what_it_has(tmp_path: Path) -> None:
    run = start_run(tmp_path)  # the first stage's study exists, nothing ran
    info = load_run(run)
    assert [s.status for s in info.stages] == ["started"] + ["not started"] * (len(STAGES) - 1)
    assert info.details == {} and info.range_test is info.final is info.refine is None
    assert info.grid("momentum") is None
    assert info.environment == {}  # none recorded: not made up (a reader imports no torch)
    assert info.total_seconds == 0


def test_newest_run_by_default_and_unknown_runs_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    open_storage(url)
    with pytest.raises(NoSuchRun, match="holds no tuner run"):
        load_run(url)
    start_run(tmp_path, "old")
    start_run(tmp_path, "new")
    assert load_run(url).run == "new"
    assert load_run(url, "old").run == "old"
    with pytest.raises(NoSuchRun, match="no run 'nope'.*old, new"):
        load_run(url, "nope")


def test_a_run_of_another_storage_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    run = start_run(tmp_path)
    stage_study(run, "lr_range").set_user_attr(TOOL_ATTR, {"version": "0.0.1", "schema": 2})
    with pytest.raises(RunConfigMismatch, match="tuner 0.0.1") as info:
        load_run(f"sqlite:///{tmp_path}/t.db")
    assert "\n" not in str(info.value)


def test_trials_table_and_csv_hold_every_trial(tiny_run: TinyRun, tmp_path: Path) -> None:
    table = trials_table(tiny_run.url)
    studies = Run.find(tiny_run.url).studies()
    n = sum(len(s.trials) for s in studies.values())
    assert len(table) == n
    assert set(table["stage"]) == set(NAMES)
    assert {"state", "value", "param_value", "last_val_loss", "duration_s"} <= set(table.columns)
    final = table[table["stage"] == "final"]
    assert final["test_metric"].notna().all() and set(final["param"]) == {"seed"}
    assert final["test_loss"].notna().all() and (final["value"] == final["test_loss"]).all()
    grids = table[table["stage"].isin(["momentum", "weight_decay", "batch_size"])]
    assert grids["last_val_metric"].between(0, 1).all()  # accuracy, as a fraction
    assert set(table.loc[table["stage"] == "batch_size", "param"]) == {"batch_size"}

    paths = write_csv(tiny_run.url, None, tmp_path / "csv")
    assert [p.name for p in paths] == ["trials.csv", "history.csv", "range_test.csv"]
    assert len(pd.read_csv(paths[0])) == n
    history = pd.read_csv(paths[1])
    assert {"stage", "number", "report", "step", "seconds", "train_loss"} <= set(history.columns)
    assert set(history["stage"]) == set(NAMES) - {"lr_range"}
    assert set(pd.read_csv(paths[2])["kind"]) == {"train", "val"}


def _csv_texts(run: Run, directory: Path) -> str:
    """Every table a run's reader writes, as CSV text."""
    tables = [summary_frame(load_run(run)), trials_table(run), history_table(run)]
    paths = write_csv(run, None, directory)
    return "".join(t.to_csv() for t in tables) + "".join(p.read_text() for p in paths)


def test_a_regression_run_reads_without_a_metric(tmp_path: Path) -> None:
    run = finished_run(tmp_path, REGRESSION, None)
    info = load_run(run)
    assert info.training == Training(optimizer="adamw", beta2=0.99, loss="mse", metric=None)
    rt = info.range_test
    assert rt.metric_name is None and rt.val_metrics == [None] * len(rt.val_losses)
    assert rt.optimizer_text == "AdamW, beta1 0.9, beta2 0.99"
    momentum = info.grid("momentum")
    assert momentum.label == "max beta1" and momentum.metric_name is None
    assert all(m is None for c in momentum.trials for m in c.val_metrics)
    final = info.final
    assert (final.metric_name, final.metric, final.metric_sd) == (None, None, None)
    assert (final.loss, final.loss_sd, final.optimizer_text) == (0.31, 0.014, "AdamW, beta2 0.99")

    assert "accuracy" not in _csv_texts(run, tmp_path / "csv").lower()
    trials = trials_table(run)
    assert trials["last_val_metric"].isna().all() and "test_metric" not in trials.columns
    assert history_table(run)["val_metric"].isna().all()
    assert pd.read_csv(tmp_path / "csv" / "range_test.csv")["val_metric"].isna().all()


def test_a_custom_metric_is_read_by_its_name(tmp_path: Path) -> None:
    run = finished_run(tmp_path, F1, 0.8)
    info = load_run(run)
    assert info.training.metric == info.range_test.metric_name == info.final.metric_name == "f1"
    assert info.final.metric == pytest.approx(0.805) and info.final.optimizer_text == (
        "Adam, beta2 0.99")
    assert info.grid("momentum").label == "max beta1"
    trials = trials_table(run)
    grids = trials[trials["stage"].isin(["momentum", "weight_decay", "batch_size"])]
    assert (grids["last_val_metric"] == 0.8).all()
    assert list(trials.loc[trials["stage"] == "final", "test_metric"]) == [0.8, 0.81]
    assert "accuracy" not in _csv_texts(run, tmp_path / "csv").lower()


def test_refine_info_marks_the_staged_and_the_chosen_trial(tiny_run: TinyRun) -> None:
    study = Run.find(tiny_run.url).studies()["refine"]
    info = get_refine_info(study)
    assert info is not None and len([p for p in info.points if not p.repeat]) == 3
    assert info.staged == 0
    decision = tiny_run.result.decisions["refine"]
    assert info.why == decision.why
    staged = info.points[0]
    assert staged.max_lr == decision.staged.max_lr
    assert staged.weight_decay == decision.staged.weight_decay
    search = [p for p in info.points if not p.repeat]
    chosen = next(p for p in search if p.number == info.chosen)
    v = tiny_run.result.values
    assert (chosen.max_lr, chosen.max_momentum, chosen.weight_decay) == (
        v.max_lr, v.max_momentum, v.weight_decay)
    best = min((p for p in search if p.value is not None), key=lambda p: p.value)
    reruns = [p for p in info.points if p.repeat]
    if best.number == info.staged:  # kept without a contest
        assert info.chosen == info.staged and reruns == []
    else:  # the best was rerun from the next seed, and so were the staged values
        assert {(p.max_lr, p.weight_decay) for p in reruns} == {
            (best.max_lr, best.weight_decay), (staged.max_lr, staged.weight_decay)}
        assert info.chosen in (best.number, info.staged)


def test_refine_info_is_none_when_the_refinement_was_off(tmp_path: Path) -> None:
    assert get_refine_info(stage_study(start_run(tmp_path), "refine")) is None


READ_ONLY = {
    "status": lambda url: status_table(url),
    "named status": lambda url: status_table(url, "r"),
    "load_run": lambda url: load_run(url),
    "trials_table": lambda url: trials_table(url),
    "write_report": lambda url: write_report(url),
    "dashboard": lambda url: make_dashboard_server(url, port=0),
}


@pytest.mark.parametrize("reader", sorted(READ_ONLY))
def test_readers_refuse_a_missing_sqlite_file_and_create_nothing(reader: str, tmp_path: Path
                                                                 ) -> None:
    path = tmp_path / "missing" / "x.db"
    with pytest.raises(StorageError, match="no such database file") as info:
        READ_ONLY[reader](f"sqlite:///{path}")
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no folder, no file, no artifacts, no report


READERS = ("tuner.status", "tuner.report", "tuner.report_data", "tuner.tables",
           "tuner.dashboard", "tuner.report_svg")
TRAINING = ("torch", "tuner.train", "tuner.context", "tuner.pipeline")


def test_readers_import_no_training_path() -> None:
    code = (f"import sys\nimport {', '.join(READERS)}\n"
            f"print([m for m in {TRAINING!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]", out.stdout
