"""The optimizers a study may train with, in one registry: how each is built and which of its
settings the 1cycle schedule cycles as "momentum" (SGD's momentum, Adam's beta1, as fastai's
``fit_one_cycle`` does). Decoupled weight decay (AdamW) and L2 (SGD, Adam) are both a grid."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from tuner.config import TrainConfig

Params = Iterable[torch.nn.Parameter]


@dataclass(frozen=True)
class OptimizerKind:
    name: str
    make: Callable[[Params, float, float, float, TrainConfig], torch.optim.Optimizer]
    momentum_key: str  # the param-group entry the schedule cycles (train.set_hparams sets it)

    def momentum(self, group: dict) -> float:
        value = group[self.momentum_key]
        return value[0] if self.momentum_key == "betas" else value


def _sgd(params: Params, lr: float, momentum: float, weight_decay: float, cfg: TrainConfig
         ) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=cfg.nesterov and momentum > 0)


def _adam(cls: type[torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    def make(params: Params, lr: float, momentum: float, weight_decay: float, cfg: TrainConfig
             ) -> torch.optim.Optimizer:
        return cls(params, lr=lr, betas=(momentum, cfg.beta2), eps=cfg.eps,
                   weight_decay=weight_decay)
    return make


OPTIMIZERS: dict[str, OptimizerKind] = {
    "sgd": OptimizerKind("sgd", _sgd, "momentum"),
    "adamw": OptimizerKind("adamw", _adam(torch.optim.AdamW), "betas"),
    "adam": OptimizerKind("adam", _adam(torch.optim.Adam), "betas"),
}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float, momentum: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    """``train.optimizer`` on ``model``'s parameters (``momentum``: SGD's, or Adam's beta1)."""
    return OPTIMIZERS[cfg.optimizer].make(model.parameters(), lr, momentum, weight_decay, cfg)

