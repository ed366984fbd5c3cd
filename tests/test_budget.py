"""tuner.budget: stage costs from measured speeds, and a study cut down to fit a budget."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

import tuner
from tuner import budget
from tuner.config import BatchSizeConfig, ConfigError, RefineConfig, StudyConfig
from tuner.context import Workload
from tuner.models import build_model
from tuner.stages import batch_size, momentum, weight_decay
from tuner.stages.base import Sizes, Speed
from tuner.stages.grid import grid_seconds
from tuner.stages.lr_range import range_test_seconds
from tuner.stages.refine import RefineDecision
from tuner.storage import open_storage, stored_config

from .conftest import tiny_config

# 3 ms a step at every size, 3 µs an evaluated sample: about this machine's MNIST-1D CNN.
SPEED = Speed({bs: 0.003 for bs in (32, 64, 128, 256, 512)}, 3e-6)
SIZES = Sizes(n_train=3200, n_val=800)


def test_grid_seconds_are_runs_times_epochs_times_an_epoch() -> None:
    cfg = StudyConfig()
    epoch = 100 * 0.003 + 800 * 3e-6  # 3200 / 32 steps, then one pass over the validation set
    section = dataclasses.replace(cfg.momentum, values=(0.99, 0.97, 0.95, 0.9), repeats=2,
                                  epochs=30)
    assert grid_seconds(cfg, section, SPEED, SIZES) == pytest.approx(4 * 2 * 30 * epoch)
    # the grid stages ask it for their own sections: 4 values x 2 seeds x 30 epochs by default
    assert momentum.STAGE.cost(cfg, SPEED, SIZES) == pytest.approx(4 * 2 * 30 * epoch)
    assert weight_decay.STAGE.cost(cfg, SPEED, SIZES) == pytest.approx(4 * 2 * 30 * epoch)


def test_range_test_seconds_count_every_repeat_and_evaluation() -> None:
    cfg = StudyConfig()  # 3 repeats, an evaluation of 1000 samples every 10 steps
    expected = 3 * (1000 * 0.003 + 100 * 1000 * 3e-6)
    assert range_test_seconds(cfg, SPEED, 32, 1000) == pytest.approx(expected)


def test_batch_size_stage_reuses_stage_one_range_test_for_the_reference_size() -> None:
    cfg = StudyConfig()
    # the default budget per size: a final training (40 epochs) at the reference size
    size_budget = 40 * 100 * 0.003
    # ... its evaluations and its throughput measurements (9 rounds of 0.1 s)
    per_size = size_budget + 10 * 800 * 3e-6 + 9 * 0.1
    tests = 4 * range_test_seconds(cfg, SPEED, 64, 1000)  # not for 32, the reference size
    assert batch_size.cost(cfg, SPEED, SIZES) == pytest.approx(5 * per_size + tests)
    assert batch_size.STAGE.cost is batch_size.cost
    # ... the same as that budget configured
    given = cfg.replace(batch_size=dataclasses.replace(cfg.batch_size, budget_s=size_budget))
    assert batch_size.cost(given, SPEED, SIZES) == pytest.approx(5 * per_size + tests)


def test_a_reference_size_alone_costs_nothing() -> None:
    cfg = StudyConfig(batch_size=BatchSizeConfig(values=(32,)))
    assert batch_size.cost(cfg, SPEED, SIZES) == 0.0


def test_stage_seconds_asks_each_planned_stage_for_its_cost() -> None:
    cfg = StudyConfig().resolved()
    seconds = budget.stage_seconds(cfg, SPEED, SIZES)
    assert list(seconds) == ["lr_range", "lr_check", "momentum", "weight_decay", "lr_recheck",
                             "batch_size"]
    assert seconds["lr_range"] == pytest.approx(range_test_seconds(cfg, SPEED, 32, 1000))
    assert seconds["lr_check"] == pytest.approx(grid_seconds(cfg, cfg.lr_check, SPEED, SIZES))
    assert seconds["momentum"] == pytest.approx(grid_seconds(cfg, cfg.momentum, SPEED, SIZES))
    assert seconds["weight_decay"] == pytest.approx(
        grid_seconds(cfg, cfg.weight_decay, SPEED, SIZES))
    assert seconds["lr_recheck"] == seconds["lr_check"]  # an upper bound: it may run nothing
    assert seconds["batch_size"] == pytest.approx(batch_size.cost(cfg, SPEED, SIZES))


def test_a_large_budget_cuts_nothing_and_refines_in_the_rest() -> None:
    cfg = StudyConfig()
    plan = budget.plan(cfg, 1000.0, SPEED, SIZES)
    assert plan.applied == []
    assert plan.fits
    # the planned study is stored with the run: the optimizer's weight decays filled in
    assert plan.config == cfg.resolved().replace(refine=RefineConfig(total_s=1000.0))


def test_cuts_are_applied_in_order_until_the_stages_fit() -> None:
    cfg = StudyConfig()
    cut = [c.apply for c in budget.cuts()]
    two_cuts = sum(budget.stage_seconds(cut[1](cut[0](cfg.resolved())), SPEED, SIZES).values())
    seconds = two_cuts / budget.PLAN_SHARE
    plan = budget.plan(cfg, seconds, SPEED, SIZES)
    assert plan.fits
    # planned with headroom: the machine's speed may change after it was measured
    assert sum(plan.estimated_s.values()) <= budget.PLAN_SHARE * seconds
    order = [cut.name for cut in budget.cuts()]
    assert plan.applied == order[:2]
    assert plan.config.lr_range.repeats == 2  # the first cut
    # then the paper's last stage, the costliest: fewer batch sizes, the nearest kept
    assert plan.applied[1] == "batch sizes within 4x of the reference"
    assert plan.config.batch_size.values == (32, 64, 128)
    # ... while the LR check and the grids keep their runs and seeds
    assert plan.config.refine.replaces == ()
    assert plan.config.lr_check == StudyConfig().lr_check
    assert plan.config.momentum == StudyConfig().resolved().momentum
    assert plan.config.refine.total_s == pytest.approx(seconds)
    # the cut-down study is a valid study whose estimate is the one reported
    assert budget.stage_seconds(plan.config, SPEED, SIZES) == plan.estimated_s


def test_the_lr_check_goes_to_the_refinement_with_the_grids() -> None:
    cfg = StudyConfig(refine=RefineConfig(total_s=60.0))
    cut = {c.name: c.apply for c in budget.cuts()}
    name = ("the LR check, momentum and weight decay left to the refinement (no check or grid "
            "runs)")
    order = [c.name for c in budget.cuts()]
    # after every batch-size cut: the reference alone by then
    assert order.index(name) > order.index("the reference batch size only (no batch-size runs)")
    smaller = cut[name](cfg)
    assert smaller.refine.replaces == ("lr_check", "momentum", "weight_decay")
    # ... planned as one run per value: the refinement's search needs those at least
    seconds = budget.stage_seconds(smaller, SPEED, SIZES)
    one_seed = grid_seconds(cfg, dataclasses.replace(cfg.momentum, repeats=1), SPEED, SIZES)
    assert seconds["momentum"] == seconds["weight_decay"] == pytest.approx(one_seed)
    # the check at the chosen weight decay (stage 3b) has nothing to re-check
    assert seconds["lr_recheck"] == 0.0


def test_a_budget_too_small_cuts_everything_and_says_it_does_not_fit() -> None:
    plan = budget.plan(StudyConfig(), 1.0, SPEED, SIZES)
    assert not plan.fits
    order = [cut.name for cut in budget.cuts()]
    assert plan.applied == [c.name for c in budget.cuts() if not c.last_resort]
    assert plan.config.refine.replaces == ("lr_check", "momentum", "weight_decay")
    # one seed's reading moves 2.9x: the range test keeps two when one would not fit either
    assert plan.config.lr_range.repeats == 2
    assert order[-1] == "range tests from 1 seed"
    # no run is shortened: the refinement's runs are as long as the grids' would have been
    assert plan.config.momentum.epochs == StudyConfig().momentum.epochs
    assert plan.config.batch_size.values == (32,)  # the reference alone: no batch-size runs
    assert plan.estimated_s["batch_size"] == 0.0


def test_the_one_seed_range_test_only_where_it_makes_the_plan_fit() -> None:
    cfg = StudyConfig()
    smallest = budget.plan(cfg, 1.0, SPEED, SIZES).config
    two_seeds = sum(budget.stage_seconds(smallest, SPEED, SIZES).values())
    one_seed = smallest.replace(lr_range=dataclasses.replace(smallest.lr_range, repeats=1))
    one = sum(budget.stage_seconds(one_seed, SPEED, SIZES).values())
    assert one < two_seeds
    # a budget that fits with one seed and not with two: the last cut is applied
    fitting = budget.plan(cfg, (one + two_seeds) / 2 / budget.PLAN_SHARE, SPEED, SIZES)
    assert fitting.fits and fitting.config.lr_range.repeats == 1
    assert fitting.applied[-1] == "range tests from 1 seed"


def test_fewer_batch_sizes_keep_those_nearest_the_reference() -> None:
    cfg = StudyConfig()
    cut = {c.name: c.apply for c in budget.cuts()}
    assert cut["batch sizes within 4x of the reference"](cfg).batch_size.values == (32, 64, 128)
    assert cut["batch sizes within 2x of the reference"](cfg).batch_size.values == (32, 64)
    # the comparison stays at a final training's time: the budget per size is not cut
    assert cut["batch sizes within 2x of the reference"](cfg).batch_size.budget_s == 0.0


@pytest.mark.parametrize("seconds", [0.0, -5.0, math.inf, math.nan])
def test_bad_budget_is_refused_with_the_value(seconds: float) -> None:
    with pytest.raises(ConfigError, match="budget_s="):
        budget.plan(StudyConfig(), seconds, SPEED, SIZES)


def test_measured_speed_covers_each_size_that_fits(mnist1d_splits) -> None:  # noqa: ANN001
    workload = Workload(mnist1d_splits, lambda: build_model("mnist1d_cnn", 10),
                        torch.device("cpu"))
    speed = budget.measure_speed(workload, [64, 32, 100_000], eval_batch_size=1024)
    assert sorted(speed.step_s) == [32, 64]  # 100000 > the training samples: skipped
    assert all(0 < s < 1 for s in speed.step_s.values())
    assert 0 < speed.eval_sample_s < speed.step_s[32]


def test_run_with_a_budget_stores_the_fitted_study_and_resumes_with_it(
        tmp_path: Path, mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    url = f"sqlite:///{tmp_path}/t.db"
    cfg = tiny_config()
    result = tuner.run(cfg, storage=url, splits=mnist1d_splits, budget_s=5.0)
    stored = stored_config(open_storage(url), result.run)
    assert stored["refine"]["total_s"] == 5.0
    # the refinement ran (or said why not) in what was left
    assert isinstance(result.decisions["refine"], RefineDecision)
    assert result.decisions["refine"].why

    def no_planning(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("an existing run was fitted again")

    monkeypatch.setattr("tuner.pipeline.fit_to_budget", no_planning)
    again = tuner.run(cfg, storage=url, splits=mnist1d_splits, budget_s=5.0)
    assert again.decisions == result.decisions


def test_cli_refuses_a_bad_budget_before_storing_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tuner.cli import main

    db = tmp_path / "t.db"
    assert main(["run", "studies/mnist1d_cnn.toml", "--storage", f"sqlite:///{db}",
                 "--budget", "0"]) == 2
    err = capsys.readouterr().err
    assert "budget_s=0.0" in err
    assert not db.exists()


def spy_on_speed_measurement(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Record the models ``Workload.new_model`` made, the generators ``Workload.generator``
    made, and what ``measure_throughput`` and ``evaluate`` were given."""
    import tuner.context
    import tuner.train

    seen: dict[str, list] = {"models": [], "generators": [], "throughput": [], "evaluate": []}
    new_model, generator = Workload.new_model, Workload.generator
    throughput, evaluate = tuner.context.measure_throughput, tuner.train.evaluate

    def spy_new_model(self: Workload, seed: int):  # noqa: ANN202
        seen["models"].append(model := new_model(self, seed))
        return model

    def spy_generator(self: Workload, seed: int) -> torch.Generator:
        seen["generators"].append(g := generator(self, seed))
        return g

    def spy_throughput(model, optimizer, data, batch_size, **kw):  # noqa: ANN001, ANN003, ANN202
        seen["throughput"].append((model, data, batch_size, kw.get("generator")))
        return throughput(model, optimizer, data, batch_size, **kw)

    def spy_evaluate(model, data, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen["evaluate"].append((model, data))
        return evaluate(model, data, *a, **kw)

    monkeypatch.setattr(Workload, "new_model", spy_new_model)
    monkeypatch.setattr(Workload, "generator", spy_generator)
    monkeypatch.setattr(tuner.context, "measure_throughput", spy_throughput)
    monkeypatch.setattr(tuner.train, "evaluate", spy_evaluate)
    return seen


def check_measured_as_the_stages_train(seen: dict[str, list], workload: Workload,
                                       sizes: list[int]) -> None:
    device = workload.splits.train.device
    assert [bs for _m, _d, bs, _g in seen["throughput"]] == sizes
    for model, data, _bs, gen in seen["throughput"]:
        assert data is workload.splits.train
        assert gen is not None and any(gen is g for g in seen["generators"])
        assert gen.device == data.device == device  # randperm on the data's device
        assert any(model is m for m in seen["models"])  # made by Workload.new_model
        assert {p.device for p in model.parameters()} == {device}
    assert seen["evaluate"]
    for model, data in seen["evaluate"]:
        assert data is workload.splits.val
        assert any(model is m for m in seen["models"])
        assert {p.device for p in model.parameters()} == {device}


def test_speed_is_measured_with_the_stages_models_and_generators(
        mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    workload = Workload(mnist1d_splits, lambda: build_model("mnist1d_cnn", 10),
                        torch.device("cpu"))
    seen = spy_on_speed_measurement(monkeypatch)
    speed = budget.measure_speed(workload, [64, 32], eval_batch_size=1024, seed=3)
    assert sorted(speed.step_s) == [32, 64]
    check_measured_as_the_stages_train(seen, workload, [32, 64] * budget.SPEED_ROUNDS)


def test_a_stall_in_one_round_does_not_move_the_speed(
        mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    workload = Workload(mnist1d_splits, lambda: build_model("mnist1d_cnn", 10),
                        torch.device("cpu"))
    # steps/s by call: the machine stalls (4x slower) during the second round's 32, and batch
    # size 512 is slow enough (8 steps >= ONE_ROUND_S) to be measured once.
    rates = iter([1000.0, 10.0, 250.0, 1000.0, 1000.0])
    calls: list[int] = []

    def fake(self: Workload, bs: int, **kw: object) -> float:  # noqa: ARG001
        calls.append(bs)
        return next(rates)

    monkeypatch.setattr(Workload, "steps_per_second", fake)
    speed = budget.measure_speed(workload, [32, 512], eval_batch_size=1024)
    assert calls == [32, 512, 32, 32]
    assert speed.step_s == {32: pytest.approx(1 / 1000), 512: pytest.approx(1 / 10)}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_measure_speed_with_the_data_on_cuda(mnist1d_splits,  # noqa: ANN001
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    workload = Workload(mnist1d_splits.to(cuda), lambda: build_model("mnist1d_cnn", 10), cuda)
    assert workload.splits.train.device.type == "cuda"
    seen = spy_on_speed_measurement(monkeypatch)
    speed = budget.measure_speed(workload, [32, 64, 100_000], eval_batch_size=1024)
    assert sorted(speed.step_s) == [32, 64]
    assert all(0 < s < 1 for s in speed.step_s.values())
    assert 0 < speed.eval_sample_s < speed.step_s[32]
    check_measured_as_the_stages_train(seen, workload, [32, 64] * budget.SPEED_ROUNDS)
    assert all(g.device.type == "cuda" for g in seen["generators"])
