"""Datasets held as tensors on the device, or by a DataLoader when they do not fit.

The fast path (as in airbench): a dataset that fits in memory (CPU) or on the device (GPU) is
held as one tensor, converted to float and normalised once; batches are gathered from it with a
permutation drawn on the device, and augmented there (``tuner.augment``): no DataLoader workers,
no per-sample Python. Data that does not fit is held by ``LoaderData``, which reads batches with
a DataLoader and normalises and augments them on the device.

``load_splits`` returns train / validation / test, the validation split carved from the training
split with a fixed seed, so the test split is touched only by the final evaluation.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Self

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from tuner.augment import AUGMENTS, Augment
from tuner.config import ConfigError, DataConfig
from tuner.sources import CIFAR_LIKE, DATASETS, Arrays, Split, channels_first, read_source

log = logging.getLogger(__name__)

__all__ = ["DATASETS", "Data", "ItemsData", "LoaderData", "Splits", "TensorData", "batches",
           "concat", "eval_batches", "load_splits", "make_splits",
           "split_validation"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, eq=False)
class TensorData:
    """Inputs ``x`` (N, ...) float and integer labels ``y`` (N,), on one device.

    ``augment`` (if any) is applied to each training batch (never in evaluation).
    """

    x: torch.Tensor
    y: torch.Tensor
    augment: Augment | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"x and y differ in length: {len(self.x)=}, {len(self.y)=}.")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> TensorData:
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def subset(self, index: torch.Tensor) -> TensorData:
        return replace(self, x=self.x[index], y=self.y[index])

    def head(self, n: int) -> TensorData:
        return replace(self, x=self.x[:n], y=self.y[:n])


class _Items(Dataset):
    """A map-style dataset's items as (uint8 or float tensor in C, H, W / C, L layout, int)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.dataset[i]
        return item_tensor(x), int(y)


def item_tensor(x: Any) -> torch.Tensor:
    """One input as a tensor: a PIL image or an (H, W[, C]) array becomes (C, H, W); a tensor
    is taken to be channels-first already."""
    if isinstance(x, torch.Tensor):
        return x if x.dim() > 1 else x.unsqueeze(0)
    a = np.asarray(x)  # PIL images: (H, W) or (H, W, C) uint8, read-only
    a = a.astype(np.float32) if a.dtype == np.float64 else np.array(a, copy=True)
    t = torch.from_numpy(a)
    if t.dim() == 1:
        return t.unsqueeze(0)
    return channels_first(t.unsqueeze(0), "dataset item")[0]


@dataclass(frozen=True, eq=False)
class IndexedData:
    """Items ``indices`` of a map-style dataset, read in batches by a DataLoader."""

    dataset: Dataset
    indices: torch.Tensor  # int64, CPU: which items, in order
    device: torch.device

    def __len__(self) -> int:
        return len(self.indices)

    def to(self, device: torch.device | str) -> Self:
        return replace(self, device=torch.device(device))

    def subset(self, index: torch.Tensor) -> Self:
        return replace(self, indices=self.indices[index.cpu()])

    def head(self, n: int) -> Self:
        return replace(self, indices=self.indices[:n])

    def shuffled(self, generator: torch.Generator | None) -> torch.Tensor:
        """The indices in an order drawn from ``generator`` (on any device)."""
        seed = int(torch.randint(2**62, (1,), generator=generator,
                                 device=generator.device if generator else "cpu"))
        return self.indices[torch.randperm(len(self),
                                           generator=torch.Generator().manual_seed(seed))]


@dataclass(frozen=True, eq=False)
class LoaderData(IndexedData):
    """A map-style dataset read in batches by a DataLoader (for data that does not fit), each
    batch moved to ``device``, scaled, normalised and (when training) augmented there."""

    # ``dataset``: items (x, y), x as ``item_tensor`` reads it
    mean: torch.Tensor | None = None  # per channel, after uint8 -> [0, 1]
    std: torch.Tensor | None = None
    augment: Augment | None = None
    workers: int = 0

    @property
    def y(self) -> torch.Tensor:
        """All labels (read item by item unless the dataset keeps ``targets``)."""
        targets = getattr(self.dataset, "targets", None)
        if targets is not None:
            return torch.as_tensor(np.asarray(targets))[self.indices]
        return torch.tensor([self.dataset[int(i)][1] for i in self.indices])

    def _loader(self, order: torch.Tensor, batch_size: int, drop_last: bool) -> DataLoader:
        return DataLoader(Subset(_Items(self.dataset), order.tolist()), batch_size=batch_size,
                          shuffle=False, drop_last=drop_last, num_workers=self.workers,
                          pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
        if self.mean is not None and self.std is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - self.mean.to(x.device).view(shape)) / self.std.to(x.device).view(shape)
        return x

    def batches(self, batch_size: int, generator: torch.Generator | None = None
                ) -> Iterator[Batch]:
        for x, y in self._loader(self.shuffled(generator), batch_size, drop_last=True):
            x = self._prepare(x)
            if self.augment is not None:
                x = self.augment(x, generator)
            yield x, y.to(self.device, non_blocking=True)

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        for x, y in self._loader(self.indices, batch_size, drop_last=False):
            yield self._prepare(x), y.to(self.device, non_blocking=True)


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch with every tensor in it (in tuples, lists and dicts) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


@dataclass(frozen=True, eq=False)
class ItemsData(IndexedData):
    """Any map-style dataset whose items a training step function understands (dicts, tuples
    of more than two tensors, ...): batched by a DataLoader with ``collate`` (torch's default
    when None) and moved to ``device`` as they are: no normalisation, no augmentation."""

    collate: Callable[[list[Any]], Any] | None = None
    workers: int = 0

    def _loader(self, order: torch.Tensor, batch_size: int, drop_last: bool) -> DataLoader:
        return DataLoader(Subset(self.dataset, order.tolist()), batch_size=batch_size,
                          drop_last=drop_last, num_workers=self.workers,
                          collate_fn=self.collate, pin_memory=self.device.type == "cuda")

    def batches(self, batch_size: int, generator: torch.Generator | None = None
                ) -> Iterator[Any]:
        for batch in self._loader(self.shuffled(generator), batch_size, drop_last=True):
            yield to_device(batch, self.device)

    def eval_batches(self, batch_size: int) -> Iterator[Any]:
        for batch in self._loader(self.indices, batch_size, drop_last=False):
            yield to_device(batch, self.device)


Data = TensorData | LoaderData | ItemsData


def concat(a: Data, b: Data) -> Data:
    if isinstance(a, TensorData) and isinstance(b, TensorData):
        return replace(a, x=torch.cat([a.x, b.x]), y=torch.cat([a.y, b.y]))
    if isinstance(a, IndexedData) and type(a) is type(b):
        if a.dataset is b.dataset:
            return replace(a, indices=torch.cat([a.indices, b.indices]))
        joined = ConcatDataset([Subset(a.dataset, a.indices.tolist()),
                                Subset(b.dataset, b.indices.tolist())])
        return replace(a, dataset=joined, indices=torch.arange(len(joined)))
    raise TypeError(f"cannot concatenate {type(a).__name__} and {type(b).__name__}.")


@dataclass(frozen=True)
class Splits:
    """Train / validation / test (``test`` None when there is none: the final training then
    trains on the training split and is scored on the validation split)."""

    train: Data
    val: Data
    test: Data | None
    num_classes: int

    def to(self, device: torch.device | str) -> Splits:
        return Splits(self.train.to(device), self.val.to(device),
                      self.test.to(device) if self.test is not None else None, self.num_classes)


def batches(data: Data, batch_size: int, generator: torch.Generator | None = None,
            ) -> Iterator[Batch]:
    """One epoch of shuffled, augmented full batches (the last partial batch is dropped).

    For tensors, the permutation is drawn on the data's device and indexing gathers each batch
    there; the augmentation draws from the same generator.
    """
    if batch_size > len(data):
        raise ValueError(f"batch_size={batch_size} exceeds the {len(data)} training samples.")
    if isinstance(data, IndexedData):
        yield from data.batches(batch_size, generator)
        return
    x_all, y_all, augment = data.x, data.y, data.augment
    perm = torch.randperm(len(data), device=x_all.device, generator=generator)
    for i in range(len(data) // batch_size):
        index = perm[i * batch_size:(i + 1) * batch_size]
        x = x_all[index]
        if augment is not None:
            x = augment(x, generator)
        yield x, y_all[index]


def eval_batches(data: Data, batch_size: int) -> Iterator[Batch]:
    """Every sample once, in order, in batches of ``batch_size`` (no augmentation)."""
    if isinstance(data, IndexedData):
        yield from data.eval_batches(batch_size)
        return
    for i in range(0, len(data), batch_size):
        yield data.x[i:i + batch_size], data.y[i:i + batch_size]


def split_validation(data: Data, val_fraction: float, seed: int) -> tuple[Data, Data]:
    """Split ``data`` into (train, val) with a fixed-seed permutation."""
    n_val = round(len(data) * val_fraction)
    if not 0 < n_val < len(data):
        raise ValueError(f"val_fraction={val_fraction} leaves no samples on one side of "
                         f"{len(data)} training samples.")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[n_val:]), data.subset(perm[:n_val])


# --- building splits ----------------------------------------------------------------------


def available_bytes(device: torch.device) -> int:
    """Free memory where the data would live: the GPU's, or the machine's."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


FIT_FRACTION = 0.5  # data held as tensors may take this share of the free memory


def sample_shape(split: Split) -> tuple[int, ...]:
    if isinstance(split, Arrays):
        return tuple(split.x.shape[1:])
    return tuple(item_tensor(split[0][0]).shape)


def _length(split: Split | None) -> int:
    return 0 if split is None else len(split)  # type: ignore[arg-type]


def _labels(split: Split) -> torch.Tensor | None:
    if isinstance(split, Arrays):
        return split.y
    targets = getattr(split, "targets", None)
    return torch.as_tensor(np.asarray(targets)) if targets is not None else None


def _num_classes(cfg: DataConfig, sources: list[Split], built: list[Data], name: str) -> int:
    """``cfg.num_classes``, or the largest label + 1; every label checked to be in range."""
    labels = [_labels(s) for s in sources]
    if any(y is None for y in labels):  # a dataset without ``targets``
        declared = [len(getattr(s, "classes", ())) or getattr(s, "num_classes", 0)
                    for s in sources if _labels(s) is None]
        if all(isinstance(d, TensorData) for d in built) or not all(declared):
            labels = [d.y.cpu() for d in built]  # tensors: at hand; loaders: item by item
        else:
            labels = [y for y in labels if y is not None]
            labels.append(torch.tensor([max(declared) - 1]))
    found = max((int(y.max()) + 1 for y in labels if y is not None and len(y)), default=0)
    if cfg.num_classes:
        if found > cfg.num_classes:
            raise ConfigError(f"{name}: labels must lie in [0, data.num_classes="
                              f"{cfg.num_classes}), but got a label {found - 1}.")
        return cfg.num_classes
    if found < 2:
        raise ConfigError(f"{name}: found {found} class(es) in the labels; a classifier needs "
                          f"at least 2 (or set data.num_classes).")
    return found


def materialize(split: Split, workers: int = 0, batch_size: int = 512) -> Arrays:
    """A map-style dataset read once into one tensor (a DataLoader decodes in parallel)."""
    if isinstance(split, Arrays):
        return split
    loader = DataLoader(_Items(split), batch_size=batch_size, num_workers=workers)
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    y = torch.cat(ys)
    return Arrays(torch.cat(xs), y if y.is_floating_point() else y.long(), type(split).__name__)


def _as_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A float32 copy on ``device`` (uint8 scaled to [0, 1]); never the caller's tensor."""
    if x.dtype == torch.uint8:
        return x.to(device).float().div_(255)
    return x.to(device=device, dtype=torch.float32, copy=True)


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [d for d in range(x.dim()) if d != 1]
    std, mean = torch.std_mean(x, dim=dims)
    return mean, std.clamp_min(1e-6)


def _normalize_(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x.sub_(mean.view(shape)).div_(std.view(shape))


def _choose(cfg: DataConfig, name: str, shape: tuple[int, ...], uint8: bool
            ) -> tuple[Augment | None, bool]:
    augment = cfg.augment
    if augment == "auto":
        augment = "cifar" if name in CIFAR_LIKE else "none"
    if augment == "cifar" and len(shape) != 3:
        raise ConfigError(f"data.augment='cifar' needs images (C, H, W), but {name} has inputs "
                          f"of shape {shape}.")
    normalize = cfg.normalize
    if normalize == "auto":
        normalize = "channel" if len(shape) == 3 or uint8 else "none"
    return AUGMENTS[augment], normalize == "channel"


def _is_uint8(split: Split) -> bool:
    if isinstance(split, Arrays):
        return split.x.dtype == torch.uint8
    return item_tensor(split[0][0]).dtype == torch.uint8


def make_splits(train: Split, val: Split | None, test: Split | None, cfg: DataConfig,
                device: torch.device | str = "cpu", name: str | None = None,
                classes: bool = True) -> Splits:
    """Train / validation / test from sources: a ``train_subset`` drawn, the validation split
    carved from train when ``val`` is None, normalised with the training split's per-channel
    statistics, held as tensors on ``device`` when they fit (``cfg.hold``), else by loaders.
    ``classes``: targets are class indices, checked and counted (else values, kept as is)."""
    device = torch.device(device)
    name = name or cfg.name
    shape = sample_shape(train)
    for other, label in ((val, "validation"), (test, "test")):
        if other is not None and sample_shape(other) != shape:
            raise ConfigError(f"{name}: {label} inputs have shape {sample_shape(other)}, but "
                              f"training inputs {shape}.")
    augment, normalize = _choose(cfg, name, shape, _is_uint8(train))

    n_train = len(train)  # type: ignore[arg-type]
    keep = None
    if cfg.train_subset and cfg.train_subset < n_train:
        keep = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.split_seed)
                              )[:cfg.train_subset]
        n_train = cfg.train_subset
    n_all = n_train + _length(val) + _length(test)
    nbytes = n_all * math.prod(shape) * 4
    hold = cfg.hold
    if hold == "auto":
        free = available_bytes(device)
        hold = "tensor" if nbytes <= FIT_FRACTION * free else "loader"
        if hold == "loader":
            log.info("data %s: %.1f GB as float32 does not fit in %.1f GB free on %s: a "
                     "DataLoader with %d workers reads it", name, nbytes / 1e9, free / 1e9,
                     device, cfg.workers)
    if hold == "tensor":
        splits = _tensor_splits(train, val, test, keep, cfg, device, augment, normalize)
    else:
        splits = _loader_splits(train, val, test, keep, cfg, device, augment, normalize)
    num_classes = _num_classes(cfg, [s for s in (train, val, test) if s is not None],
                               [d for d in (splits.train, splits.val, splits.test)
                                if d is not None], name) if classes else 0
    splits = Splits(splits.train, splits.val, splits.test, num_classes)
    log.info("data %s: %d train / %d val / %s test, %d classes, inputs %s, %s on %s", name,
             len(splits.train), len(splits.val),
             len(splits.test) if splits.test is not None else "no", num_classes,
             "x".join(map(str, shape)), "one tensor" if hold == "tensor" else "DataLoader",
             device)
    return splits


def _tensor_splits(train: Split, val: Split | None, test: Split | None,
                   keep: torch.Tensor | None, cfg: DataConfig, device: torch.device,
                   augment: Augment | None, normalize: bool) -> Splits:
    def tensors(split: Split, index: torch.Tensor | None = None) -> TensorData:
        arrays = materialize(split, cfg.workers)
        x, y = arrays.x, arrays.y
        if index is not None:
            x, y = x[index], y[index]
        return TensorData(_as_float(x, device), y.to(device), augment)

    train_t, val_t, test_t = _three_splits(tensors, train, val, test, keep, cfg)
    if normalize:
        mean, std = _channel_stats(train_t.x)
        for part in (train_t, val_t, test_t):
            if part is not None:
                _normalize_(part.x, mean, std)
    if device.type == "cuda" and train_t.x.dim() == 4:
        def cl(d: TensorData | None) -> TensorData | None:
            return None if d is None else replace(
                d, x=d.x.contiguous(memory_format=torch.channels_last))
        train_t, val_t, test_t = cl(train_t), cl(val_t), cl(test_t)
    return Splits(train_t, val_t, test_t, 0)


def _three_splits(make: Callable, train: Split, val: Split | None, test: Split | None,
                  keep: torch.Tensor | None, cfg: DataConfig) -> tuple:
    """(train, val, test) built by ``make``; val carved from train when the data has none."""
    train_d = make(train, keep)
    if val is None:
        train_d, val_d = split_validation(train_d, cfg.val_fraction, cfg.split_seed)
    else:
        val_d = make(val)
    return train_d, val_d, make(test) if test is not None else None


STATS_SAMPLES = 5000  # loader path: per-channel statistics from this many training samples


def _loader_splits(train: Split, val: Split | None, test: Split | None,
                   keep: torch.Tensor | None, cfg: DataConfig, device: torch.device,
                   augment: Augment | None, normalize: bool) -> Splits:
    def loader(split: Split, index: torch.Tensor | None = None) -> LoaderData:
        ds = _ArraysDataset(split) if isinstance(split, Arrays) else split
        index = torch.arange(len(ds)) if index is None else index
        return LoaderData(ds, index, device, augment=augment, workers=cfg.workers)

    train_l, val_l, test_l = _three_splits(loader, train, val, test, keep, cfg)
    if normalize:
        sample = train_l.head(STATS_SAMPLES)
        x = torch.cat([x for x, _ in sample.eval_batches(512)])
        mean, std = _channel_stats(x)
        train_l, val_l = (replace(d, mean=mean, std=std) for d in (train_l, val_l))
        test_l = replace(test_l, mean=mean, std=std) if test_l is not None else None
    return Splits(train_l, val_l, test_l, 0)


class _ArraysDataset(Dataset):
    def __init__(self, arrays: Arrays) -> None:
        self.x, self.targets = arrays.x, arrays.y

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.targets[i]


def load_splits(cfg: DataConfig, device: torch.device | str = "cpu") -> Splits:
    """The configured dataset's splits, on ``device`` (read, checked and normalised once)."""
    train, test = read_source(cfg)
    return make_splits(train, None, test, cfg, device)
