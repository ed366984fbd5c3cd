"""tuner.cli: bad study files stop with one line before any training; the summary table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tuner.cli import main, summary_table
from tuner.pipeline import Result
from tuner.stages.base import HParams
from tuner.stages.batch_size import BatchSizeDecision
from tuner.stages.final import FinalDecision
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.momentum import MomentumDecision
from tuner.stages.refine import RefineDecision
from tuner.stages.weight_decay import WeightDecayDecision

BAD_FILES = {
    "unknown key": ("[momentum]\nvaluez = [0.9]\n", ["'momentum.valuez'", "values"]),
    "unknown top key": ("epochz = 3\n", ["'epochz'", "lr_range"]),
    "unknown dataset": ('[data]\nname = "imagenet"\n', ["data.name='imagenet'", "mnist1d"]),
    "unknown model": ('[model]\nname = "resnet9000"\n', ["model.name='resnet9000'",
                                                         "mnist1d_cnn"]),
    "negative LR": ("[lr_range]\nstart_lr = -0.1\n", ["lr_range.start_lr", "start_lr=-0.1"]),
    "wrong type": ('[final]\nepochs = "forty"\n', ["final.epochs", "integer"]),
    "unknown optimizer": ('[train]\noptimizer = "lion"\n', ["train.optimizer", "'adamw'"]),
    "unknown loss": ('[train]\nloss = "hinge"\n', ["train.loss", "mse", "module:callable"]),
    "loss that does not import": ('[train]\nloss = "nosuch_mod:fn"\n',
                                  ["train.loss='nosuch_mod:fn'", "cannot import module"]),
    "accuracy of a regression": ('[train]\nloss = "mse"\nmetric = "accuracy"\n',
                                 ["train.metric", "regression"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_study_file_is_one_line_error_before_training(
        case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = BAD_FILES[case]
    study = tmp_path / "bad.toml"
    study.write_text(text)
    db = tmp_path / "t.db"
    code = main(["run", str(study), "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("tuner: error: ")
    assert "\n" not in err
    for piece in expected:
        assert piece in err
    assert not db.exists()  # nothing was stored: the error came before any training


def test_missing_study_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


PASSWORD = "s3cret"  # a made-up one, to check that it is masked


def test_storage_password_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "studies/mnist1d_cnn.toml", "--storage",
                 "postgresql+psycopg://tuner:" + PASSWORD + "@127.0.0.1:1/nowhere"])
    err = capsys.readouterr().err
    assert code == 2
    assert PASSWORD not in err and "***" in err


def test_console_script_entry_point_runs(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "tuner.cli", "run", "--help"],
                         capture_output=True, text=True, check=True)
    assert "--storage" in out.stdout and "--fresh" in out.stdout


def test_summary_table_names_every_choice() -> None:
    values = HParams(0.025, 0.25, 0.95, 0.85, 1e-4, 128)
    decisions = {
        "lr_range": RangeDecision(min_lr=0.02, max_lr=0.2, batch_size=32, why="", seconds=3.0),
        "lr_check": LRDecision(min_lr=0.0282, max_lr=0.282, factor=1.41, reading=0.2,
                               batch_size=32, why="", seconds=5.0),
        "momentum": MomentumDecision(max_momentum=0.95, min_momentum=0.85, why="",
                                     seconds=4.0),
        "weight_decay": WeightDecayDecision(weight_decay=1e-4, why="", seconds=4.0),
        "batch_size": BatchSizeDecision(batch_size=128, min_lr=0.025, max_lr=0.25,
                                        final_epochs=40, why="", seconds=60.0),
        "refine": RefineDecision(values=values, staged=values, why=""),
        "final": FinalDecision(values=values, epochs=40, scored_on="test", loss=0.19,
                               loss_sd=0.01, losses=[0.18, 0.19, 0.20], seeds=[0, 1, 2],
                               metric_name="accuracy", metric=0.953, metric_sd=0.002,
                               metrics=[0.951, 0.953, 0.955], why="", seconds=10.0),
    }
    table = summary_table(Result("r", "sqlite:///x.db", decisions))
    for piece in ["0.02 – 0.2", "Max LR check", "LR 0.0282 – 0.282 (x1.41 the range test's 0.2)",
                  "lr_range 3s, lr_check 5s, momentum 4s",
                  "max momentum 0.95 (cycling down to 0.85)", "weight decay 0.0001",
                  "batch size 128 (LR 0.025 – 0.25)", "test accuracy 95.30% ± 0.20", "0.1900",
                  "batch_size 60s", "LR 0.025 - 0.25, momentum 0.95 -> 0.85", "Final 1cycle"]:
        assert piece in table


def test_summary_table_of_data_without_a_test_split_says_validation() -> None:
    values = HParams(0.025, 0.25, 0.95, 0.85, 1e-4, 128)
    final = FinalDecision(values=values, epochs=4, scored_on="val", loss=1.0, loss_sd=0.0,
                          losses=[1.0], seeds=[0], metric_name="accuracy", metric=0.5,
                          metric_sd=0.0, metrics=[0.5], why="")
    table = summary_table(Result("r", "sqlite:///x.db", {"final": final}))
    assert "validation accuracy 50.00%" in table and "test" not in table


def test_summary_table_of_a_regression_shows_no_accuracy() -> None:
    values = HParams(0.025, 0.25, 0.95, 0.85, 1e-4, 128)
    final = FinalDecision(values=values, epochs=4, scored_on="test", loss=0.25, loss_sd=0.01,
                          losses=[0.24, 0.26], seeds=[0, 1], why="")
    table = summary_table(Result("r", "sqlite:///x.db", {"final": final}))
    assert "test loss 0.2500" in table and "accuracy" not in table.lower()
