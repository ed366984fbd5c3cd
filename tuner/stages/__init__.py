"""The registry: the stages of the pipeline, in the paper's order (the optional refinement
before the end). Everything that needs to know which stages exist reads ``STAGES``."""

from __future__ import annotations

from tuner.stages import (
    batch_size,
    final,
    lr_check,
    lr_range,
    lr_recheck,
    momentum,
    refine,
    weight_decay,
)
from tuner.stages.base import Decision, Stage

STAGES: tuple[Stage, ...] = (lr_range.STAGE, lr_check.STAGE, momentum.STAGE, weight_decay.STAGE,
                             lr_recheck.STAGE, batch_size.STAGE, refine.STAGE, final.STAGE)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r}; stages: {', '.join(NAMES)}.")


__all__ = ["NAMES", "STAGES", "Decision", "Stage", "stage"]
