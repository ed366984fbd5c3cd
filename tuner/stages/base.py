"""What a stage is: a frozen ``Stage`` (its name, title, how it runs, prunes, costs and words its
decision) and the typed records that cross module boundaries.

A stage's decision is a frozen dataclass deriving from ``Decision``; it is converted to and from
JSON only at the storage edge (``to_json`` / ``from_json``, pydantic does the checking). Stage
modules import nothing that trains: the training operations come in through the run context
(``tuner.context.Context``), so ``tuner status`` and ``tuner report`` read this registry without
importing torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, NamedTuple, TypeVar

import pydantic

if TYPE_CHECKING:
    import optuna

    from tuner.config import StudyConfig
    from tuner.context import Context


@dataclass(frozen=True)
class HParams:
    """One 1cycle run's hyper-parameters, in the one vocabulary every record uses."""

    min_lr: float
    max_lr: float
    max_momentum: float
    min_momentum: float
    weight_decay: float
    batch_size: int


D = TypeVar("D", bound="Decision")


@dataclass(frozen=True, kw_only=True)
class Decision:
    """A stage's decision: its own fields, why (in words a user can check), and its seconds."""

    why: str
    seconds: float = 0.0

    def summary(self) -> str:
        """The decision in a few words (status table, report, dashboard note)."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return pydantic.TypeAdapter(type(self)).dump_python(self, mode="json")

    @classmethod
    def from_json(cls: type[D], data: Mapping[str, Any]) -> D:
        return pydantic.TypeAdapter(cls).validate_python(dict(data))

    def timed(self: D, seconds: float) -> D:
        return dataclasses.replace(self, seconds=seconds)


def find(decisions: Mapping[str, Decision], kind: type[D]) -> D:
    """The one decision of type ``kind`` among ``decisions`` (by stage name)."""
    found = [d for d in decisions.values() if isinstance(d, kind)]
    if len(found) != 1:
        raise LookupError(f"expected one {kind.__name__} among the decisions, but got "
                          f"{len(found)} (decided: {', '.join(decisions) or 'none'}).")
    return found[0]


class Speed(NamedTuple):
    """What this machine measured: seconds per training step by batch size, and seconds per
    evaluated sample (``tuner.budget`` measures it)."""

    step_s: dict[int, float]
    eval_sample_s: float


class Sizes(NamedTuple):
    """The data sizes the stages' costs depend on."""

    n_train: int
    n_val: int


def epoch_steps(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of ``n`` samples (the last partial batch dropped)."""
    steps = n // batch_size
    if steps < 1:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training samples.")
    return steps


@dataclass(frozen=True)
class Stage(Generic[D]):
    """One stage of the pipeline: one Optuna study per run, one decision of type ``decision``.

    ``run`` trains and decides; ``reports`` is the number of validation measurements per trial
    the pruner is sized for (None: the stage does not prune); ``cost`` estimates the stage's
    seconds for ``tuner.budget`` (None: the stage is not planned, it fits what is left);
    ``param`` names the trial parameter a grid stage varies (also the decision's field).
    """

    name: str
    title: str
    decision: type[D]
    run: Callable[[Context, optuna.Study], D]
    direction: Literal["minimize", "maximize"] = "minimize"
    metric: str = "validation loss"  # the objective's name in optuna-dashboard
    reports: Callable[[Context], int] | None = None
    cost: Callable[[StudyConfig, Speed, Sizes], float] | None = None
    param: str | None = None
    param_label: str | None = None
    varies_max_lr: bool = False  # its trials differ in max LR (``Context.pruner``)

    KINDS: ClassVar[tuple[str, ...]] = ("minimize", "maximize")

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"a stage name must be non-empty without '/', but got "
                             f"{self.name=}.")
        if self.direction not in self.KINDS:
            raise ValueError(f"direction must be one of {self.KINDS}, but got "
                             f"{self.direction=}.")

    def read(self, data: Mapping[str, Any]) -> D:
        """The stored decision (JSON) as this stage's record."""
        return self.decision.from_json(data)
