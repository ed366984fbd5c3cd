"""Study configuration: frozen dataclasses whose defaults are the only place numbers are set.

A study file (TOML) overrides any of them, table by table::

    name = "mnist1d_cnn"
    [data]
    name = "mnist1d"
    [momentum]
    values = [0.99, 0.97, 0.95, 0.9]

Each section is a pydantic dataclass (still a stdlib dataclass, so ``dataclasses.replace``,
``asdict`` and ``fields`` work, and a replace validates again): the annotations say what is valid
(``Literal`` choices, bounds), and validators check only the rules that tie fields together.
Unknown keys, wrong types and out-of-range values raise ``ConfigError`` with a one-line message
that names the key and what would be valid, before any training starts.

This module checks values only. Whether the dataset and the model a study names exist (files,
imports) is checked by ``tuner.references.check_references``, which needs torch.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

Reading = Literal["rise", "minimum"]  # where lr_range reads the max LR (tuner.lr_range)
# how layers with running statistics (BatchNorm) normalize in evaluation (tuner.train.evaluate):
# "running", by their running averages (model.eval()); "batch", by each batch's own statistics
NormStats = Literal["running", "batch"]
# stages whose runs the refinement can take over (refine.replaces)
Replaceable = Literal["lr_check", "momentum", "weight_decay"]


class ConfigError(ValueError):
    """A study file or a configuration value is invalid."""


def _rule(ok: Callable[[Any], bool], phrase: str) -> AfterValidator:
    """A one-field rule that a bound or a ``Literal`` cannot say; ``phrase``: "must be ..."."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise PydanticCustomError("rule", phrase)
        return value

    return AfterValidator(check)


# Strict scalars: a bool is not a number, 12.5 or "12" is not an integer (a float takes an int).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]
Count = Annotated[Int, Field(ge=0)]
PosInt = Annotated[Int, Field(gt=0)]
PosFloat = Annotated[Float, Field(gt=0)]
NonNeg = Annotated[Float, Field(ge=0)]
Unit = Annotated[Float, Field(ge=0, lt=1)]  # [0, 1)
Classes = Annotated[Count, _rule(lambda n: n != 1, "must be 0 (from the labels) or >= 2")]
Device = Annotated[Str, _rule(lambda d: re.fullmatch(r"auto|cpu|cuda(:\d+)?", d) is not None,
                              "must be one of auto, cpu, cuda, cuda:N")]
Name = Annotated[Str, _rule(lambda s: bool(s) and "/" not in s,
                            "must be a non-empty string without '/'")]

LOSSES = ("cross_entropy", "mse", "bce_with_logits")
METRICS = ("auto", "accuracy", "none")


def _callable_or(names: tuple[str, ...]) -> Callable[[str], bool]:
    return lambda s: s in names or (":" in s and all(s.partition(":")[::2]))


# Finite numbers only; no keys beyond the fields. Lax otherwise, so that TOML lists become tuples
# and nested tables become sections.
_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)
_T = TypeVar("_T")
_KEYS: dict[type, tuple[str, ...]] = {}  # section class -> its table's key, () for the study


@typing.dataclass_transform(frozen_default=True, field_specifiers=(field,))
def _section(key: str) -> Callable[[type[_T]], type[_T]]:
    """A frozen pydantic dataclass whose constructor raises ``ConfigError`` naming ``key.field``
    (``key``: the section's table in a study file)."""

    def decorate(cls: type[_T]) -> type[_T]:
        cls = dataclass(frozen=True, config=_CONFIG)(cls)
        validate = cls.__init__

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                validate(self, *args, **kwargs)
            except ValidationError as exc:
                raise _config_error(exc, cls, _KEYS[cls]) from None

        cls.__init__ = __init__  # type: ignore[method-assign]
        _KEYS[cls] = (key,) if key else ()
        return cls

    return decorate


@_section("data")
class DataConfig:
    """Which dataset, and how the validation split is carved from the training split.

    ``name`` is a built-in name (``tuner.data.DATASETS``), ``npz:PATH`` (arrays ``x``, ``y``) or
    ``imagefolder:PATH``. Paths are relative to the working directory.
    """

    name: Str = "mnist1d"
    # of the training split, in (0, 1); the test split is used only at the end
    val_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.2
    split_seed: Int = 0
    root: Str = "data"  # torchvision datasets (cifar10, cifar100, mnist) live here
    download: Bool = False  # let torchvision download into root (needs a network)
    test_path: Str = ""  # npz: / imagefolder: the test split's file or folder ("" = none)
    train_subset: Count = 0  # use this many training samples (a seeded random subset); 0 = all
    # labels must lie in [0, num_classes); 0 = max label + 1
    num_classes: Classes = 0
    # auto (cifar for cifar10/cifar100) | none | cifar (crop + flip)
    augment: Literal["auto", "none", "cifar"] = "auto"
    # auto (channel for images and uint8 data) | none | channel
    normalize: Literal["auto", "none", "channel"] = "auto"
    image_size: Count = 0  # imagefolder: resize + center-crop to this size; 0 = as stored
    # auto (one tensor if it fits, else a DataLoader) | tensor | loader
    hold: Literal["auto", "tensor", "loader"] = "auto"
    workers: Count = 2  # DataLoader worker processes, when the data is held by a loader
    # "module:callable" batching the items of "module:callable" data for a step function
    # (train.step); "" = torch's default collate
    collate: Annotated[Str, _rule(lambda s: not s or ":" in s,
                                  "must be '' or 'module:callable'")] = ""
    path: Str = ""  # folder module:callables are imported from; load_study sets the file's own


@_section("model")
class ModelConfig:
    """A built-in network (``tuner.models.MODELS``) or ``"package.module:factory"``: a callable
    returning an ``nn.Module``, called with ``kwargs`` (and ``num_classes`` if it takes one)."""

    name: Str = "mnist1d_cnn"
    kwargs: dict[str, Any] = field(default_factory=dict)  # [model.kwargs] in a study file
    path: Str = ""  # folder a module:factory is imported from; load_study sets the file's own


@_section("train")
class TrainConfig:
    """Settings shared by every training run of every stage."""

    # For every stage before the batch-size stage. Small, so that the short momentum and weight
    # decay runs take enough steps to rank values as a full training would (the paper: 128).
    batch_size: PosInt = 32
    eval_batch_size: PosInt = 2048
    nesterov: Bool = False
    seed: Int = 0
    device: Device = "auto"  # auto | cpu | cuda | cuda:N
    threads: Count = 0  # torch CPU threads; 0 keeps torch's default
    # sgd (the paper's) | adamw (decoupled weight decay) | adam (L2). For Adam the momentum
    # stage grids and cycles beta1, as fastai's fit_one_cycle does.
    optimizer: Literal["sgd", "adamw", "adam"] = "sgd"
    beta2: Unit = 0.99  # Adam's beta2 (fastai's default for 1cycle; PyTorch's is 0.999)
    eps: PosFloat = 1e-5  # Adam's eps (fastai's default; PyTorch's is 1e-8)
    # cross_entropy (targets: class indices) | mse (regression) | bce_with_logits (multi-label,
    # targets 0/1 per label) | "module:callable" (output, target) -> mean loss
    loss: Annotated[Str, _rule(_callable_or(LOSSES), f"must be one of {list(LOSSES)} or "
                                                     f"'module:callable'")] = "cross_entropy"
    label_smoothing: Unit = 0.0  # cross_entropy only
    # auto (accuracy for cross_entropy, none otherwise) | accuracy | none | "module:callable"
    # (output, target) -> the metric summed over the batch; higher is better. Reported; every
    # decision is taken on validation loss, but the LR check leaves its calibrated multiple only
    # if the metric does not fall.
    metric: Annotated[Str, _rule(_callable_or(METRICS), f"must be one of {list(METRICS)} or "
                                                        f"'module:callable'")] = "auto"
    # "module:callable": step(model, batch) -> loss, or (loss, metric_sum, count), for batches
    # that are not (x, y) or models that take more than one input; "" = the built-in step.
    step: Annotated[Str, _rule(lambda s: not s or ":" in s, "must be '' or 'module:callable'")] = ""
    path: Str = ""  # folder module:callables are imported from; load_study sets the file's own

    @model_validator(mode="after")
    def _metric_fits_loss(self) -> Self:
        if self.metric == "accuracy" and self.loss == "mse":
            raise ValueError("metric must not be 'accuracy' for a regression (loss = 'mse'); "
                             "valid: 'none' or a 'module:callable', but got metric='accuracy'.")
        return self

    def class_targets(self) -> bool:
        """Whether targets are class indices (cross-entropy), checked and counted as such."""
        return self.loss == "cross_entropy"

    def metric_name(self) -> str | None:
        """The metric reports show (None: none)."""
        if self.metric == "auto":
            return "accuracy" if self.loss == "cross_entropy" else None
        if self.metric == "none":
            return None
        return self.metric if self.metric == "accuracy" else self.metric.rpartition(":")[2]


@_section("schedule")
class ScheduleConfig:
    """The 1cycle policy: two equal linear steps min->max->min, then annihilation."""

    cycle_fraction: Annotated[Float, Field(gt=0, le=1)] = 0.9  # share of the run taken by the steps
    final_div: Annotated[Float, Field(ge=1)] = 100.0  # the last steps fall to min_lr / final_div


@_section("lr_range")
class LRRangeConfig:
    """The LR range test: one short run with a rising LR, validation loss along the way."""

    start_lr: PosFloat = 1e-3
    end_lr: PosFloat = 10.0  # > start_lr
    num_iters: PosInt = 1000  # long enough for the net to learn: a short test overshoots
    mode: Literal["exp", "linear"] = "exp"  # linear: the paper's
    eval_every: PosInt = 10  # iterations between validation measurements
    val_subset: PosInt = 1000  # fixed validation samples measured each time
    momentum: Unit = 0.9
    weight_decay: NonNeg = 0.0
    smooth: Unit = 0.9  # EMA factor for the training loss (bias-corrected)
    # stop once smoothed train loss > factor * its minimum
    diverge_factor: Annotated[Float, Field(gt=1)] = 4.0
    min_lr_div: PosFloat = 10.0  # min LR = max LR / this (the paper's rule)
    repeats: PosInt = 3  # tests from different seeds, validation curves averaged: one is noisy
    # where the max LR is read: "minimum", the validation minimum's LR (the paper's); "rise",
    # the LR where the loss has climbed back half-way from that minimum, / 2.83, at most 2x the
    # minimum: the minimum's place along a flat bottom wanders 2.8x from seed to seed, the
    # climb's 1.1x; the cap holds where the climb is slow (batch-norm nets)
    reading: Reading = "rise"
    # how BatchNorm layers normalize the validation batches: "batch", by the batch's own
    # statistics (val_subset samples in one batch); "running", by their running averages
    # (model.eval()), which lag the weights while the LR climbs: on ResNet-20 they gave a bumpy
    # curve with two basins 25x apart, a reading that moved 10x with the seeds, 5-8x below the
    # 1cycle optimum (bench/README.md). Models without BatchNorm read the same either way
    norm_stats: NormStats = "batch"

    @model_validator(mode="after")
    def _end_above_start(self) -> Self:
        if self.end_lr <= self.start_lr:
            raise ValueError(f"end_lr must be > start_lr, but got end_lr={self.end_lr!r}, "
                             f"start_lr={self.start_lr!r}.")
        return self


@_section("lr_check")
class LRCheckConfig:
    """Short 1cycle runs at multiples of the range test's reading; the lowest final validation
    loss picks the max LR every later stage uses. The reading is not the optimum: measured on
    five MNIST-1D and digits pairs (bench/README.md), 1cycle's best max LR was 1.4-2x the
    validation minimum, and runs fell off a cliff from about 2.8x; on CIFAR-10's 3-layer net
    it was 0.5x, where the check took x0.71 of the rise reading."""

    # multiples of the range test's max LR; one value = no runs (the reading as it is). Below 1
    # too: for a model whose cliff is close above the reading
    factors: Annotated[tuple[PosFloat, ...], Field(min_length=1)] = (0.71, 1.0, 1.41, 2.0)
    # the factor kept unless another beats it by more than the noise between seeds (the
    # calibration's typical best multiple); one of factors. Of several that beat it and tie with
    # each other, the nearest it is taken. x1 instead when the reading is capped at twice the
    # minimum (tuner.stages.lr_check.preferred_factor)
    prefer: PosFloat = 1.41
    # the least a win must be, as a share of the preferred factor's loss, whatever the seeds say:
    # one short run's final loss moved 5-18% from seed to seed on the calibration pairs (as the
    # batch-size stage's margin)
    margin: Unit = 0.1
    epochs: PosInt = 30  # as the momentum stage's runs
    repeats: PosInt = 3  # runs per factor from different seeds: their spread is the noise
    # cycling down to momentum.min_momentum; weight decay held at momentum.weight_decay
    max_momentum: Unit = 0.95

    @model_validator(mode="after")
    def _prefer_in_factors(self) -> Self:
        if len(self.factors) > 1 and self.prefer not in self.factors:
            raise ValueError(f"prefer must be one of factors={list(self.factors)}, but got "
                             f"prefer={self.prefer!r}.")
        return self

    @property
    def values(self) -> tuple[float, ...]:
        """The grid (a grid stage's ``values``): the factors."""
        return self.factors


@_section("momentum")
class MomentumConfig:
    """Short 1cycle runs; momentum falls from each value to ``min_momentum`` and back."""

    values: Annotated[tuple[Unit, ...], Field(min_length=1)] = (0.99, 0.97, 0.95, 0.9)
    min_momentum: Unit = 0.85  # <= every value
    epochs: PosInt = 30  # shorter runs favour high momentum, which a full training does not
    # held constant while momentum is chosen; unset: the optimizer's (WEIGHT_DECAY_DEFAULTS)
    weight_decay: NonNeg | None = None
    repeats: PosInt = 2  # runs per value from different seeds, final val losses averaged

    @model_validator(mode="after")
    def _values_above_min(self) -> Self:
        for v in self.values:
            if v < self.min_momentum:
                raise ValueError(f"values must be >= min_momentum={self.min_momentum}, but got "
                                 f"value={v!r}.")
        return self


@_section("weight_decay")
class WeightDecayConfig:
    """A grid of constant weight decays, with the chosen LR range and momentum."""

    # unset: the optimizer's grid (WEIGHT_DECAY_DEFAULTS)
    values: Annotated[tuple[NonNeg, ...], Field(min_length=1)] | None = None
    epochs: PosInt = 30  # shorter runs favour weak regularisation, which a full training does not
    repeats: PosInt = 2  # runs per value from different seeds, final val losses averaged


@_section("batch_size")
class BatchSizeConfig:
    """Candidate batch sizes, each trained for the same wall-clock budget."""

    values: Annotated[tuple[PosInt, ...], Field(min_length=1)] = (32, 64, 128, 256, 512)
    # Training seconds per candidate (evaluation not counted). 0 = measured on this machine: the
    # time final.epochs epochs take at train.batch_size, the time a final training would take.
    budget_s: NonNeg = 0.0
    range_test_iters: PosInt = 1000  # a short LR range test per size gives each its own LR
    reports: PosInt = 10  # validation measurements per run, at equal fractions of the budget
    # "linear": a size larger than train.batch_size gets at most the checked max LR x the size
    # ratio (the linear scaling rule), however high its own range test reaches; "none": its own.
    lr_cap: Literal["linear", "none"] = "linear"
    # Another size replaces train.batch_size (at which stages 1-3 were tuned) only when its final
    # validation loss is lower by more than this share; 0 = the lowest loss wins outright.
    margin: Unit = 0.1


@_section("refine")
class RefineConfig:
    """Optional: a short TPE search around the staged values (``tuner/stages/refine.py``)."""

    # Refine until the tuning stages (1-4 and this one) have taken this many seconds in all;
    # 0 = no refinement (the paper's pipeline as it stands).
    total_s: NonNeg = 0.0
    # max LR searched within [staged / factor, staged * factor]
    lr_factor: Annotated[Float, Field(gt=1)] = 2.0
    max_trials: Count = 0  # stop after this many trials too; 0 = only the time limit
    # The least the winner must beat the staged values by on the second seed, as a share of
    # their loss there: a one-seed comparison, and one short run's final loss moves 5-18% from
    # seed to seed (as lr_check.margin and batch_size.margin); 0 = any win on that seed.
    margin: Unit = 0.1
    # Stages that run no trials and leave their value to the refinement, which then searches it
    # over the stage's whole grid (momentum.values, weight_decay.values; the max LR's box covers
    # lr_check.factors): what a --budget too small for two seeds per grid value does. They
    # decide their starting value: lr_check.prefer (x1 for a capped reading) x the reading,
    # lr_check.max_momentum, momentum.weight_decay.
    replaces: tuple[Replaceable, ...] = ()

    @model_validator(mode="after")
    def _replacing_needs_time(self) -> Self:
        if self.replaces and self.total_s <= 0:
            raise ValueError(f"replaces={list(self.replaces)} needs total_s > 0 (the refinement "
                             f"searches their values), but got total_s={self.total_s!r}.")
        return self


@_section("final")
class FinalConfig:
    """Final 1cycle training on train + validation, scored once on the test split."""

    epochs: PosInt = 40  # at train.batch_size
    seeds: Annotated[tuple[Int, ...], Field(min_length=1)] = (0, 1, 2)
    # "time": the chosen batch size trains as long (in seconds) as `epochs` epochs at
    # train.batch_size take, as the batch-size stage compared it; "epochs": `epochs` epochs.
    length: Literal["time", "epochs"] = "time"


@_section("pruner")
class PrunerConfig:
    """See ``tuner.pruners.MarginPruner``."""

    margin: NonNeg = 0.25  # prune when val loss > best-at-the-same-step * (1 + margin)
    # Share of a run's reports before which only NaN/inf prune. In 1cycle the loss around the
    # LR peak (mid-run) says little about the end, so only the annealing phase is compared.
    warmup_fraction: Annotated[Float, Field(ge=0, le=1)] = 0.7


# The weight-decay grid, and the weight decay held while momentum is chosen, by optimizer.
# SGD and Adam (L2): the paper's grid, 1e-3 ... 1e-5 and 0 (Smith 2018, section 4.4). AdamW
# (decoupled): its decay is not scaled by the adaptive step, so useful values are about 100x
# larger: PyTorch's and fastai's default 1e-2 in the middle of 1e-1 ... 1e-3 and 0 (Loshchilov &
# Hutter 2019; Gugger & Howard, "AdamW and super-convergence", fast.ai 2018).
WEIGHT_DECAY_DEFAULTS: dict[str, tuple[tuple[float, ...], float]] = {
    "sgd": ((1e-3, 1e-4, 1e-5, 0.0), 1e-4),
    "adam": ((1e-3, 1e-4, 1e-5, 0.0), 1e-4),
    "adamw": ((1e-1, 1e-2, 1e-3, 0.0), 1e-2),
}


@_section("")
class StudyConfig:
    name: Name = "mnist1d_cnn"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    lr_range: LRRangeConfig = field(default_factory=LRRangeConfig)
    lr_check: LRCheckConfig = field(default_factory=LRCheckConfig)
    momentum: MomentumConfig = field(default_factory=MomentumConfig)
    weight_decay: WeightDecayConfig = field(default_factory=WeightDecayConfig)
    batch_size: BatchSizeConfig = field(default_factory=BatchSizeConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolved(self) -> StudyConfig:
        """Every unset value that depends on the optimizer filled in (what a run stores)."""
        grid, held = WEIGHT_DECAY_DEFAULTS[self.train.optimizer]
        changes: dict[str, Any] = {}
        if self.weight_decay.values is None:
            changes["weight_decay"] = dataclasses.replace(self.weight_decay, values=grid)
        if self.momentum.weight_decay is None:
            changes["momentum"] = dataclasses.replace(self.momentum, weight_decay=held)
        return dataclasses.replace(self, **changes) if changes else self

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)


# --- pydantic's errors as one line naming the key -----------------------------------------

_PHRASES = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "tuple_type": "must be a list",
    "dict_type": "must be a table",
    "too_short": "must not be empty",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
}


def _key(parts: tuple[str | int, ...]) -> str:
    """("momentum", "values", 1) -> "momentum.values[1]"."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


def _annotation(cls: type, names: tuple[str | int, ...]) -> Any:
    """The type of the field ``names`` lead to from ``cls`` (``cls`` itself for none); an index
    leads to a tuple's item type."""
    for name in names:
        while typing.get_origin(cls) is Annotated:
            cls = typing.get_args(cls)[0]
        if isinstance(name, int):
            cls = typing.get_args(cls)[0]
        else:
            cls = cls.__pydantic_fields__[name].annotation  # type: ignore[attr-defined]
    return cls


def _config_error(exc: ValidationError, cls: type, path: tuple[str, ...]) -> ConfigError:
    """The first of ``exc``'s errors as one line; ``path``: where ``cls`` sits in a study file."""
    error = exc.errors(include_url=False)[0]
    kind, loc, ctx = error["type"], error["loc"], error.get("ctx", {})
    full = path + loc
    key = _key(full)
    if kind == "value_error":  # a validator across fields: loc leads to the section
        return ConfigError(f"{key}.{ctx['error']}" if key else str(ctx["error"]))
    if kind == "unexpected_keyword_argument":
        section, keys = _key(full[:-1]), dataclasses.fields(_annotation(cls, loc[:-1]))
        return ConfigError(f"unknown key {key!r}; valid keys{f' in [{section}]' if section else ''}"
                           f": {', '.join(f.name for f in keys)}.")
    if kind == "literal_error":
        phrase = f"must be one of {list(typing.get_args(_annotation(cls, loc)))}"
    elif kind in ("dataclass_type", "dataclass_exact_type"):
        phrase = f"must be a table [{key}]"
    else:  # a bound, a type, or a _rule's phrase
        phrase = _PHRASES[kind].format(**ctx) if kind in _PHRASES else error["msg"]
    last = max((i for i, part in enumerate(full) if isinstance(part, str)), default=0)
    return ConfigError(f"{key} {phrase}, but got {_key(full[last:])}={error['input']!r}.")


def from_dict(cls: type[_T], table: Mapping[str, Any], prefix: str = "") -> _T:
    """Build the section ``cls`` from a (nested) mapping, rejecting unknown keys; messages name
    keys as ``prefix`` + key (default: the section's own table, as the constructor does)."""
    path = tuple(p for p in prefix.split(".") if p) or _KEYS[cls]
    try:
        return TypeAdapter(cls).validate_python(dict(table))
    except ValidationError as exc:
        raise _config_error(exc, cls, path) from None


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study file; the file name's stem is the default study name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {str(path)!r} does not exist.")
    try:
        table = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study file {str(path)!r} is not valid TOML: {exc}.") from None
    table.setdefault("name", path.stem)
    # A module:callable is imported from the study file's folder (recorded, so that a worker
    # rebuilding the configuration from storage finds it too).
    for key, names in (("model", ("name",)), ("train", ("loss", "metric", "step")),
                       ("data", ("name", "collate"))):
        section = table.get(key)
        if (isinstance(section, dict) and not section.get("path")
                and any(":" in str(section.get(n, "")) for n in names)):
            table[key] = {**section, "path": str(path.resolve().parent)}
    return from_dict(StudyConfig, table)
