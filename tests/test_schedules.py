"""tuner.schedules: the 1cycle policy and the range test's LR as pure functions of the step."""

from __future__ import annotations

import math

import pytest

from tuner.schedules import LRMomentum, one_cycle, position, range_test_lr, sched_exp, sched_lin

# total_steps=101 puts step s at position s/100: with cycle_fraction=0.9 the peak (0.45) is step
# 45, the end of the cycle (0.9) is step 90 and the last step (1.0) is step 100.
TOTAL = 101
PEAK, CYCLE_END, LAST = 45, 90, 100
LR_MIN, LR_MAX = 0.01, 0.1
MOM_MAX, MOM_MIN = 0.95, 0.85
FINAL_DIV = 100.0


def oc(step: int, total: int = TOTAL, cycle_fraction: float = 0.9) -> LRMomentum:
    return one_cycle(step, total, LR_MIN, LR_MAX, MOM_MAX, MOM_MIN, cycle_fraction, FINAL_DIV)


def approx(x: float) -> object:
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def test_one_cycle_returns_named_pair() -> None:
    out = oc(0)
    assert isinstance(out, LRMomentum)
    assert out == (out.lr, out.momentum)


def test_one_cycle_first_step() -> None:
    lr, mom = oc(0)
    assert lr == LR_MIN
    assert mom == MOM_MAX


def test_one_cycle_peak() -> None:
    lr, mom = oc(PEAK)
    assert lr == approx(LR_MAX)
    assert mom == approx(MOM_MIN)


def test_one_cycle_end_of_cycle() -> None:
    lr, mom = oc(CYCLE_END)
    assert lr == approx(LR_MIN)
    assert mom == approx(MOM_MAX)


def test_one_cycle_last_step() -> None:
    lr, mom = oc(LAST)
    assert lr == approx(LR_MIN / FINAL_DIV)
    assert mom == MOM_MAX


def test_one_cycle_peak_is_the_maximum_lr_and_minimum_momentum() -> None:
    points = [oc(s) for s in range(TOTAL)]
    lrs = [p.lr for p in points]
    moms = [p.momentum for p in points]
    assert max(range(TOTAL), key=lrs.__getitem__) == PEAK
    assert min(range(TOTAL), key=moms.__getitem__) == PEAK


@pytest.mark.parametrize(("lo", "hi"), [(0, PEAK), (PEAK, CYCLE_END), (CYCLE_END, LAST)])
def test_one_cycle_is_linear_in_each_phase(lo: int, hi: int) -> None:
    lrs = [oc(s).lr for s in range(lo, hi + 1)]
    moms = [oc(s).momentum for s in range(lo, hi + 1)]
    lr_step = (lrs[-1] - lrs[0]) / (hi - lo)
    mom_step = (moms[-1] - moms[0]) / (hi - lo)
    for i in range(len(lrs)):
        assert lrs[i] == pytest.approx(lrs[0] + i * lr_step, rel=1e-9, abs=1e-15)
        assert moms[i] == pytest.approx(moms[0] + i * mom_step, rel=1e-9, abs=1e-15)


def test_one_cycle_explicit_midpoints() -> None:
    # Halfway up, halfway down, halfway through the annihilation.
    assert oc(22).lr == pytest.approx(LR_MIN + 22 / 45 * (LR_MAX - LR_MIN), rel=1e-12)
    assert oc(PEAK + 15).lr == pytest.approx(LR_MAX - 15 / 45 * (LR_MAX - LR_MIN), rel=1e-12)
    assert oc(95).lr == pytest.approx((LR_MIN + LR_MIN / FINAL_DIV) / 2, rel=1e-9)
    assert oc(95).momentum == MOM_MAX


def test_one_cycle_monotonic() -> None:
    lrs = [oc(s).lr for s in range(TOTAL)]
    moms = [oc(s).momentum for s in range(TOTAL)]
    rise, fall, tail = range(PEAK), range(PEAK, CYCLE_END), range(CYCLE_END, LAST)
    assert all(lrs[i + 1] > lrs[i] for i in rise)
    assert all(lrs[i + 1] < lrs[i] for i in fall)
    assert all(lrs[i + 1] < lrs[i] for i in tail)
    assert all(moms[i + 1] < moms[i] for i in rise)
    assert all(moms[i + 1] > moms[i] for i in fall)
    assert all(m == MOM_MAX for m in moms[CYCLE_END + 1:])


def test_momentum_mirrors_lr_during_the_cycle() -> None:
    for s in range(CYCLE_END + 1):
        lr, mom = oc(s)
        lr_frac = (lr - LR_MIN) / (LR_MAX - LR_MIN)
        mom_frac = (MOM_MAX - mom) / (MOM_MAX - MOM_MIN)
        assert lr_frac == pytest.approx(mom_frac, abs=1e-9), s


def test_one_cycle_constant_momentum() -> None:
    moms = {one_cycle(s, TOTAL, LR_MIN, LR_MAX, 0.9, 0.9).momentum for s in range(TOTAL)}
    assert moms == {0.9}


def test_one_cycle_full_cycle_ends_at_lr_min() -> None:
    # cycle_fraction=1: no annihilation phase, the last step is back at lr_min.
    assert oc(50, cycle_fraction=1.0).lr == approx(LR_MAX)
    assert oc(LAST, cycle_fraction=1.0).lr == approx(LR_MIN)
    assert oc(LAST, cycle_fraction=1.0).momentum == approx(MOM_MAX)


def test_one_cycle_single_step_run() -> None:
    assert oc(0, total=1) == (LR_MIN, MOM_MAX)


@pytest.mark.parametrize("cycle_fraction", [0.0, -0.1, 1.01])
def test_one_cycle_rejects_bad_cycle_fraction(cycle_fraction: float) -> None:
    with pytest.raises(ValueError, match="cycle_fraction"):
        oc(0, cycle_fraction=cycle_fraction)


def test_one_cycle_rejects_step_out_of_range() -> None:
    with pytest.raises(ValueError, match="step"):
        oc(TOTAL)


def test_position() -> None:
    assert position(0, 101) == 0.0
    assert position(100, 101) == 1.0
    assert position(25, 101) == 0.25
    assert position(0, 1) == 0.0


@pytest.mark.parametrize(("step", "total"), [(-1, 10), (10, 10), (11, 10), (0, 0), (0, -3)])
def test_position_rejects_bad_step(step: int, total: int) -> None:
    with pytest.raises(ValueError, match="step"):
        position(step, total)


def test_sched_helpers() -> None:
    assert sched_lin(1.0, 3.0, 0.5) == 2.0
    assert sched_lin(3.0, 1.0, 0.0) == 3.0
    assert sched_exp(1e-3, 10.0, 0.5) == pytest.approx(0.1, rel=1e-12)
    assert sched_exp(2.0, 8.0, 1.0) == pytest.approx(8.0, rel=1e-12)


def test_range_test_lr_exp_endpoints_and_geometric_midpoint() -> None:
    start, end, n = 1e-3, 10.0, 101
    assert range_test_lr(0, n, start, end) == start
    assert range_test_lr(n - 1, n, start, end) == pytest.approx(end, rel=1e-12)
    mid = range_test_lr(50, n, start, end, "exp")
    assert mid == pytest.approx(math.sqrt(start * end), rel=1e-12)
    # Equal ratios between equally spaced steps.
    ratios = [range_test_lr(s + 1, n, start, end) / range_test_lr(s, n, start, end)
              for s in range(n - 1)]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)


def test_range_test_lr_linear_endpoints_and_midpoint() -> None:
    start, end, n = 1e-3, 10.0, 101
    assert range_test_lr(0, n, start, end, "linear") == start
    assert range_test_lr(n - 1, n, start, end, "linear") == pytest.approx(end, rel=1e-12)
    assert range_test_lr(50, n, start, end, "linear") == pytest.approx((start + end) / 2)


def test_range_test_lr_rejects_bad_mode_and_step() -> None:
    with pytest.raises(ValueError, match="mode"):
        range_test_lr(0, 10, 1e-3, 1.0, "cosine")
    with pytest.raises(ValueError, match="step"):
        range_test_lr(10, 10, 1e-3, 1.0)
