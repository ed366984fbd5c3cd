"""Running the LR range test (``tuner.lr_range`` reads its curve): the model and optimizer are
restored afterwards, whatever happens (as Lightning's tuner and torch-lr-finder do)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from tuner.config import LRRangeConfig
from tuner.data import Data
from tuner.lr_range import RangeCurve
from tuner.schedules import LRMomentum, range_test_lr
from tuner.task import CLASSIFICATION, Task
from tuner.train import Diverged, evaluate, fit


class _Stop(Exception):
    pass


def range_test(model: nn.Module, optimizer: torch.optim.Optimizer, train: Data,
               val: Data, cfg: LRRangeConfig, batch_size: int, *,
               num_iters: int | None = None, eval_batch_size: int = 2048,
               on_eval: Callable[[int, float, float], None] | None = None,
               generator: torch.Generator | None = None, task: Task = CLASSIFICATION
               ) -> RangeCurve:
    """Run the range test on ``model``/``optimizer`` and restore both afterwards.

    ``on_eval(step, lr, val_loss)`` is called at each validation measurement (for reporting).
    """
    num_iters = num_iters or cfg.num_iters
    val = val.head(cfg.val_subset)
    curve = RangeCurve()
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    best_smoothed = math.inf
    smoothed = 0.0

    def lr_at(step: int) -> float:
        return range_test_lr(step, num_iters, cfg.start_lr, cfg.end_lr, cfg.mode)

    def measure(step: int) -> None:
        lr = lr_at(max(step - 1, 0))
        result = evaluate(model, val, eval_batch_size, task, cfg.norm_stats)
        curve.val_steps.append(step)
        curve.val_lrs.append(lr)
        curve.val_losses.append(result.loss)
        curve.val_metrics.append(result.metric)
        if on_eval is not None:
            on_eval(step, lr, result.loss)

    def on_step(step: int, lr: float, loss: float) -> None:
        nonlocal best_smoothed, smoothed
        curve.lrs.append(lr)
        curve.train_losses.append(loss)
        smoothed = cfg.smooth * smoothed + (1 - cfg.smooth) * loss
        value = smoothed / (1 - cfg.smooth**step)
        best_smoothed = min(best_smoothed, value)
        if step > 1 and value > cfg.diverge_factor * best_smoothed:
            curve.stop_reason = (f"smoothed training loss {value:.4g} exceeded "
                                 f"{cfg.diverge_factor:g} x its minimum {best_smoothed:.4g}")
            curve.stop_step = step
            measure(step)
            raise _Stop

    try:
        measure(0)
        fit(model, optimizer, train, total_steps=num_iters, batch_size=batch_size,
            schedule=lambda step: LRMomentum(lr_at(step), None),  # momentum as set
            eval_every=cfg.eval_every, on_eval=lambda step, _loss, _s: measure(step),
            on_step=on_step, generator=generator, task=task)
    except _Stop:
        pass
    except Diverged as exc:
        curve.stop_reason = f"training loss became {exc.loss} (not finite)"
        curve.stop_step = exc.step
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
    return curve
