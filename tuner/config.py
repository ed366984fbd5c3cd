"""Study configuration: frozen dataclasses whose defaults are the only place numbers are set.

A study file (TOML) overrides any of them, table by table::

    name = "mnist1d_cnn"
    [data]
    name = "mnist1d"
    [momentum]
    values = [0.99, 0.97, 0.95, 0.9]

Unknown keys, wrong types and out-of-range values raise ``ConfigError`` with a one-line message
that names the key and what would be valid, before any training starts.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A study file or a configuration value is invalid."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive(section: str, **values: float) -> None:
    for key, value in values.items():
        _check(0 < value < math.inf, f"{section}.{key} must be a finite number > 0, but got "
               f"{key}={value!r}.")


def _fraction(section: str, **values: float) -> None:
    for key, value in values.items():
        _check(0 < value < 1, f"{section}.{key} must be in (0, 1), but got {key}={value!r}.")


AUGMENTS = ("auto", "none", "cifar")
NORMALIZES = ("auto", "none", "channel")
HOLDS = ("auto", "tensor", "loader")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how the validation split is carved from the training split.

    ``name`` is a built-in name (``tuner.data.DATASETS``), ``npz:PATH`` (arrays ``x``, ``y``) or
    ``imagefolder:PATH``. Paths are relative to the working directory.
    """

    name: str = "mnist1d"
    val_fraction: float = 0.2  # of the training split; the test split is used only at the end
    split_seed: int = 0
    root: str = "data"  # torchvision datasets (cifar10, cifar100, mnist) live here
    download: bool = False  # let torchvision download into root (needs a network)
    test_path: str = ""  # npz: / imagefolder: the test split's file or folder ("" = none)
    train_subset: int = 0  # use this many training samples (a seeded random subset); 0 = all
    num_classes: int = 0  # labels must lie in [0, num_classes); 0 = max label + 1
    augment: str = "auto"  # auto (cifar for cifar10/cifar100) | none | cifar (crop + flip)
    normalize: str = "auto"  # auto (channel for images and uint8 data) | none | channel
    image_size: int = 0  # imagefolder: resize + center-crop to this size; 0 = as stored
    hold: str = "auto"  # auto (one tensor if it fits, else a DataLoader) | tensor | loader
    workers: int = 2  # DataLoader worker processes, when the data is held by a loader

    def __post_init__(self) -> None:
        _fraction("data", val_fraction=self.val_fraction)
        for key, value, valid in [("augment", self.augment, AUGMENTS),
                                  ("normalize", self.normalize, NORMALIZES),
                                  ("hold", self.hold, HOLDS)]:
            _check(value in valid, f"data.{key} must be one of {', '.join(valid)}, but got "
                   f"{key}={value!r}.")
        for key in ("train_subset", "num_classes", "image_size", "workers"):
            value = getattr(self, key)
            _check(value >= 0, f"data.{key} must be >= 0, but got {key}={value!r}.")
        _check(self.num_classes != 1, "data.num_classes must be 0 (from the labels) or >= 2, "
               f"but got num_classes={self.num_classes!r}.")


@dataclass(frozen=True)
class ModelConfig:
    """A built-in network (``tuner.models.MODELS``) or ``"package.module:factory"``: a callable
    returning an ``nn.Module``, called with ``kwargs`` (and ``num_classes`` if it takes one)."""

    name: str = "mnist1d_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)  # [model.kwargs] in a study file
    path: str = ""  # folder a module:factory is imported from; load_study sets the file's own

    def __post_init__(self) -> None:
        _check(isinstance(self.kwargs, Mapping), f"model.kwargs must be a table, but got "
               f"kwargs={self.kwargs!r}.")


@dataclass(frozen=True)
class TrainConfig:
    """Settings shared by every training run of every stage."""

    # For every stage before the batch-size stage. Small, so that the short momentum and weight
    # decay runs take enough steps to rank values as a full training would (the paper: 128).
    batch_size: int = 32
    eval_batch_size: int = 2048
    nesterov: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 keeps torch's default

    def __post_init__(self) -> None:
        _positive("train", batch_size=self.batch_size, eval_batch_size=self.eval_batch_size)
        _check(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
               f"train.device must be one of auto, cpu, cuda, but got device={self.device!r}.")
        _check(self.threads >= 0, f"train.threads must be >= 0, but got threads={self.threads}.")


@dataclass(frozen=True)
class ScheduleConfig:
    """The 1cycle policy: two equal linear steps min->max->min, then annihilation."""

    cycle_fraction: float = 0.9  # share of the run taken by the two steps
    final_div: float = 100.0  # the last steps fall to min_lr / final_div

    def __post_init__(self) -> None:
        _check(0 < self.cycle_fraction <= 1,
               f"schedule.cycle_fraction must be in (0, 1], but got "
               f"cycle_fraction={self.cycle_fraction!r}.")
        _check(self.final_div >= 1,
               f"schedule.final_div must be >= 1, but got final_div={self.final_div!r}.")


@dataclass(frozen=True)
class LRRangeConfig:
    """The LR range test: one short run with a rising LR, validation loss along the way."""

    start_lr: float = 1e-3
    end_lr: float = 10.0
    num_iters: int = 1000  # long enough for the net to learn: a short test overshoots
    mode: str = "exp"  # exp | linear (the paper's)
    eval_every: int = 10  # iterations between validation measurements
    val_subset: int = 1000  # fixed validation samples measured each time
    momentum: float = 0.9
    weight_decay: float = 0.0
    smooth: float = 0.9  # EMA factor for the training loss (bias-corrected)
    diverge_factor: float = 4.0  # stop once smoothed train loss > factor * its minimum
    min_lr_div: float = 10.0  # min LR = max LR / this (the paper's rule)
    repeats: int = 3  # tests from different seeds, validation curves averaged: one is noisy

    def __post_init__(self) -> None:
        _positive("lr_range", start_lr=self.start_lr, end_lr=self.end_lr,
                  num_iters=self.num_iters, eval_every=self.eval_every,
                  val_subset=self.val_subset, min_lr_div=self.min_lr_div, repeats=self.repeats)
        _check(self.end_lr > self.start_lr,
               f"lr_range.end_lr must be > start_lr, but got end_lr={self.end_lr!r}, "
               f"start_lr={self.start_lr!r}.")
        _check(self.mode in ("exp", "linear"),
               f"lr_range.mode must be 'exp' or 'linear', but got mode={self.mode!r}.")
        _check(0 <= self.smooth < 1, f"lr_range.smooth must be in [0, 1), but got "
               f"smooth={self.smooth!r}.")
        _check(self.diverge_factor > 1, f"lr_range.diverge_factor must be > 1, but got "
               f"diverge_factor={self.diverge_factor!r}.")
        _check(0 <= self.momentum < 1, f"lr_range.momentum must be in [0, 1), but got "
               f"momentum={self.momentum!r}.")
        _check(self.weight_decay >= 0, f"lr_range.weight_decay must be >= 0, but got "
               f"weight_decay={self.weight_decay!r}.")


@dataclass(frozen=True)
class MomentumConfig:
    """Short 1cycle runs; momentum falls from each value to ``min_momentum`` and back."""

    values: tuple[float, ...] = (0.99, 0.97, 0.95, 0.9)
    min_momentum: float = 0.85
    epochs: int = 30  # shorter runs favour high momentum, which a full training does not
    weight_decay: float = 1e-4  # held constant while momentum is chosen
    repeats: int = 2  # runs per value from different seeds, final val losses averaged

    def __post_init__(self) -> None:
        _check(len(self.values) > 0, "momentum.values must not be empty.")
        for v in self.values:
            _check(0 <= v < 1, f"momentum.values must lie in [0, 1), but got value={v!r}.")
            _check(v >= self.min_momentum, f"momentum.values must be >= min_momentum="
                   f"{self.min_momentum}, but got value={v!r}.")
        _positive("momentum", epochs=self.epochs, repeats=self.repeats)
        _check(self.weight_decay >= 0, f"momentum.weight_decay must be >= 0, but got "
               f"weight_decay={self.weight_decay!r}.")


@dataclass(frozen=True)
class WeightDecayConfig:
    """A grid of constant weight decays, with the chosen LR range and momentum."""

    values: tuple[float, ...] = (1e-3, 1e-4, 1e-5, 0.0)
    epochs: int = 30  # shorter runs favour weak regularisation, which a full training does not
    repeats: int = 2  # runs per value from different seeds, final val losses averaged

    def __post_init__(self) -> None:
        _check(len(self.values) > 0, "weight_decay.values must not be empty.")
        for v in self.values:
            _check(v >= 0, f"weight_decay.values must be >= 0, but got value={v!r}.")
        _positive("weight_decay", epochs=self.epochs, repeats=self.repeats)


LR_CAPS = ("linear", "none")


@dataclass(frozen=True)
class BatchSizeConfig:
    """Candidate batch sizes, each trained for the same wall-clock budget."""

    values: tuple[int, ...] = (32, 64, 128, 256, 512)
    # Training seconds per candidate (evaluation not counted). 0 = measured on this machine: the
    # time final.epochs epochs take at train.batch_size, the time a final training would take.
    budget_s: float = 0.0
    range_test_iters: int = 1000  # a short LR range test per size gives each its own LR
    reports: int = 10  # validation measurements per run, at equal fractions of the budget
    # "linear": a size larger than train.batch_size gets at most stage 1's max LR x the size
    # ratio (the linear scaling rule), however high its own range test reaches; "none": its own.
    lr_cap: str = "linear"
    # Another size replaces train.batch_size (at which stages 1-3 were tuned) only when its final
    # validation loss is lower by more than this share; 0 = the lowest loss wins outright.
    margin: float = 0.1

    def __post_init__(self) -> None:
        _check(len(self.values) > 0, "batch_size.values must not be empty.")
        _check(0 <= self.margin < 1, f"batch_size.margin must be in [0, 1), but got "
               f"margin={self.margin!r}.")
        _check(self.lr_cap in LR_CAPS, f"batch_size.lr_cap must be one of {list(LR_CAPS)}, but "
               f"got lr_cap={self.lr_cap!r}.")
        for v in self.values:
            _check(v > 0, f"batch_size.values must be > 0, but got value={v!r}.")
        _check(0 <= self.budget_s < math.inf, "batch_size.budget_s must be a finite number >= 0 "
               "(0 = the time of a final training at train.batch_size), but got "
               f"budget_s={self.budget_s!r}.")
        _positive("batch_size", range_test_iters=self.range_test_iters, reports=self.reports)


@dataclass(frozen=True)
class RefineConfig:
    """Optional: a short TPE search around the staged values (``tuner/stages/refine.py``)."""

    # Refine until the tuning stages (1-4 and this one) have taken this many seconds in all;
    # 0 = no refinement (the paper's pipeline as it stands).
    total_s: float = 0.0
    lr_factor: float = 2.0  # max LR searched within [staged / factor, staged * factor]
    max_trials: int = 0  # stop after this many trials too; 0 = only the time limit

    def __post_init__(self) -> None:
        _check(0 <= self.total_s < math.inf, "refine.total_s must be a finite number >= 0 "
               f"(0 = no refinement), but got total_s={self.total_s!r}.")
        _check(1 < self.lr_factor < math.inf, "refine.lr_factor must be a finite number > 1, "
               f"but got lr_factor={self.lr_factor!r}.")
        _check(self.max_trials >= 0, "refine.max_trials must be >= 0 (0 = no limit), but got "
               f"max_trials={self.max_trials!r}.")


@dataclass(frozen=True)
class FinalConfig:
    """Final 1cycle training on train + validation, scored once on the test split."""

    epochs: int = 40  # at train.batch_size
    seeds: tuple[int, ...] = (0, 1, 2)
    # "time": the chosen batch size trains as long (in seconds) as `epochs` epochs at
    # train.batch_size take, as the batch-size stage compared it; "epochs": `epochs` epochs.
    length: str = "time"

    def __post_init__(self) -> None:
        _positive("final", epochs=self.epochs)
        _check(len(self.seeds) > 0, "final.seeds must not be empty.")
        _check(self.length in ("time", "epochs"),
               f"final.length must be 'time' or 'epochs', but got length={self.length!r}.")


@dataclass(frozen=True)
class PrunerConfig:
    """See ``tuner.pruners.MarginPruner``."""

    margin: float = 0.25  # prune when val loss > best-at-the-same-step * (1 + margin)
    # Share of a run's reports before which only NaN/inf prune. In 1cycle the loss around the
    # LR peak (mid-run) says little about the end, so only the annealing phase is compared.
    warmup_fraction: float = 0.7

    def __post_init__(self) -> None:
        _check(self.margin >= 0, f"pruner.margin must be >= 0, but got margin={self.margin!r}.")
        _check(0 <= self.warmup_fraction <= 1, f"pruner.warmup_fraction must be in [0, 1], "
               f"but got warmup_fraction={self.warmup_fraction!r}.")


@dataclass(frozen=True)
class StudyConfig:
    name: str = "mnist1d_cnn"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    lr_range: LRRangeConfig = field(default_factory=LRRangeConfig)
    momentum: MomentumConfig = field(default_factory=MomentumConfig)
    weight_decay: WeightDecayConfig = field(default_factory=WeightDecayConfig)
    batch_size: BatchSizeConfig = field(default_factory=BatchSizeConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)

    def __post_init__(self) -> None:
        # Imported here: the registries import torch, which the config module need not.
        from tuner.models import resolve_model
        from tuner.sources import check_source

        _check(bool(self.name) and "/" not in self.name,
               f"name must be a non-empty string without '/', but got name={self.name!r}.")
        check_source(self.data)  # a built-in name, or npz:/imagefolder: paths that exist
        resolve_model(self.model)  # a built-in name, or a module:factory that imports

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type hint (TOML gives int, float, str, bool, list)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_hint, _ellipsis) = typing.get_args(hint)
        _check(isinstance(value, list | tuple), f"{key} must be a list, but got {key}={value!r}.")
        return tuple(_coerce(v, item_hint, key) for v in value)
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} has the wrong type: got {key}={value!r}.")
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _check(ok, f"{key} must be a number, but got {key}={value!r}.")
        return float(value)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _check(ok, f"{key} must be an integer, but got {key}={value!r}.")
        return value
    if hint is bool:
        _check(isinstance(value, bool), f"{key} must be true or false, but got {key}={value!r}.")
        return value
    if hint is str:
        _check(isinstance(value, str), f"{key} must be a string, but got {key}={value!r}.")
        return value
    if origin is dict:
        _check(isinstance(value, Mapping), f"{key} must be a table, but got {key}={value!r}.")
        return dict(value)
    return value


def from_dict(cls: type, table: Mapping[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a (nested) mapping, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown key {full!r}; valid keys"
                              f"{' in [' + prefix[:-1] + ']' if prefix else ''}: "
                              f"{', '.join(fields)}.")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            _check(isinstance(value, Mapping), f"{full} must be a table [{full}], but got "
                   f"{full}={value!r}.")
            kwargs[key] = from_dict(hint, value, prefix=f"{full}.")
        else:
            kwargs[key] = _coerce(value, hint, full)
    return cls(**kwargs)


def load_study(path: str | Path) -> StudyConfig:
    """Read a study file; the file name's stem is the default study name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {str(path)!r} does not exist.")
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study file {str(path)!r} is not valid TOML: {exc}.") from None
    table.setdefault("name", path.stem)
    model = table.get("model")
    if isinstance(model, dict) and ":" in str(model.get("name", "")) and not model.get("path"):
        # A module:factory is imported from the study file's folder (recorded, so that a worker
        # rebuilding the configuration from storage finds it too).
        table["model"] = {**model, "path": str(path.resolve().parent)}
    return from_dict(StudyConfig, table)
