"""tuner.data and tuner.sources: npz files in every layout, validation errors naming the path
or key, the fake dataset, the tensor fast path and the DataLoader fallback."""

from __future__ import annotations

import dataclasses
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from tuner.augment import cifar_crop_flip
from tuner.config import ConfigError, DataConfig, StudyConfig, load_study
from tuner.data import (
    LoaderData,
    TensorData,
    batches,
    concat,
    eval_batches,
    load_splits,
    make_splits,
)
from tuner.models import build_model
from tuner.sources import Arrays
from tuner.train import evaluate


def npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return str(path)


def images(n: int, shape: tuple[int, ...], seed: int = 0, dtype: type = np.uint8
           ) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return rng.standard_normal((n, *shape)).astype(dtype)


def labels(n: int, k: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, k, n)


def cfg(name: str, **kw: object) -> DataConfig:
    return DataConfig(name=name, **kw)


# --- npz layouts ----------------------------------------------------------------------------


def test_npz_nhwc_uint8_becomes_normalised_nchw_float(tmp_path: Path) -> None:
    x = images(50, (8, 8, 3))
    path = npz(tmp_path / "d.npz", x=x, y=labels(50))
    s = load_splits(cfg(f"npz:{path}", val_fraction=0.2))
    assert s.train.x.shape == (40, 3, 8, 8) and s.train.x.dtype == torch.float32
    assert s.val.x.shape == (10, 3, 8, 8)
    assert s.test is None  # no test file, no x_test in the file
    mean = s.train.x.mean(dim=(0, 2, 3))
    std = s.train.x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=1e-5)
    assert torch.allclose(std, torch.ones(3), atol=1e-2)
    assert s.num_classes == 4


def test_uint8_is_scaled_to_unit_range_without_normalisation(tmp_path: Path) -> None:
    x = images(20, (3, 4, 4))  # NCHW
    path = npz(tmp_path / "d.npz", x=x, y=labels(20))
    s = load_splits(cfg(f"npz:{path}", normalize="none", val_fraction=0.5))
    both = torch.cat([s.train.x, s.val.x])
    assert both.shape == (20, 3, 4, 4)
    assert 0 <= both.min() and both.max() <= 1
    assert sorted((both * 255).round().flatten().tolist()) == sorted(
        x.astype(np.float32).flatten().tolist())


def test_nchw_float_is_kept(tmp_path: Path) -> None:
    x = images(30, (1, 6, 6), dtype=np.float64)
    path = npz(tmp_path / "d.npz", x=x, y=labels(30))
    s = load_splits(cfg(f"npz:{path}", normalize="none"))
    assert s.train.x.shape[1:] == (1, 6, 6) and s.train.x.dtype == torch.float32
    rows = {tuple(r.flatten().tolist()) for r in torch.cat([s.train.x, s.val.x])}
    assert rows == {tuple(r.flatten().tolist()) for r in torch.tensor(x, dtype=torch.float32)}


@pytest.mark.parametrize(("shape", "expected"), [
    ((40,), (1, 40)),  # N x L signals get one channel
    ((9, 9), (1, 9, 9)),  # N x H x W grayscale images
    ((9, 9, 1), (1, 9, 9)),  # NHWC, one channel
    ((4, 9, 9), (4, 9, 9)),  # NCHW, four channels
])
def test_npz_layouts(tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    path = npz(tmp_path / "d.npz", x=images(20, shape, dtype=np.float32), y=labels(20))
    assert load_splits(cfg(f"npz:{path}")).train.x.shape[1:] == expected


def test_signals_are_not_normalised_by_default_but_can_be(tmp_path: Path) -> None:
    x = images(40, (16,), dtype=np.float32) * 5 + 3
    path = npz(tmp_path / "d.npz", x=x, y=labels(40))
    assert load_splits(cfg(f"npz:{path}")).train.x.mean() > 2
    assert abs(load_splits(cfg(f"npz:{path}", normalize="channel")).train.x.mean()) < 1e-4


def test_test_split_from_a_second_file_or_from_x_test(tmp_path: Path) -> None:
    train = npz(tmp_path / "tr.npz", x=images(30, (8, 8, 3)), y=labels(30))
    test = npz(tmp_path / "te.npz", x=images(12, (8, 8, 3), seed=1), y=labels(12, seed=1))
    s = load_splits(cfg(f"npz:{train}", test_path=test))
    assert s.test is not None and s.test.x.shape == (12, 3, 8, 8)
    both = npz(tmp_path / "both.npz", x=images(30, (8, 8, 3)), y=labels(30),
               x_test=images(7, (8, 8, 3)), y_test=labels(7))
    assert len(load_splits(cfg(f"npz:{both}")).test) == 7


def test_train_subset_is_a_seeded_random_subset(tmp_path: Path) -> None:
    x = np.arange(100, dtype=np.float32).reshape(100, 1)  # N x L, L = 1: x is the index
    path = npz(tmp_path / "d.npz", x=x, y=labels(100))
    a = load_splits(cfg(f"npz:{path}", train_subset=40, val_fraction=0.25))
    b = load_splits(cfg(f"npz:{path}", train_subset=40, val_fraction=0.25))
    assert (len(a.train), len(a.val)) == (30, 10)
    assert torch.equal(a.train.x, b.train.x)
    seen = torch.cat([a.train.x, a.val.x]).flatten()
    assert len(set(seen.tolist())) == 40 and seen.max() > 40  # not simply the first 40


# --- validation: one line naming the path or key ------------------------------------------


def study_error(tmp_path: Path, data: str) -> str:
    study = tmp_path / "s.toml"
    study.write_text(f"[data]\n{data}\n")
    with pytest.raises(ConfigError) as info:
        config = load_study(study)
        load_splits(config.data)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_missing_npz_file_is_refused_when_the_study_is_loaded(tmp_path: Path) -> None:
    message = study_error(tmp_path, f'name = "npz:{tmp_path}/nope.npz"')
    assert "does not exist" in message and f"{tmp_path}/nope.npz" in message
    train = npz(tmp_path / "tr.npz", x=images(10, (4,)), y=labels(10))
    message = study_error(tmp_path, f'name = "npz:{train}"\ntest_path = "{tmp_path}/t.npz"')
    assert "data.test_path" in message and "t.npz" in message


BAD_ARRAYS = {
    "no y": (dict(x=images(10, (4,))), ["must hold arrays 'x' and 'y'", "['x']"]),
    "1-D x": (dict(x=np.zeros(10, np.float32), y=labels(10)), ["x.shape=(10,)"]),
    "5-D x": (dict(x=np.zeros((10, 2, 2, 2, 2), np.float32), y=labels(10)),
              ["x must be N×L", "x.shape=(10, 2, 2, 2, 2)"]),
    "int x": (dict(x=np.zeros((10, 4), np.int32), y=labels(10)), ["uint8 or float"]),
    "2-D y": (dict(x=images(10, (4,)), y=np.zeros((10, 3), np.int64)), ["y.shape=(10, 3)"]),
    "float y": (dict(x=images(10, (4,)), y=np.zeros(10)), ["integer labels"]),
    "lengths": (dict(x=images(10, (4,)), y=labels(9)), ["differ in length"]),
    "negative": (dict(x=images(10, (4,)), y=np.full(10, -1)), ["labels must be >= 0"]),
    "channels": (dict(x=np.zeros((10, 7, 7, 7), np.float32), y=labels(10)),
                 ["cannot tell the channel axis"]),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_are_one_line_errors_naming_the_file(tmp_path: Path, case: str) -> None:
    arrays, expected = BAD_ARRAYS[case]
    path = npz(tmp_path / "bad.npz", **arrays)
    message = study_error(tmp_path, f'name = "npz:{path}"')
    assert path in message
    for piece in expected:
        assert piece in message, message


def test_labels_out_of_range(tmp_path: Path) -> None:
    path = npz(tmp_path / "d.npz", x=images(10, (4,)), y=np.arange(10))
    message = study_error(tmp_path, f'name = "npz:{path}"\nnum_classes = 5')
    assert "data.num_classes=5" in message and "label 9" in message and path in message
    one_class = npz(tmp_path / "one.npz", x=images(10, (4,)), y=np.zeros(10, np.int64))
    assert "at least 2" in study_error(tmp_path, f'name = "npz:{one_class}"')


def test_not_an_npz_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_text("not a zip")
    assert "not a readable .npz" in study_error(tmp_path, f'name = "npz:{path}"')


def test_test_file_with_other_shapes(tmp_path: Path) -> None:
    train = npz(tmp_path / "tr.npz", x=images(10, (4,)), y=labels(10))
    test = npz(tmp_path / "te.npz", x=images(10, (5,)), y=labels(10))
    message = study_error(tmp_path, f'name = "npz:{train}"\ntest_path = "{test}"')
    assert "te.npz" in message and "(1, 5)" in message


@pytest.mark.parametrize(("data", "expected"), [
    ('name = "imagenet"', ["data.name='imagenet'", "npz:PATH", "cifar10"]),
    ('name = "npz:"', ["npz:PATH"]),
    ('name = "imagefolder:/no/such/dir"', ["image folder", "/no/such/dir"]),
    ('augment = "mixup"', ["data.augment", "cifar"]),
    ('hold = "disk"', ["data.hold"]),
    ('name = "cifar10"\ntest_path = "x.npz"', ["data.test_path"]),
])
def test_data_section_errors(tmp_path: Path, data: str, expected: list[str]) -> None:
    message = study_error(tmp_path, data)
    for piece in expected:
        assert piece in message, message


def test_torchvision_dataset_not_downloaded_says_how(tmp_path: Path) -> None:
    message = study_error(tmp_path, f'name = "cifar10"\nroot = "{tmp_path}/none"')
    assert "data.download = true" in message and "npz:PATH" in message


def test_download_without_network_is_one_line(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*_a: object, **_k: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    message = study_error(tmp_path, f'name = "cifar10"\nroot = "{tmp_path}"\ndownload = true')
    assert "download" in message and "cannot reach" in message and "npz:PATH" in message


# --- fake data, image folders, the loader fallback --------------------------------------


@pytest.fixture(scope="module")
def fake_splits():  # noqa: ANN201
    return load_splits(DataConfig(name="fake"))


def test_fake_dataset(fake_splits) -> None:  # noqa: ANN001
    s = fake_splits
    assert s.train.x.shape[1:] == (3, 32, 32) and s.num_classes == 10
    assert len(s.train) + len(s.val) == 500 and len(s.test) == 100
    assert s.train.augment is None  # augmentation is cifar10/cifar100's default only
    assert abs(s.train.x.mean().item()) < 1e-3


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                size = (12, 10) if i % 2 else (10, 12)
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
                    folder / f"{i}.png")
    s = load_splits(cfg(f"imagefolder:{tmp_path}/train", test_path=f"{tmp_path}/test",
                        image_size=8, val_fraction=0.25))
    assert s.train.x.shape == (9, 3, 8, 8) and len(s.test) == 4 and s.num_classes == 2


def test_loader_fallback_matches_the_tensor_path(fake_splits) -> None:  # noqa: ANN001
    loader = load_splits(DataConfig(name="fake", hold="loader", workers=0))
    assert isinstance(loader.train, LoaderData) and isinstance(fake_splits.train, TensorData)
    assert len(loader.train) == len(fake_splits.train) and len(loader.test) == 100
    torch.manual_seed(0)
    model = build_model("cifar10_3layer", 10)
    a = evaluate(model, loader.test, batch_size=64)
    b = evaluate(model, fake_splits.test, batch_size=64)
    assert a.loss == pytest.approx(b.loss, rel=1e-4) and a.metric == b.metric
    x, y = next(iter(batches(loader.train, 32, torch.Generator().manual_seed(0))))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (32,)
    joined = concat(loader.train, loader.val)
    assert len(joined) == 500 and isinstance(joined, LoaderData)


def test_auto_hold_falls_back_when_data_does_not_fit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tuner.data.available_bytes", lambda _device: 1000)
    path = npz(tmp_path / "d.npz", x=images(40, (8, 8, 3)), y=labels(40))
    s = load_splits(cfg(f"npz:{path}", workers=0))
    assert isinstance(s.train, LoaderData)
    assert sum(len(y) for _, y in eval_batches(s.val, 3)) == len(s.val) == 8


# --- batches and augmentation ---------------------------------------------------------------


def test_batches_augment_training_batches_only() -> None:
    x = torch.randn(64, 3, 8, 8)
    data = TensorData(x, torch.arange(64), cifar_crop_flip)
    seen = 0
    for xb, yb in batches(data, 16, torch.Generator().manual_seed(0)):
        assert not torch.equal(xb, x[yb])  # cropped and flipped
        seen += len(yb)
    assert seen == 64
    xe, ye = next(iter(eval_batches(data, 64)))
    assert torch.equal(xe, x) and torch.equal(ye, torch.arange(64))


def test_augmentation_default_and_checks(tmp_path: Path) -> None:
    imgs = Arrays(torch.zeros(20, 3, 8, 8), torch.arange(20) % 2, "t")
    d = make_splits(imgs, None, None, DataConfig(augment="cifar"))
    assert d.train.augment is cifar_crop_flip and d.val.augment is cifar_crop_flip
    signals = Arrays(torch.zeros(20, 1, 8), torch.arange(20) % 2, "t")
    with pytest.raises(ConfigError, match="needs images"):
        make_splits(signals, None, None, DataConfig(augment="cifar"))


def test_study_config_accepts_the_new_data_keys(tmp_path: Path) -> None:
    path = npz(tmp_path / "d.npz", x=images(10, (4,)), y=labels(10))
    study = tmp_path / "s.toml"
    study.write_text(f'[data]\nname = "npz:{path}"\ntrain_subset = 8\naugment = "none"\n'
                     f'normalize = "channel"\nhold = "tensor"\nworkers = 0\nnum_classes = 4\n')
    config = load_study(study)
    assert config.data.train_subset == 8 and config.data.hold == "tensor"
    assert dataclasses.replace(StudyConfig(), data=config.data).data.name == f"npz:{path}"
