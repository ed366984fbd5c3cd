"""tuner.status: one row per stage of each run, its trials by state and its decision in words;
read-only (a missing SQLite file is refused: see test_report_data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from tuner.cli import main
from tuner.stages import NAMES
from tuner.stages.lr_range import RangeDecision
from tuner.status import status_table
from tuner.storage import TOOL_ATTR, NoSuchRun, open_storage

from .hand_runs import (
    CHECKED,
    F1,
    REGRESSION,
    check_lr,
    decide,
    finished_run,
    grid_trial,
    stage_study,
    start_run,
)

DECISION = RangeDecision(min_lr=0.01, max_lr=0.1, batch_size=64, why="read off the curve")


def _half_run(tmp_path: Path, name: str = "r") -> None:
    """The range test and the LR check decided, the momentum grid half done (one trial
    waiting)."""
    run = start_run(tmp_path, name)
    decide(stage_study(run, "lr_range"), DECISION)
    check_lr(run)
    momentum = stage_study(run, "momentum")
    momentum.add_trial(grid_trial("max_momentum", 0.95, TrialState.COMPLETE, [1.0, 0.5],
                                  (0.95, 0.9)))
    momentum.add_trial(grid_trial("max_momentum", 0.9, TrialState.PRUNED, [1.0, 2.0],
                                  (0.95, 0.9)))
    momentum.enqueue_trial({"max_momentum": 0.9})


def test_status_of_a_run_in_progress(tmp_path: Path) -> None:
    _half_run(tmp_path)
    table = status_table(f"sqlite:///{tmp_path}/t.db")
    assert list(table["stage"]) == list(NAMES) and set(table["run"]) == {"r"}
    rows = table.set_index("stage")
    assert list(rows.index[:3]) == ["lr_range", "lr_check", "momentum"]
    assert list(rows["state"]) == ["done"] * 2 + ["running"] + ["not started"] * (len(NAMES) - 3)
    assert rows.loc["lr_range", "decision"] == DECISION.summary() == "LR 0.01 – 0.1"
    assert rows.loc["lr_check", "decision"] == CHECKED.summary() == (
        "LR 0.0141 – 0.141 (x1.41 the range test's 0.1)")
    assert (rows.loc["lr_check", ["complete", "pruned", "waiting"]] == [2, 1, 0]).all()
    assert (rows.loc["momentum", ["complete", "pruned", "waiting"]] == [1, 1, 1]).all()
    assert rows.loc["momentum", "decision"] == "" and rows.loc["final", "complete"] == 0


def test_status_of_every_run_or_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    _half_run(tmp_path, "a")
    start_run(tmp_path, "b")
    assert list(dict.fromkeys(status_table(url)["run"])) == ["a", "b"]
    only = status_table(url, "b")
    assert set(only["run"]) == {"b"} and only["state"].iloc[0] == "pending"
    with pytest.raises(NoSuchRun, match="no run 'nope'.*runs there: a, b"):
        status_table(url, "nope")


def test_status_of_an_empty_storage_and_of_another_versions_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    open_storage(url)
    assert status_table(url).empty
    run = start_run(tmp_path)
    stage_study(run, "lr_range").set_user_attr(TOOL_ATTR, {"version": "0.0.1", "schema": 2})
    (row,) = status_table(url).to_dict("records")
    assert row["state"] == "unreadable" and "tuner 0.0.1" in row["decision"]


def test_status_command_prints_the_table(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _half_run(tmp_path)
    assert main(["status", "--storage", f"sqlite:///{tmp_path}/t.db"]) == 0
    out = capsys.readouterr().out
    for piece in ["run", "stage", "complete", "pruned", "failed", "decision", "lr_range",
                  "lr_check", "final", "LR 0.01 – 0.1", "x1.41 the range test's 0.1", "done",
                  "not started"]:
        assert piece in out
    empty = tmp_path / "empty.db"
    open_storage(f"sqlite:///{empty}")
    assert main(["status", "--storage", f"sqlite:///{empty}"]) == 0
    assert "no runs in this storage" in capsys.readouterr().out
    missing = tmp_path / "missing" / "x.db"
    assert main(["status", "--storage", f"sqlite:///{missing}"]) == 2
    assert f"no such database file '{missing}'" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_status_of_a_regression_shows_no_accuracy(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    finished_run(tmp_path, REGRESSION, None)
    url = f"sqlite:///{tmp_path}/t.db"
    rows = status_table(url).set_index("stage")
    assert rows.loc["final", "decision"] == "test loss 0.3100 ± 0.0140 over 2 seed(s)"
    assert set(rows["state"]) == {"done"}
    assert rows.loc["momentum", "decision"].startswith("max beta1 0.95")  # AdamW's momentum
    assert main(["status", "--storage", url]) == 0
    assert "accuracy" not in capsys.readouterr().out.lower() + rows.to_csv().lower()


def test_status_names_a_custom_metric(tmp_path: Path) -> None:
    finished_run(tmp_path, F1, 0.8)
    rows = status_table(f"sqlite:///{tmp_path}/t.db").set_index("stage")
    assert rows.loc["final", "decision"] == ("test f1 0.805 ± 0.007 over 2 seed(s), test loss "
                                             "0.3100")
    assert "accuracy" not in rows.to_csv().lower()
