"""Schedules as pure functions of the step (fastai's ``schedule.py`` style, without its magic).

``one_cycle`` is the 1cycle policy of Smith (2018), section 4.1: the LR rises linearly from
``lr_min`` to ``lr_max`` and falls back to ``lr_min`` in two steps of equal length that together
take ``cycle_fraction`` of the run; in the remaining steps it falls linearly to
``lr_min / final_div``. Momentum mirrors the LR: it falls from ``mom_max`` to ``mom_min`` while
the LR rises, rises back while the LR falls, and stays at ``mom_max`` afterwards.
"""

from __future__ import annotations

from typing import NamedTuple


class LRMomentum(NamedTuple):
    lr: float
    momentum: float


def sched_lin(start: float, end: float, pos: float) -> float:
    """Linear interpolation; ``pos`` in [0, 1]."""
    return start + pos * (end - start)


def sched_exp(start: float, end: float, pos: float) -> float:
    """Geometric interpolation; ``pos`` in [0, 1]."""
    return start * (end / start) ** pos


def position(step: int, total_steps: int) -> float:
    """Position of ``step`` (0-based) in a run of ``total_steps``: 0 at the first, 1 at the last."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, but got {total_steps=}.")
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps}), but got {step=}.")
    return step / (total_steps - 1) if total_steps > 1 else 0.0


def range_test_lr(step: int, num_iters: int, start_lr: float, end_lr: float,
                  mode: str = "exp") -> float:
    """LR of the range test at ``step``: ``start_lr`` at step 0, ``end_lr`` at the last step."""
    pos = position(step, num_iters)
    if mode == "exp":
        return sched_exp(start_lr, end_lr, pos)
    if mode == "linear":
        return sched_lin(start_lr, end_lr, pos)
    raise ValueError(f"mode must be 'exp' or 'linear', but got {mode=}.")


def one_cycle(step: int, total_steps: int, lr_min: float, lr_max: float, mom_max: float,
              mom_min: float, cycle_fraction: float = 0.9, final_div: float = 100.0
              ) -> LRMomentum:
    """LR and momentum of the 1cycle policy at ``step`` of ``total_steps``.

    At position 0 the LR is ``lr_min``; at ``cycle_fraction / 2`` it peaks at ``lr_max``; at
    ``cycle_fraction`` it is back at ``lr_min``; at the last step it is ``lr_min / final_div``.
    Pass ``mom_max == mom_min`` for a constant momentum.
    """
    if not 0 < cycle_fraction <= 1:
        raise ValueError(f"cycle_fraction must be in (0, 1], but got {cycle_fraction=}.")
    pos = position(step, total_steps)
    peak = cycle_fraction / 2
    if pos <= peak:
        t = pos / peak
        return LRMomentum(sched_lin(lr_min, lr_max, t), sched_lin(mom_max, mom_min, t))
    if pos <= cycle_fraction:
        t = (pos - peak) / peak
        return LRMomentum(sched_lin(lr_max, lr_min, t), sched_lin(mom_min, mom_max, t))
    t = (pos - cycle_fraction) / (1 - cycle_fraction)
    return LRMomentum(sched_lin(lr_min, lr_min / final_div, t), mom_max)

