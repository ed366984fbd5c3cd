"""Stage 3: weight decay. A grid of constant values with the chosen LR range and momentum."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuner.stages.base import Decision, HParams
from tuner.stages.grid import grid_stage
from tuner.stages.lr_check import LRDecision
from tuner.stages.momentum import MomentumDecision

if TYPE_CHECKING:
    from tuner.context import Context


@dataclass(frozen=True, kw_only=True)
class WeightDecayDecision(Decision):
    weight_decay: float

    def summary(self) -> str:
        return f"weight decay {self.weight_decay:g}"


def hparams(ctx: Context, weight_decay: float) -> HParams:
    """The checked LR range and stage 2's momentum."""
    lr, mom = ctx.decision(LRDecision), ctx.decision(MomentumDecision)
    return HParams(lr.min_lr, lr.max_lr, mom.max_momentum, mom.min_momentum, weight_decay,
                   ctx.config.train.batch_size)


STAGE = grid_stage(
    name="weight_decay", title="Weight decay", param="weight_decay", label="weight decay",
    decision=WeightDecayDecision, settings=lambda cfg: cfg.weight_decay, hparams=hparams,
    decide=lambda _ctx, value, why: WeightDecayDecision(weight_decay=value, why=why),
    start=lambda ctx: ctx.config.momentum.weight_decay)  # held in stages 1b and 2
