"""The study files in studies/: each loads, names data and a model that fit together, and says
what is missing in one line when its data is not there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tuner.augment import cifar_crop_flip
from tuner.config import ConfigError, load_study
from tuner.data import batches, load_splits
from tuner.models import model_factory
from tuner.references import check_references

STUDIES = Path(__file__).resolve().parents[1] / "studies"
CIFAR_STUDIES = ["cifar10_3layer", "cifar10_3layer_full", "cifar10_resnet56"]
# The CIFAR studies read torchvision's CIFAR-10 (downloaded once); their comment gives the
# offline alternative: these [data] lines replaced by npz files.
ONLINE = 'name = "cifar10"\nroot = "data"\ndownload = true\n'
OFFLINE = ('name = "npz:data/cifar10/cifar10_train.npz"\n'
           'test_path = "data/cifar10/cifar10_test.npz"\n')


def offline_study(name: str, folder: Path) -> Path:
    """The study file with the edit its comment gives for a machine without a network."""
    text = (STUDIES / f"{name}.toml").read_text()
    for line in OFFLINE.splitlines():
        assert f"#     {line}\n" in text, f"{name}.toml's comment should give {line!r}"
    assert text.count(ONLINE) == 1
    path = folder / f"{name}.toml"
    path.write_text(text.replace(ONLINE, OFFLINE))
    return path


def fake_cifar_npz(folder: Path, n: int) -> None:
    """npz files shaped like torchvision's CIFAR-10 arrays (N×32×32×3 uint8, int labels)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", n // 4)):
        np.savez(folder / f"cifar10_{split}.npz",
                 x=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
                 y=np.arange(count) % 10)


@pytest.mark.parametrize("name", CIFAR_STUDIES)
def test_cifar_studies_download_cifar10_when_run_not_when_loaded(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def no_download(*_a: object, **_k: object) -> None:
        raise AssertionError("loading a study must not read or download its data")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_download)
    config = load_study(STUDIES / f"{name}.toml")
    check_references(config)
    assert config.data.name == "cifar10" and config.data.download
    assert config.data.root == "data" and not config.data.test_path
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name", CIFAR_STUDIES)
def test_cifar_studies_offline_without_the_data_say_which_file_is_missing(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = offline_study(name, tmp_path)
    with pytest.raises(ConfigError) as info:
        check_references(load_study(path))
    message = str(info.value)
    assert "\n" not in message
    assert "data/cifar10/cifar10_train.npz" in message and "does not exist" in message


@pytest.mark.parametrize(("name", "model", "batch"), [
    ("cifar10_3layer", "cifar10_3layer", 128),
    ("cifar10_3layer_full", "cifar10_3layer", 128),
    ("cifar10_resnet56", "resnet56", 512),
])
def test_cifar_studies_offline_with_data_in_place(name: str, model: str, batch: int,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    fake_cifar_npz(tmp_path / "data" / "cifar10", 200)
    config = load_study(offline_study(name, tmp_path))
    check_references(config)
    assert config.name == name and config.model.name == model
    assert config.train.batch_size == batch
    splits = load_splits(config.data)
    assert splits.train.x.shape[1:] == (3, 32, 32) and splits.test is not None
    assert splits.train.augment is cifar_crop_flip
    net = model_factory(config.model, splits.num_classes)()
    x, _ = next(iter(batches(splits.train, 4, torch.Generator().manual_seed(0))))
    assert net(x).shape == (4, 10)


def test_cifar10_3layer_is_restricted_to_10000_images() -> None:
    text = (STUDIES / "cifar10_3layer.toml").read_text()
    assert "train_subset = 10000" in text


def test_cifar10_3layer_full_is_the_papers_set_up() -> None:
    """All 50,000 images, the final 1cycle training 25 epochs at batch 128 (Smith 2018)."""
    config = load_study(STUDIES / "cifar10_3layer_full.toml").resolved()
    assert config.data.train_subset == 0
    assert (config.final.epochs, config.train.batch_size) == (25, 128)
    assert config.model.name == "cifar10_3layer"


def test_resnet56_study_has_the_papers_settings() -> None:
    config = load_study(STUDIES / "cifar10_resnet56.toml").resolved()
    assert config.train.batch_size == 512
    assert 1e-4 in config.weight_decay.values and len(config.weight_decay.values) >= 4
    assert config.momentum.min_momentum == 0.85 and 0.95 in config.momentum.values


def test_mnist_lenet_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torchvision.datasets

    config = load_study(STUDIES / "mnist_lenet.toml")
    assert config.data.name == "mnist" and config.data.download
    assert model_factory(config.model, 10)()(torch.randn(2, 1, 28, 28)).shape == (2, 10)

    def offline(*_a: object, **_k: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(ConfigError) as info:
        load_splits(config.data)
    assert "\n" not in str(info.value) and "cannot reach" in str(info.value)
