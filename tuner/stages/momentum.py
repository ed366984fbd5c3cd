"""Stage 2: cyclical momentum. Short 1cycle runs, momentum falling from each candidate to
``min_momentum`` while the LR rises and back while it falls; lowest final val loss wins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tuner.stages.base import Decision, HParams
from tuner.stages.grid import grid_stage
from tuner.stages.lr_check import LRDecision

if TYPE_CHECKING:
    from tuner.context import Context


@dataclass(frozen=True, kw_only=True)
class MomentumDecision(Decision):
    max_momentum: float  # SGD's momentum, or Adam's beta1
    min_momentum: float
    optimizer: str = "sgd"

    def summary(self) -> str:
        name = "momentum" if self.optimizer == "sgd" else "beta1"
        return f"max {name} {self.max_momentum:g} (cycling down to {self.min_momentum:g})"


def hparams(ctx: Context, max_momentum: float) -> HParams:
    """The checked LR range, weight decay held at ``momentum.weight_decay``."""
    cfg, lr = ctx.config, ctx.decision(LRDecision)
    return HParams(lr.min_lr, lr.max_lr, max_momentum, cfg.momentum.min_momentum,
                   cfg.momentum.weight_decay, cfg.train.batch_size)


STAGE = grid_stage(
    name="momentum", title="Cyclical momentum", param="max_momentum", label="max momentum",
    decision=MomentumDecision, settings=lambda cfg: cfg.momentum, hparams=hparams,
    decide=lambda ctx, value, why: MomentumDecision(
        max_momentum=value, min_momentum=ctx.config.momentum.min_momentum,
        optimizer=ctx.config.train.optimizer, why=why),
    wording=lambda cfg: "max momentum" if cfg.train.optimizer == "sgd" else "max beta1",
    start=lambda ctx: ctx.config.lr_check.max_momentum)  # the LR check's, the paper's 0.95
