"""Your own model and data, end to end: a model file outside the package named in a study file
("mymodels:make"), an npz: dataset, through the CLI; and tuner.tune from Python."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import tuner
from tuner.cli import main
from tuner.config import (
    BatchSizeConfig,
    FinalConfig,
    LRCheckConfig,
    LRRangeConfig,
    MomentumConfig,
    WeightDecayConfig,
)
from tuner.data import TensorData

from .conftest import tiny_config

MODEL_FILE = """
from torch import nn


def make(num_classes=10, width=8):
    \"\"\"A small conv net for 1 x 8 x 8 images.\"\"\"
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(width * 64, num_classes))
"""

STUDY = """
name = "mine"

[data]
name = "npz:{train}"
test_path = "{test}"

[model]
name = "mymodels:make"
kwargs = {{ width = 6 }}

[train]
batch_size = 32
threads = 1

[lr_range]
start_lr = 1e-3
num_iters = 200
eval_every = 10
repeats = 1

[lr_check]
factors = [1.0, 2.0]
prefer = 2.0
epochs = 2
repeats = 1

[momentum]
values = [0.9]
epochs = 2

[weight_decay]
values = [1e-4, 0.0]
epochs = 2

[batch_size]
values = [32, 64]
budget_s = 0.3
range_test_iters = 200
reports = 2

[final]
epochs = 2
seeds = [0]
"""


def class_images(n: int, seed: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """uint8 8x8 images: a brighter quadrant per class in strong noise (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.integers(0, 200, (n, 8, 8)).astype(np.int64)
    for c in range(k):
        r, q = divmod(c, 2)
        x[y == c, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 40
    return x.astype(np.uint8), y


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A user's project outside the package: model file, data files and study file."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "mymodels.py").write_text(MODEL_FILE)
    x, y = class_images(640, seed=0)
    np.savez(proj / "train.npz", x=x, y=y)
    x, y = class_images(200, seed=1)
    np.savez(proj / "test.npz", x=x, y=y)
    (proj / "study.toml").write_text(textwrap.dedent(STUDY).format(
        train=proj / "train.npz", test=proj / "test.npz"))
    return proj


def test_user_model_file_and_npz_data_tuned_end_to_end_by_the_cli(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{project}/t.db"
    assert main(["-q", "run", str(project / "study.toml"), "--storage", url]) == 0
    table = capsys.readouterr().out
    assert "test accuracy" in table and "mine" in table
    final = optuna.load_study(study_name="mine/final", storage=url).user_attrs["decision"]
    assert final["scored_on"] == "test" and final["metric"] > 0.5  # four classes: chance 0.25
    check = optuna.load_study(study_name="mine/lr_check", storage=url)
    assert len(check.trials) == 2 and check.user_attrs["decision"]["factor"] in (1.0, 2.0)
    stored = optuna.load_study(study_name="mine/lr_range", storage=url).user_attrs["config"]
    assert stored["model"] == {"name": "mymodels:make", "kwargs": {"width": 6},
                               "path": str(project.resolve())}


def test_the_dataloader_fallback_runs_the_whole_pipeline(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = project / "study.toml"
    study.write_text(study.read_text().replace("[model]", 'hold = "loader"\nworkers = 0\n\n'
                                                          "[model]"))
    url = f"sqlite:///{project}/t.db"
    assert main(["-q", "run", str(study), "--storage", url]) == 0
    assert "test accuracy" in capsys.readouterr().out
    final = optuna.load_study(study_name="mine/final", storage=url).user_attrs["decision"]
    assert final["scored_on"] == "test" and final["metric"] > 0.5


@pytest.mark.parametrize(("change", "expected"), [
    ('name = "mymodels:make"', None),  # sanity: the unchanged file is fine
    ('name = "mymodelz:make"', "cannot import module 'mymodelz'"),
    ('name = "mymodels:mkae"', "has no 'mkae'"),
])
def test_bad_factory_is_one_line_before_anything_is_stored(
        project: Path, capsys: pytest.CaptureFixture[str], change: str,
        expected: str | None) -> None:
    study = project / "study.toml"
    study.write_text(study.read_text().replace('name = "mymodels:make"', change)
                     .replace("num_iters = 200", "num_iters = 0" if expected is None else
                              "num_iters = 200"))
    db = project / "t.db"
    code = main(["run", str(study), "--storage", f"sqlite:///{db}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and not db.exists()
    assert (expected or "lr_range.num_iters") in err


def test_bad_npz_is_one_line_before_anything_is_stored(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(project / "train.npz", x=np.zeros((10, 8, 8, 8, 8), np.float32),
             y=np.zeros(10, np.int64))
    db = project / "t.db"
    assert main(["run", str(project / "study.toml"), "--storage", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert str(project / "train.npz") in err and "x.shape=(10, 8, 8, 8, 8)" in err
    assert "\n" not in err and not db.exists()


def tiny_tune_config(name: str) -> tuner.StudyConfig:
    return tiny_config(
        name=name,
        lr_range=LRRangeConfig(start_lr=1e-3, num_iters=200, eval_every=10, repeats=1),
        lr_check=LRCheckConfig(factors=(1.0, 2.0), prefer=2.0, epochs=2, repeats=1),
        momentum=MomentumConfig(values=(0.9,), epochs=2),
        weight_decay=WeightDecayConfig(values=(1e-4, 0.0), epochs=2),
        batch_size=BatchSizeConfig(values=(32, 64), budget_s=0.3, range_test_iters=200,
                                   reports=2),
        final=FinalConfig(epochs=2, seeds=(0,)),
    )


def make_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


class ImageList(Dataset):
    """A user's map-style dataset: items are (uint8 H x W array, int)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.x[i], int(self.y[i])


def test_tune_with_datasets_and_a_test_set(tmp_path: Path) -> None:
    train = ImageList(*class_images(512, seed=0))
    val = ImageList(*class_images(128, seed=2))
    test = ImageList(*class_images(128, seed=1))
    result = tuner.tune(make_model, train, val, tiny_tune_config("tuned"), test_set=test,
                        storage=f"sqlite:///{tmp_path}/t.db")
    assert result.run == "tuned"
    assert result.batch_size in (32, 64) and result.weight_decay in (1e-4, 0.0)
    assert 0 < result.min_lr < result.max_lr and result.momentum == 0.9
    assert result.test_accuracy is not None and result.test_accuracy > 0.5
    assert result.accuracy == result.test_accuracy


def test_tune_with_tensors_and_no_test_set_scores_on_validation(tmp_path: Path) -> None:
    def tensors(seed: int, n: int) -> TensorData:
        x, y = class_images(n, seed)
        return TensorData(torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255,
                          torch.tensor(y))

    result = tuner.tune(make_model, tensors(0, 512), tensors(2, 128), tiny_tune_config("nt"),
                        storage=f"sqlite:///{tmp_path}/t.db")
    final = result.final
    assert result.test_accuracy is None and final.scored_on == "val"
    assert result.accuracy == final.metric > 0.5 and final.metric_name == "accuracy"
    assert "no test split" in final.why


def test_tune_rejects_other_things() -> None:
    with pytest.raises(TypeError, match="train_set must be"):
        tuner.tune(make_model, [1, 2, 3], [1], tiny_tune_config("x"))
