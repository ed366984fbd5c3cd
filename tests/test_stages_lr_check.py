"""tuner.stages.lr_check: short 1cycle runs at multiples of the range test's reading; the lowest
final validation loss picks the max LR the later stages use. And the range test's fallback to
the training loss's valley when the validation loss gives no minimum."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from tuner.config import LRCheckConfig, RefineConfig
from tuner.context import Context, Workload
from tuner.lr_range import NoUsableMinimum, RangeCurve, valley_range
from tuner.stages import lr_check
from tuner.stages.base import HParams, Sizes, Speed
from tuner.stages.grid import grid_seconds
from tuner.stages.lr_check import LRDecision, keep_preferred, noise
from tuner.stages.lr_range import RangeDecision

from .conftest import tiny_config

RANGE = RangeDecision(min_lr=0.01, max_lr=0.1, batch_size=64, why="validation minimum")


def context(splits, cfg=None) -> Context:  # noqa: ANN001
    return Context(cfg or tiny_config(), Workload(splits, lambda: None, torch.device("cpu")),  # type: ignore[arg-type,return-value]
                   optuna.storages.InMemoryStorage(), "x", {"lr_range": RANGE})


def fake_runs(losses: dict[float, float], seen: list[tuple[HParams, int, int]]):  # noqa: ANN201
    """A ``Context.repeated_run`` that trains nothing: the loss by factor of the reading."""

    def repeated_run(_ctx, trial, hp, *, repeats, epochs):  # noqa: ANN001, ANN202
        seen.append((hp, repeats, epochs))
        trial.set_user_attr("val_metrics", [0.5] * repeats)
        return losses[round(hp.max_lr / RANGE.max_lr, 3)]

    return repeated_run


def test_runs_each_factor_of_the_reading_and_keeps_the_lowest_loss(
        mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    cfg = tiny_config(lr_check=LRCheckConfig(factors=(1.0, 1.41, 2.0), epochs=4, repeats=2))
    seen: list[tuple[HParams, int, int]] = []
    monkeypatch.setattr(Context, "repeated_run", fake_runs({1.0: 0.5, 1.41: 0.4, 2.0: 0.45}, seen))
    ctx = context(mnist1d_splits, cfg)
    study = optuna.create_study(storage=ctx.storage, study_name="x/lr_check")
    decision = lr_check.STAGE.run(ctx, study)
    assert isinstance(decision, LRDecision)
    assert decision.max_lr == pytest.approx(0.141) and decision.min_lr == pytest.approx(0.0141)
    assert (decision.factor, decision.reading, decision.batch_size) == (
        pytest.approx(1.41), 0.1, 64)
    assert decision.why.startswith("x1.41 the range test's 0.1: max LR 0.141 gave the lowest")
    assert sorted(round(hp.max_lr, 4) for hp, _, _ in seen) == [0.1, 0.141, 0.2]
    for hp, repeats, epochs in seen:
        assert hp.min_lr == pytest.approx(hp.max_lr / cfg.lr_range.min_lr_div)
        assert (hp.max_momentum, hp.min_momentum) == (0.95, cfg.momentum.min_momentum)
        assert hp.weight_decay == ctx.config.momentum.weight_decay
        assert (hp.batch_size, repeats, epochs) == (cfg.train.batch_size, 2, 4)
    assert sorted(t.params["max_lr"] for t in study.trials) == pytest.approx([0.1, 0.141, 0.2])


def test_one_factor_is_the_reading_without_runs(mnist1d_splits,  # noqa: ANN001
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Context, "repeated_run", lambda *a, **k: pytest.fail("no runs"))
    ctx = context(mnist1d_splits, tiny_config(lr_check=LRCheckConfig(factors=(1.0,))))
    study = optuna.create_study(storage=ctx.storage, study_name="x/lr_check")
    decision = lr_check.STAGE.run(ctx, study)
    assert (decision.min_lr, decision.max_lr, decision.factor) == (0.01, 0.1, 1.0)
    assert "no runs" in decision.why and not study.trials


def test_a_check_the_refinement_replaces_starts_it_at_the_preferred_factor(
        mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(Context, "repeated_run", lambda *a, **k: pytest.fail("no runs"))
    cfg = tiny_config(lr_check=LRCheckConfig(factors=(0.71, 1.0, 1.41, 2.0), prefer=1.41),
                      refine=RefineConfig(total_s=60.0, replaces=("lr_check",)))
    ctx = context(mnist1d_splits, cfg)
    study = optuna.create_study(storage=ctx.storage, study_name="x/lr_check")
    decision = lr_check.STAGE.run(ctx, study)
    assert (decision.max_lr, decision.factor) == (pytest.approx(0.141), pytest.approx(1.41))
    assert decision.min_lr == pytest.approx(0.0141)
    assert "no runs: the refinement searches across 0.071, 0.1, 0.141, 0.2" in decision.why
    assert not study.trials
    one_seed = dataclasses.replace(cfg.lr_check, repeats=1)  # the refinement's runs of them
    speed, sizes = Speed({64: 0.003}, 3e-6), Sizes(3200, 800)
    assert lr_check.STAGE.cost(cfg, speed, sizes) == pytest.approx(
        grid_seconds(cfg, one_seed, speed, sizes))


def test_a_capped_reading_prefers_x1(mnist1d_splits,  # noqa: ANN001
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A reading at the rise reading's cap (2x the minimum) is kept as it is within the noise,
    not x1.41 of it; another factor still wins by more than the noise; the refinement that
    replaces the check starts at x1 of it; without x1 in the factors, lr_check.prefer."""
    capped = dataclasses.replace(RANGE, capped=True)
    factors = LRCheckConfig(factors=(0.71, 1.0, 1.41, 2.0), epochs=4, repeats=2)

    def check(losses: dict[float, float], cfg=None) -> LRDecision:  # noqa: ANN001
        monkeypatch.setattr(Context, "repeated_run", fake_runs(losses, []))
        ctx = context(mnist1d_splits, cfg or tiny_config(lr_check=factors))
        ctx.decisions["lr_range"] = capped
        study = optuna.create_study(storage=ctx.storage)
        return lr_check.STAGE.run(ctx, study)

    tie = check({0.71: 1.02, 1.0: 1.03, 1.41: 1.0, 2.0: 1.01})
    assert tie.max_lr == pytest.approx(0.1) and tie.factor == 1.0
    assert "x1 preferred, not lr_check.prefer = x1.41: the reading is capped at 2x" in tie.why
    won = check({0.71: 2.0, 1.0: 2.0, 1.41: 1.0, 2.0: 1.5})
    assert won.max_lr == pytest.approx(0.141)
    replaced = tiny_config(lr_check=factors, refine=RefineConfig(total_s=60.0,
                                                                 replaces=("lr_check",)))
    assert check({}, replaced).max_lr == pytest.approx(0.1)
    no_x1 = tiny_config(lr_check=LRCheckConfig(factors=(0.71, 1.41, 2.0), epochs=4, repeats=2))
    assert check({0.71: 1.02, 1.41: 1.0, 2.0: 1.01}, no_x1).max_lr == pytest.approx(0.141)


def test_cost_is_a_grid_of_the_factors_or_nothing() -> None:
    speed, sizes = Speed({64: 0.003}, 3e-6), Sizes(3200, 800)
    cfg = tiny_config(lr_check=LRCheckConfig(factors=(1.0, 2.0), prefer=1.0, epochs=5, repeats=2))
    assert lr_check.STAGE.cost(cfg, speed, sizes) == pytest.approx(
        grid_seconds(cfg, cfg.lr_check, speed, sizes))
    assert lr_check.STAGE.cost(cfg, speed, sizes) == pytest.approx(
        2 * 2 * 5 * (50 * 0.003 + 800 * 3e-6))
    one = tiny_config(lr_check=LRCheckConfig(factors=(1.0,)))
    assert lr_check.STAGE.cost(one, speed, sizes) == 0.0


def trials(rows: dict[float, list[float] | str],
           metrics: dict[float, list[float]] | None = None) -> list[FrozenTrial]:
    """Finished check trials: per max LR its seeds' final losses, or "diverged"; and their
    final validation metrics (none when not given)."""
    out = []
    for lr, losses in rows.items():
        attrs = {"val_losses": losses}
        if metrics is not None:
            attrs["val_metrics"] = metrics[lr]
        dist = {"max_lr": CategoricalDistribution(tuple(rows))}
        if isinstance(losses, str):
            out.append(create_trial(state=TrialState.PRUNED, params={"max_lr": lr},
                                    distributions=dist, user_attrs={"diverged": "nan"}))
        else:
            out.append(create_trial(value=sum(losses) / len(losses), params={"max_lr": lr},
                                    distributions=dist, user_attrs=attrs))
    return out


def test_noise_is_the_standard_error_of_the_paired_differences() -> None:
    # differences 1, 2, 3: sd 1, over sqrt(3)
    assert noise([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(1 / math.sqrt(3))
    # a seed that is bad at every LR moves both alike: no noise in the comparison
    assert noise([0.3, 0.5, 2.0], [0.2, 0.4, 1.9]) == pytest.approx(0.0)
    assert noise([1.0], [2.0]) == 0.0


def test_a_win_on_every_seed_counts_though_one_seed_is_far_off() -> None:
    # a GRU's check (MNIST-1D): x2 lowest on every seed, its third seed bad at every LR
    choice = keep_preferred(trials({0.0407: [0.646, 1.165, 2.306], 0.0574: [0.404, 0.776, 1.958],
                                    0.0814: [0.284, 0.774, 1.605]}), 0.0574, 0.1)
    assert choice.value == 0.0814 and "more than the noise" in choice.why


def test_the_preferred_factor_is_kept_within_the_noise() -> None:
    # x2 wins on the mean, but one of its seeds is as bad as x1.41's: within the noise
    choice = keep_preferred(trials({0.1: [0.30, 0.31, 0.29], 0.141: [0.25, 0.26, 0.24],
                                    0.2: [0.15, 0.24, 0.27]}), 0.141, 0.05)
    assert choice.value == 0.141
    assert choice.why.startswith("max LR 0.141 kept: 0.2's loss 0.22 is within the noise")


def test_another_factor_wins_by_more_than_the_noise() -> None:
    choice = keep_preferred(trials({0.1: [0.30, 0.31], 0.141: [0.25, 0.26],
                                    0.2: [0.20, 0.21]}), 0.141, 0.05)
    assert choice.value == 0.2 and "more than the noise" in choice.why


def test_a_lower_loss_with_a_lower_accuracy_does_not_move_the_check() -> None:
    # an MLP 256x3 on MNIST-1D that overfits: x2's validation loss lower on every seed, its
    # accuracy lower too (and 1.3 points lower on test)
    losses = {0.122: [1.33, 1.30, 1.29], 0.173: [1.20, 1.15, 1.16]}
    lower = keep_preferred(trials(losses, {0.122: [0.76, 0.75, 0.77], 0.173: [0.74, 0.75, 0.74]}),
                           0.122, 0.05)
    assert lower.value == 0.122
    assert "validation metric was lower (0.7433 against 0.76)" in lower.why
    assert "disagree" in lower.why
    # ... with an accuracy as high or higher, the loss decides
    agree = trials(losses, {0.122: [0.74, 0.75, 0.74], 0.173: [0.76, 0.75, 0.77]})
    assert keep_preferred(agree, 0.122, 0.05).value == 0.173
    # ... and without a metric (a regression) too
    assert keep_preferred(trials(losses, {0.122: [None] * 3, 0.173: [None] * 3}), 0.122,
                          0.05).value == 0.173


def test_with_one_seed_the_margin_is_the_noise() -> None:
    rows: dict[float, list[float] | str] = {0.1: [0.30], 0.141: [0.25], 0.2: [0.24]}
    assert keep_preferred(trials(rows), 0.141, 0.05).value == 0.141  # 4% < 5%
    assert keep_preferred(trials(rows), 0.141, 0.03).value == 0.2


def test_of_factors_that_tie_below_the_preferred_the_nearest_is_taken() -> None:
    # one seed (MNIST-1D CNN at a 60 s budget): x0.71 and x1 both beat x1.41 by far, and differ
    # from each other by less than the margin: x1, nearer x1.41, not the lowest x0.71
    rows: dict[float, list[float] | str] = {0.053: [0.22], 0.075: [0.23], 0.106: [0.30],
                                            0.15: [0.33]}
    choice = keep_preferred(trials(rows), 0.106, 0.1)
    assert choice.value == 0.075
    assert "0.075 (0.23) is within the noise of that and nearer 0.106" in choice.why
    # ... but one that beats the others by more than the noise is taken as before
    rows[0.053] = [0.15]
    assert keep_preferred(trials(rows), 0.106, 0.1).value == 0.053


def test_a_diverged_preferred_factor_gives_way() -> None:
    choice = keep_preferred(trials({0.1: [0.30, 0.31], 0.141: "diverged"}), 0.141, 0.05)
    assert choice.value == 0.1


def test_prefer_must_be_one_of_the_factors() -> None:
    with pytest.raises(ValueError, match=r"prefer must be one of factors=\[1.0, 2.0\], but got "
                                         r"prefer=1.41"):
        LRCheckConfig(factors=(1.0, 2.0))
    assert LRCheckConfig(factors=(1.0,)).factors == (1.0,)  # one factor: nothing to prefer


def test_factors_must_be_positive_and_given() -> None:
    with pytest.raises(ValueError, match=r"lr_check.factors\[1\] must be > 0"):
        LRCheckConfig(factors=(1.0, 0.0))
    with pytest.raises(ValueError, match="lr_check.factors must not be empty"):
        LRCheckConfig(factors=())


def diverged_curve() -> RangeCurve:
    return RangeCurve(lrs=[0.01, 0.1, 1.0], train_losses=[2.0, 1.0, 9.0], val_steps=[0, 1, 2],
                      val_lrs=[0.01, 0.1, 1.0], val_losses=[2.0, 2.0, 2.0],
                      stop_reason="smoothed training loss 9 exceeded 4x its minimum",
                      stop_step=2)


def test_without_a_validation_minimum_a_diverged_test_reads_the_valley() -> None:
    found = valley_range(diverged_curve(), 0.04, NoUsableMinimum("flat"), 10.0)
    assert (found.min_lr, found.max_lr) == pytest.approx((0.004, 0.04))
    assert "no validation minimum to read (flat)" in found.why and "valley" in found.why


@pytest.mark.parametrize("valley", [float("nan"), 0.0])
def test_no_valley_keeps_the_original_error(valley: float) -> None:
    with pytest.raises(NoUsableMinimum, match="flat"):
        valley_range(diverged_curve(), valley, NoUsableMinimum("flat"))


def test_a_test_that_did_not_diverge_keeps_the_original_error() -> None:
    curve = diverged_curve()
    curve.stop_step, curve.stop_reason = None, "end_lr reached"
    with pytest.raises(NoUsableMinimum, match="raise lr_range.end_lr"):
        valley_range(curve, 0.04, NoUsableMinimum("still falling; raise lr_range.end_lr"))


def test_the_check_is_not_pruned_step_by_step() -> None:
    """A larger max LR is behind at the same epoch until it anneals: no pruner compares the
    runs (the pipeline gives a stage without ``reports`` optuna's NopPruner)."""
    assert lr_check.STAGE.reports is None
