"""Where a dataset comes from: built-in names, ``npz:PATH`` files, ``imagefolder:PATH`` folders.

A source reads one split as it is stored, either as arrays (``Arrays``: inputs in the layout the
networks take, (N, C, H, W) or (N, C, L), uint8 or float, and int64 labels) or as a map-style
``torch.utils.data.Dataset`` whose items are ``(input, label)`` (images decoded on access).
``tuner.data`` turns either into tensors on the device, or a DataLoader when it does not fit.

Everything that can be wrong with a study file's data is reported as a one-line
``ConfigError`` naming the key or the path, before any training.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tuner.config import ConfigError, DataConfig
from tuner.imports import import_callable
from tuner.text import first_line

log = logging.getLogger(__name__)

NPZ, IMAGEFOLDER = "npz:", "imagefolder:"
FAKE_SIZES = (500, 100)  # train / test images of the ``fake`` dataset


@dataclass(frozen=True)
class Arrays:
    """One split read whole: ``x`` (N, C, ...) uint8 or float, ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    origin: str  # the file or dataset, for messages

    def __len__(self) -> int:
        return len(self.y)


Split = Arrays | Dataset
SourcePair = tuple[Split, Split | None]  # (train, test or None)


def channels_first(x: np.ndarray | torch.Tensor, origin: str, key: str = "x") -> torch.Tensor:
    """(N, L) -> (N, 1, L); (N, H, W) -> (N, 1, H, W); (N, H, W, C) -> (N, C, H, W) when the
    last axis looks like channels (1, 3 or 4) and the second does not; (N, C, H, W) as is."""
    t = torch.as_tensor(x)
    shape = tuple(t.shape)
    if t.dim() in (2, 3):
        return t.unsqueeze(1)
    if t.dim() == 4:
        if shape[3] <= 4 < shape[1]:
            return t.permute(0, 3, 1, 2).contiguous()
        if shape[1] <= 4:
            return t
        raise ConfigError(f"{origin}: cannot tell the channel axis of {key}.shape={shape}; "
                          f"expected N×H×W×C or N×C×H×W with C in 1..4.")
    raise ConfigError(f"{origin}: {key} must be N×L (1-D signals), N×H×W, N×H×W×C or N×C×H×W "
                      f"(images), but got {key}.shape={shape}.")


def check_arrays(x: Any, y: Any, origin: str, xkey: str = "x", ykey: str = "y") -> Arrays:
    """Validate dtypes and shapes; return the split in the networks' layout."""
    x, y = np.asarray(x), np.asarray(y)
    if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
        raise ConfigError(f"{origin}: {xkey} must be uint8 or float, but got "
                          f"{xkey}.dtype={x.dtype}.")
    if x.ndim < 2 or len(x) == 0:
        raise ConfigError(f"{origin}: {xkey} must hold N >= 1 samples of at least one value "
                          f"each, but got {xkey}.shape={x.shape}.")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(f"{origin}: {ykey} must be integer labels of shape (N,), but got "
                          f"{ykey}.shape={y.shape}, {ykey}.dtype={y.dtype}.")
    if len(y) != len(x):
        raise ConfigError(f"{origin}: {xkey} and {ykey} differ in length: "
                          f"{xkey}.shape={x.shape}, {ykey}.shape={y.shape}.")
    if y.min() < 0:
        raise ConfigError(f"{origin}: labels must be >= 0, but got {ykey}.min()={y.min()}.")
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    return Arrays(channels_first(x, origin, xkey), torch.as_tensor(y.astype(np.int64)), origin)


# --- built-in datasets --------------------------------------------------------------------


def load_mnist1d(cfg: DataConfig) -> SourcePair:
    """MNIST-1D generated locally by ``mnist1d.make_dataset`` (default args: 4000 / 1000)."""
    from mnist1d.data import make_dataset

    d = make_dataset()  # seeded inside (seed 42); ~2 s of numpy
    return (check_arrays(d["x"], d["y"], "mnist1d"),
            check_arrays(d["x_test"], d["y_test"], "mnist1d", "x_test", "y_test"))


def _torchvision(cls_name: str, cfg: DataConfig, **kwargs: Any) -> Any:
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    name = cfg.name
    try:
        return cls(root=cfg.root, download=cfg.download, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- RuntimeError, URLError, socket errors, ...
        if not cfg.download:  # torchvision: "Dataset not found or corrupted. ..."
            raise ConfigError(f"data.name={name!r} is not in data.root={cfg.root!r}; set "
                              f"data.download = true (needs a network) or use "
                              f"npz:PATH.") from None
        raise ConfigError(f"data.name={name!r}: download into data.root={cfg.root!r} failed "
                          f"({_download_error(exc)}); this machine cannot reach the dataset's "
                          f"server: download it elsewhere into data.root, or use "
                          f"npz:PATH.") from None


def _download_error(exc: BaseException) -> str:
    """The gist of a failed download in one line (torchvision's messages span several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    gist = lines[0] if lines else type(exc).__name__
    cause = next((line for line in reversed(lines[1:]) if "rror" in line), "")
    return f"{gist} {cause}".strip() if cause and cause not in gist else gist


def _torchvision_arrays(cls_name: str, cfg: DataConfig) -> SourcePair:
    """CIFAR and MNIST keep the whole split as arrays: read those, not image by image."""
    out = []
    for train in (True, False):
        ds = _torchvision(cls_name, cfg, train=train)
        out.append(check_arrays(np.asarray(ds.data), np.asarray(ds.targets),
                                f"{cfg.name} ({cfg.root})"))
    return out[0], out[1]


def load_cifar10(cfg: DataConfig) -> SourcePair:
    return _torchvision_arrays("CIFAR10", cfg)


def load_cifar100(cfg: DataConfig) -> SourcePair:
    return _torchvision_arrays("CIFAR100", cfg)


def load_mnist(cfg: DataConfig) -> SourcePair:
    return _torchvision_arrays("MNIST", cfg)


def load_fake(cfg: DataConfig) -> SourcePair:
    """torchvision's FakeData: random 3x32x32 images, random labels (for tests: not learnable)."""
    import torchvision.datasets as tvd

    n_train, n_test = FAKE_SIZES
    return (tvd.FakeData(n_train, (3, 32, 32), 10, random_offset=0),
            tvd.FakeData(n_test, (3, 32, 32), 10, random_offset=n_train))


DatasetLoader = Callable[[DataConfig], SourcePair]
DATASETS: dict[str, DatasetLoader] = {
    "mnist1d": load_mnist1d,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "mnist": load_mnist,
    "fake": load_fake,
}
CIFAR_LIKE = ("cifar10", "cifar100")  # augment = "auto" means crop + flip for these


# --- npz and image folders ----------------------------------------------------------------


def load_npz(path: str, key: str) -> tuple[Arrays, Arrays | None]:
    """Arrays ``x`` and ``y`` (and, optionally, ``x_test`` and ``y_test``) from one file."""
    if not Path(path).is_file():
        raise ConfigError(f"{key}: npz file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"{key}: {path!r} is not a readable .npz file: "
                          f"{first_line(exc)}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ConfigError(f"{key}: {path!r} must hold arrays 'x' and 'y', but it holds "
                          f"{sorted(arrays) or 'none'}.")
    train = check_arrays(arrays["x"], arrays["y"], path)
    test = None
    if "x_test" in arrays and "y_test" in arrays:
        test = check_arrays(arrays["x_test"], arrays["y_test"], path, "x_test", "y_test")
    return train, test


def _npz_pair(cfg: DataConfig) -> SourcePair:
    path = cfg.name[len(NPZ):]
    train, test = load_npz(path, "data.name")
    if cfg.test_path:
        test, _ = load_npz(cfg.test_path, "data.test_path")
    if test is not None and test.x.shape[1:] != train.x.shape[1:]:
        raise ConfigError(f"{test.origin}: test inputs have shape {tuple(test.x.shape[1:])}, "
                          f"but training inputs {tuple(train.x.shape[1:])} ({train.origin}).")
    return train, test


def _image_folder(path: str, key: str, image_size: int) -> Dataset:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    if not Path(path).is_dir():
        raise ConfigError(f"{key}: image folder {path!r} does not exist.")
    transform = None
    if image_size:
        transform = T.Compose([T.Resize(image_size), T.CenterCrop(image_size)])
    try:
        return tvd.ImageFolder(path, transform=transform)
    except (FileNotFoundError, OSError) as exc:
        raise ConfigError(f"{key}: {path!r} is not an image folder (one sub-folder of images "
                          f"per class): {first_line(exc)}") from None


def _image_folder_pair(cfg: DataConfig) -> SourcePair:
    train = _image_folder(cfg.name[len(IMAGEFOLDER):], "data.name", cfg.image_size)
    test = None
    if cfg.test_path:
        test = _image_folder(cfg.test_path, "data.test_path", cfg.image_size)
        if test.classes != train.classes:
            raise ConfigError(f"data.test_path: the classes of {cfg.test_path!r} "
                              f"({len(test.classes)}) differ from the training folder's "
                              f"({len(train.classes)}).")
    return train, test


def is_user_data(name: str) -> bool:
    """``data.name = "module:callable"`` (not ``npz:`` or ``imagefolder:``)."""
    return ":" in name and not name.startswith((NPZ, IMAGEFOLDER))


def check_source(cfg: DataConfig) -> None:
    """What a study file's data section can be checked for without reading the data."""
    name = cfg.name
    if name.startswith(NPZ):
        path = name[len(NPZ):]
        if not path:
            raise ConfigError("data.name='npz:' needs a path: npz:PATH.")
        if not Path(path).is_file():
            raise ConfigError(f"data.name={name!r}: npz file {path!r} does not exist.")
        if cfg.test_path and not Path(cfg.test_path).is_file():
            raise ConfigError(f"data.test_path: npz file {cfg.test_path!r} does not exist.")
    elif name.startswith(IMAGEFOLDER):
        path = name[len(IMAGEFOLDER):]
        if not path or not Path(path).is_dir():
            raise ConfigError(f"data.name={name!r}: image folder {path!r} does not exist.")
        if cfg.test_path and not Path(cfg.test_path).is_dir():
            raise ConfigError(f"data.test_path: image folder {cfg.test_path!r} does not exist.")
    elif is_user_data(name):  # the user's own: tuner.user_data calls it
        import_callable(name, "data.name", cfg.path, "data.path")
    elif name not in DATASETS:
        raise ConfigError(f"unknown dataset data.name={name!r}; valid: "
                          f"{', '.join(sorted(DATASETS))}, npz:PATH, imagefolder:PATH, "
                          f"'module:callable'.")
    elif cfg.test_path:
        raise ConfigError(f"data.test_path is for npz: and imagefolder: data, but "
                          f"data.name={name!r} has its own test split.")


def read_source(cfg: DataConfig) -> SourcePair:
    """Read the configured dataset's training and test splits (test may be None)."""
    check_source(cfg)
    if cfg.name.startswith(NPZ):
        return _npz_pair(cfg)
    if cfg.name.startswith(IMAGEFOLDER):
        return _image_folder_pair(cfg)
    return DATASETS[cfg.name](cfg)
