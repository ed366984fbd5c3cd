"""tuner.cli: bad study files stop with one line before any training; the summary table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tuner.cli import main, summary_table
from tuner.pipeline import Result

BAD_FILES = {
    "unknown key": ("[momentum]\nvaluez = [0.9]\n", ["'momentum.valuez'", "values"]),
    "unknown top key": ("epochz = 3\n", ["'epochz'", "lr_range"]),
    "unknown dataset": ('[data]\nname = "imagenet"\n', ["data.name='imagenet'", "mnist1d"]),
    "unknown model": ('[model]\nname = "resnet9000"\n', ["model.name='resnet9000'",
                                                         "mnist1d_cnn"]),
    "negative LR": ("[lr_range]\nstart_lr = -0.1\n", ["lr_range.start_lr", "start_lr=-0.1"]),
    "wrong type": ('[final]\nepochs = "forty"\n', ["final.epochs", "integer"]),
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
    decisions = {
        "lr_range": {"min_lr": 0.02, "max_lr": 0.2, "seconds": 3.0},
        "momentum": {"max_momentum": 0.95, "min_momentum": 0.85, "seconds": 4.0},
        "weight_decay": {"weight_decay": 1e-4, "seconds": 4.0},
        "batch_size": {"batch_size": 128, "min_lr": 0.025, "max_lr": 0.25, "seconds": 60.0},
        "final": {"epochs": 40, "seeds": [0, 1, 2], "test_accuracy": 0.953,
                  "test_accuracy_sd": 0.002, "test_loss": 0.19, "seconds": 10.0},
    }
    table = summary_table(Result("r", "sqlite:///x.db", decisions))
    for piece in ["0.02 - 0.2", "0.95 -> 0.85", "0.0001", "128", "0.025 - 0.25", "95.30%",
                  "0.1900", "batch_size 60s"]:
        assert piece in table
