"""tuner.lr_range: decisions read off synthetic curves, and one real range test on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tuner.config import LRRangeConfig
from tuner.data import TensorData
from tuner.lr_range import (
    MAX_OVER_MINIMUM,
    RISE_RATIO,
    LRRange,
    NoUsableMinimum,
    RangeCurve,
    decide_range,
    ema,
    read_range,
    rise_lr,
    rise_range,
    suggestions,
    valley,
)
from tuner.range_test import range_test

LRS = [10 ** (-3 + 0.5 * i) for i in range(9)]  # 1e-3 ... 10, a factor sqrt(10) apart


# --- decide_range ---------------------------------------------------------------------------


def test_u_shaped_curve_gives_max_at_minimum_and_min_a_tenth() -> None:
    losses = [2.3, 2.1, 1.6, 1.0, 0.8, 1.1, 1.9, 3.0, 6.0]
    found = decide_range(LRS, losses)
    assert isinstance(found, LRRange)
    assert found.max_lr == LRS[4]
    assert found.min_lr == pytest.approx(LRS[4] / 10, rel=1e-12)
    assert f"{LRS[4]:.3g}" in found.why
    assert "\n" not in found.why


def test_min_lr_div_is_applied() -> None:
    losses = [2.3, 2.1, 1.6, 1.0, 0.8, 1.1, 1.9, 3.0, 6.0]
    assert decide_range(LRS, losses, min_lr_div=4.0).min_lr == pytest.approx(LRS[4] / 4)


def test_flat_curve_is_refused() -> None:
    losses = [2.30, 2.29, 2.28, 2.27, 2.28, 2.29, 2.30, 2.31, 2.32]
    with pytest.raises(NoUsableMinimum) as info:
        decide_range(LRS, losses)
    message = str(info.value)
    assert "flat" in message
    assert "lr_range.end_lr" in message
    assert "\n" not in message


def test_small_drop_is_flat_but_large_enough_drop_is_not() -> None:
    just_below = [2.0, 1.92, 1.95, 2.1]  # 4% drop < 5%
    with pytest.raises(NoUsableMinimum, match="flat"):
        decide_range(LRS[:4], just_below)
    assert decide_range(LRS[:4], just_below, min_drop=0.03).max_lr == LRS[1]


def test_immediately_rising_curve_is_refused() -> None:
    losses = [2.3, 2.5, 3.0, 4.0, 8.0]
    with pytest.raises(NoUsableMinimum) as info:
        decide_range(LRS[:5], losses)
    message = str(info.value)
    assert "lr_range.start_lr" in message
    assert "\n" not in message


def test_curve_still_falling_at_the_end_is_refused() -> None:
    losses = [2.3, 2.1, 1.8, 1.5, 1.2, 1.0]
    with pytest.raises(NoUsableMinimum) as info:
        decide_range(LRS[:6], losses)
    message = str(info.value)
    assert "still falling" in message
    assert "lr_range.end_lr" in message


def test_points_after_a_nan_are_ignored() -> None:
    # The 0.1 after the NaN would be the minimum if it counted.
    losses = [2.3, 1.5, 1.0, 1.4, math.nan, 0.1, 0.05]
    found = decide_range(LRS[:7], losses)
    assert found.max_lr == LRS[2]


def test_points_after_an_inf_are_ignored() -> None:
    losses = [2.3, 1.5, 1.0, 1.4, math.inf, 0.1]
    assert decide_range(LRS[:6], losses).max_lr == LRS[2]


def test_nan_making_the_last_finite_point_the_minimum_is_still_falling() -> None:
    losses = [2.3, 1.5, 1.0, math.nan, 0.5]
    with pytest.raises(NoUsableMinimum, match="still falling"):
        decide_range(LRS[:5], losses)


@pytest.mark.parametrize("losses", [[2.3, math.nan, 1.0, 0.5], [2.3, 2.0], [], [math.inf]])
def test_too_few_finite_points_is_refused(losses: list[float]) -> None:
    with pytest.raises(NoUsableMinimum, match="lr_range.start_lr"):
        decide_range(LRS[:len(losses)], losses)


def test_no_usable_minimum_is_a_value_error() -> None:
    assert issubclass(NoUsableMinimum, ValueError)


# --- ema, valley, suggestions ---------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.98])
def test_ema_of_a_constant_is_that_constant(beta: float) -> None:
    assert ema([3.5] * 50, beta) == pytest.approx([3.5] * 50, rel=1e-12)


def test_ema_values() -> None:
    assert ema([], 0.9) == []
    assert ema([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    out = ema([1.0, 3.0], 0.5)
    assert out[0] == pytest.approx(1.0)  # bias-corrected: the first value is kept
    assert out[1] == pytest.approx((0.25 * 1.0 + 0.5 * 3.0) / 0.75)


def test_valley_of_a_u_curve_is_two_thirds_down_the_descent() -> None:
    lrs = list(range(12))
    losses = [9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0, 5, 6]
    v = valley(lrs, losses)
    assert 0 < v < 9  # inside the descent, before the minimum
    assert v == 4.0  # descent 0..9: start + int(9/3) + int(3/2) (fastai without its off-by-one)


def test_valley_degenerate_inputs() -> None:
    assert math.isnan(valley([], []))
    assert math.isnan(valley([1.0], [2.0]))
    assert valley([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0  # never decreases: the first LR


def test_valley_of_a_short_run_stays_inside_the_run() -> None:
    lrs = [0.0, 1.0, 2.0, 3.0, 4.0]
    losses = [2.0, 1.0, 3.0, 4.0, 5.0]  # the only descent is between lrs 0 and 1
    assert valley(lrs, losses) in (0.0, 1.0)


def _u_curve(n: int = 60, bottom: int = 40, drop_at: int = 20) -> tuple[list[float], list[float]]:
    lrs = [10 ** (-4 + 5 * i / (n - 1)) for i in range(n)]
    losses = []
    for i in range(n):
        if i <= bottom:
            loss = 3.0 - 0.02 * i - (1.0 if i > drop_at else 0.0)  # one big drop after drop_at
        else:
            loss = 3.0 - 0.02 * bottom - 1.0 + 0.1 * (i - bottom)
        losses.append(loss)
    return lrs, losses


def test_suggestions_without_smoothing() -> None:
    lrs, losses = _u_curve()
    s = suggestions(lrs, losses, beta=0.0)
    assert s.minimum == pytest.approx(lrs[40] / 10, rel=1e-12)
    assert s.steepest == lrs[20]  # the slope from point 20 to 21 is the steepest
    assert lrs[6] <= s.valley < lrs[40]  # inside the (trimmed) descent


def test_suggestions_with_smoothing_lag_behind_the_raw_minimum() -> None:
    lrs, losses = _u_curve()
    s = suggestions(lrs, losses, beta=0.9)
    assert lrs[40] / 10 <= s.minimum <= lrs[50] / 10
    assert all(math.isfinite(x) for x in s)


def test_suggestions_ignore_points_after_nan() -> None:
    lrs, losses = _u_curve()
    spoiled = losses[:50] + [math.nan] + [0.0] * 9
    assert suggestions(lrs, spoiled, beta=0.0).minimum == pytest.approx(lrs[40] / 10)


def test_suggestions_on_too_short_curve_are_nan() -> None:
    s = suggestions(LRS[:7], [2.0, 1.5, 1.0, 0.9, 1.2, 2.0, 3.0])
    assert all(math.isnan(x) for x in s)



# --- rise_range -----------------------------------------------------------------------------


def test_rise_is_where_the_loss_climbs_back_half_way_log_linear() -> None:
    # first 2.0, minimum 1.0 at LRS[3]: half-way is 1.5, between LRS[4] (1.2) and LRS[5] (1.8)
    losses = [2.0, 1.6, 1.1, 1.0, 1.2, 1.8, 3.0]
    rise = rise_lr(LRS[:7], losses)
    assert rise == pytest.approx(LRS[4] * (LRS[5] / LRS[4]) ** 0.5)  # 1.5 is half-way up
    assert LRS[4] < rise < LRS[5]


def test_rise_is_none_when_the_test_stopped_before_the_climb() -> None:
    assert rise_lr(LRS[:6], [2.0, 1.6, 1.1, 1.0, 1.2, 1.4]) is None  # up to 1.4 < 1.5 only
    assert rise_lr(LRS[:6], [2.0, 1.6, 1.1, 1.0, 1.2, math.nan]) is None  # a NaN ends it
    assert rise_lr(LRS[:2], [2.0, 2.0]) is None  # flat: no climb to find


def test_rise_range_is_the_rise_over_the_ratio_and_says_so() -> None:
    losses = [2.0, 1.6, 1.1, 1.0, 1.2, 1.8, 3.0]
    found = rise_range(LRS[:7], losses, min_lr_div=10.0)
    assert found.max_lr == pytest.approx(rise_lr(LRS[:7], losses) / RISE_RATIO)
    assert found.min_lr == pytest.approx(found.max_lr / 10)
    assert "half-way" in found.why and f"{found.max_lr:.3g}" in found.why


FINE = [10 ** (-3 + 0.25 * i) for i in range(9)]  # a factor 10**0.25 = 1.78 apart


def test_the_rise_moves_less_than_the_minimum_along_a_flat_bottom() -> None:
    """Two tests whose flat bottoms put the minimum 3.2x apart climb at the same LR."""
    early = [2.0, 1.2, 1.0, 1.01, 1.02, 2.5]
    late = [2.0, 1.2, 1.02, 1.01, 1.0, 2.5]
    assert decide_range(FINE[:6], late).max_lr / decide_range(FINE[:6], early).max_lr == (
        pytest.approx(10 ** 0.5))
    assert rise_range(FINE[:6], late).max_lr == pytest.approx(
        rise_range(FINE[:6], early).max_lr, rel=0.02)


def test_a_slow_climb_caps_the_reading_at_twice_the_minimum_and_says_so() -> None:
    """Climbing back half-way only far past the minimum (a wide plateau, as on batch-norm nets):
    the reading is at most MAX_OVER_MINIMUM x the minimum's LR. A steeper climb is not capped,
    and the cap is continuous: a climb just past it reads about what one just short of it does."""
    slow = [2.0, 1.2, 1.0, 1.05, 1.1, 1.2, 1.3, 2.5, 3.0]  # minimum at FINE[2], rise past FINE[6]
    rise = rise_lr(FINE, slow)
    assert rise is not None and rise / RISE_RATIO > MAX_OVER_MINIMUM * FINE[2]
    found = rise_range(FINE, slow)
    assert found.max_lr == pytest.approx(MAX_OVER_MINIMUM * FINE[2])
    assert found.min_lr == pytest.approx(found.max_lr / 10)
    assert "slow climb" in found.why and f"{rise:.3g}" in found.why
    assert found.capped and not rise_range(FINE[:7], [2.0, 1.2, 1.0, 1.05, 1.1, 1.8, 2.5]).capped
    steep = [2.0, 1.2, 1.0, 1.05, 1.1, 1.8, 2.5]  # rise between FINE[4] and FINE[5]: 4.4x
    assert rise_range(FINE[:7], steep).max_lr == pytest.approx(
        rise_lr(FINE[:7], steep) / RISE_RATIO)
    assert rise_range(FINE, slow, cap=100.0).max_lr == pytest.approx(rise / RISE_RATIO)
    # continuous: the climb at 5.6x and 5.7x the minimum (just short of and just past the cap,
    # 2 x 2.83 = 5.66x) read 1.98x and 2x the minimum, where a switch would jump
    for times, expected in ((5.6, 5.6 / RISE_RATIO), (5.7, MAX_OVER_MINIMUM)):
        last = (times * 0.01) ** 2 / 0.01  # half-way (1.5) at sqrt(0.01 x last), log-linear
        found = rise_range([0.001, 0.01, last], [2.0, 1.0, 2.0])
        assert found.max_lr == pytest.approx(expected * 0.01)


def test_rise_range_falls_back_to_the_minimum_and_keeps_its_errors() -> None:
    stopped = [2.0, 1.6, 1.1, 1.0, 1.2, 1.4]  # diverged before climbing half-way
    found = rise_range(LRS[:6], stopped)
    assert found.max_lr == decide_range(LRS[:6], stopped).max_lr
    assert "minimum is the reading" in found.why
    with pytest.raises(NoUsableMinimum, match="still falling"):
        rise_range(LRS[:5], [2.0, 1.6, 1.1, 1.0, 0.9])


def test_read_range_follows_the_configured_reading() -> None:
    losses = [2.0, 1.6, 1.1, 1.0, 1.2, 1.8, 3.0]
    curve = RangeCurve(val_lrs=LRS[:7], val_losses=losses)
    assert read_range(curve, "minimum") == decide_range(LRS[:7], losses)
    assert read_range(curve, "rise") == rise_range(LRS[:7], losses)

# --- a real range test ----------------------------------------------------------------------


def _data(n: int, seed: int, noise: float = 0.1) -> TensorData:
    """Two linearly separable classes in 2-D, with a share ``noise`` of labels flipped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    flip = torch.rand(n, generator=g) < noise
    return TensorData(x, torch.where(flip, 1 - y, y))


def _model_and_optimizer() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # One step first, so that the optimizer has state (momentum buffers) to restore.
    data = _data(32, seed=5)
    nn.functional.cross_entropy(model(data.x), data.y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def _clone(state: object) -> object:
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _clone(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_clone(v) for v in state]
    return state


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict)
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list):
        assert isinstance(b, list)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def _check_lengths(curve: RangeCurve) -> None:
    assert len(curve.lrs) == len(curve.train_losses)
    n_val = len(curve.val_steps)
    assert n_val == len(curve.val_lrs) == len(curve.val_losses) == len(curve.val_metrics)


def test_range_test_restores_model_and_optimizer() -> None:
    model, optimizer = _model_and_optimizer()
    model_before = _clone(model.state_dict())
    optim_before = _clone(optimizer.state_dict())
    assert optim_before["state"], "the optimizer should have momentum buffers"
    cfg = LRRangeConfig(num_iters=60, eval_every=5, start_lr=1e-3, end_lr=10.0)
    evals: list[tuple[int, float, float]] = []

    curve = range_test(model, optimizer, _data(256, seed=1), _data(128, seed=2), cfg,
                       batch_size=32, on_eval=lambda *a: evals.append(a),
                       generator=torch.Generator().manual_seed(0))

    _assert_same(model_before, model.state_dict())
    _assert_same(optim_before, optimizer.state_dict())
    assert optimizer.param_groups[0]["lr"] == 0.05

    _check_lengths(curve)
    assert curve.lrs[0] == pytest.approx(1e-3)
    assert all(b > a for a, b in zip(curve.lrs, curve.lrs[1:], strict=False))
    assert curve.val_steps[0] == 0 and curve.val_lrs[0] == pytest.approx(1e-3)
    assert curve.val_steps == sorted(set(curve.val_steps))
    assert all(s % 5 == 0 for s in curve.val_steps[:-1])
    assert len(evals) == len(curve.val_steps)
    assert [e[0] for e in evals] == curve.val_steps
    assert all(0.0 <= a <= 1.0 for a in curve.val_metrics)
    if curve.stop_reason == "end_lr reached":
        assert len(curve.lrs) == 60
        assert curve.lrs[-1] == pytest.approx(10.0)
        assert curve.stop_step is None
    # JSON-friendly round trip.
    assert RangeCurve.from_dict(curve.to_dict()) == curve


def test_range_test_stops_when_the_loss_diverges() -> None:
    model, optimizer = _model_and_optimizer()
    model_before = _clone(model.state_dict())
    cfg = LRRangeConfig(num_iters=60, eval_every=5, start_lr=1e-3, end_lr=1e4)

    curve = range_test(model, optimizer, _data(256, seed=1), _data(128, seed=2), cfg,
                       batch_size=32, generator=torch.Generator().manual_seed(0))

    assert curve.stop_reason != "end_lr reached"
    assert curve.stop_step is not None and curve.stop_step < 60
    assert len(curve.lrs) <= curve.stop_step < 60
    assert curve.lrs[-1] < 1e4
    _check_lengths(curve)
    _assert_same(model_before, model.state_dict())


def test_range_test_restores_state_even_on_error() -> None:
    model, optimizer = _model_and_optimizer()
    model_before = _clone(model.state_dict())
    cfg = LRRangeConfig(num_iters=60, eval_every=5, start_lr=1e-3, end_lr=10.0)

    def boom(step: int, lr: float, loss: float) -> None:
        if step >= 10:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        range_test(model, optimizer, _data(256, seed=1), _data(128, seed=2), cfg, batch_size=32,
                   on_eval=boom, generator=torch.Generator().manual_seed(0))
    _assert_same(model_before, model.state_dict())


def test_range_test_measures_batchnorm_by_the_batch_statistics_unless_told_otherwise() -> None:
    """The default ``norm_stats="batch"`` scores the validation batch by its own statistics; the
    model (running averages included) is restored either way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias.fill_(3.0)  # far from the running averages' start (0, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = _clone(model.state_dict())
    train, val = _data(256, seed=1), _data(128, seed=2)
    curves = {}
    for norm_stats in ("batch", "running"):
        cfg = LRRangeConfig(num_iters=20, eval_every=5, norm_stats=norm_stats)
        curves[norm_stats] = range_test(model, optimizer, train, val, cfg, batch_size=32,
                                        generator=torch.Generator().manual_seed(0))
        _assert_same(before, model.state_dict())
    assert LRRangeConfig().norm_stats == "batch"
    model.eval()
    model[1].train()  # step 0 is before any training: the batch's statistics by hand
    with torch.no_grad():
        by_hand = nn.functional.cross_entropy(model(val.x), val.y).item()
    assert curves["batch"].val_losses[0] == pytest.approx(by_hand, rel=1e-5)
    assert curves["running"].val_losses[0] != pytest.approx(by_hand, rel=1e-2)
