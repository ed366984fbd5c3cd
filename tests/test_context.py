"""tuner.context: the workload (data, models and generators on one device, loaded once) and the
training operations of the run context."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch

import tuner.context
from tuner.config import TrainConfig
from tuner.context import Context, Workload, load_workload
from tuner.data import Splits
from tuner.models import build_model
from tuner.stages import momentum, refine
from tuner.stages.base import HParams
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.momentum import MomentumDecision
from tuner.storage import open_storage

from .conftest import tiny_config


def cnn() -> torch.nn.Module:
    return build_model("mnist1d_cnn", 10)


def test_generator_is_on_the_data_device(mnist1d_splits: Splits) -> None:
    workload = Workload(mnist1d_splits, cnn, torch.device("cpu"))
    generator = workload.generator(7)
    assert generator.device == mnist1d_splits.train.device
    # seeded: the same seed gives the same shuffling
    assert torch.equal(torch.randperm(100, generator=generator),
                       torch.randperm(100, generator=workload.generator(7)))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generator_is_on_the_data_device_on_cuda(mnist1d_splits: Splits) -> None:
    cuda = torch.device("cuda")
    workload = Workload(mnist1d_splits.to(cuda), cnn, cuda)
    generator = workload.generator(0)
    assert generator.device == workload.splits.train.device
    assert generator.device.type == "cuda"
    torch.randperm(len(workload.splits.train), device=generator.device, generator=generator)
    model = workload.new_model(0)
    assert {p.device.type for p in model.parameters()} == {"cuda"}


def test_new_model_is_seeded_and_on_the_device(mnist1d_splits: Splits) -> None:
    workload = Workload(mnist1d_splits, cnn, torch.device("cpu"))
    a, b, c = workload.new_model(1), workload.new_model(1), workload.new_model(2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(),
                                                      strict=True))
    assert {p.device for p in a.parameters()} == {torch.device("cpu")}


@pytest.fixture
def threads() -> object:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def count_reads(monkeypatch: pytest.MonkeyPatch, splits: Splits) -> list[object]:
    """Make ``load_splits`` (as ``tuner.context`` calls it) return ``splits``, counting calls."""
    reads: list[object] = []

    def load_splits(cfg, device="cpu"):  # noqa: ANN001, ANN202
        reads.append((cfg, device))
        return splits.to(device)

    monkeypatch.setattr(tuner.context, "load_splits", load_splits)
    return reads


@pytest.mark.usefixtures("threads")
def test_load_workload_sets_threads_and_device_and_reads_the_data_once(
        mnist1d_splits: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = count_reads(monkeypatch, mnist1d_splits)
    set_threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads",
                        lambda n, real=torch.set_num_threads: (set_threads.append(n), real(n)))
    cfg = tiny_config(train=TrainConfig(batch_size=64, threads=1, device="cpu"))
    workload = load_workload(cfg)
    assert set_threads == [1] and torch.get_num_threads() == 1
    assert workload.device == torch.device("cpu")
    assert len(reads) == 1 and reads[0][0] == cfg.data
    assert workload.splits.train.device == torch.device("cpu")
    # the model factory is the configured model for the data's classes; making models and
    # generators reads nothing again
    model = workload.new_model(0)
    assert type(model) is type(cnn())
    workload.generator(0)
    workload.new_model(1)
    assert len(reads) == 1


@pytest.mark.usefixtures("threads")
def test_load_workload_keeps_torch_threads_when_not_set(
        mnist1d_splits: Splits, monkeypatch: pytest.MonkeyPatch) -> None:
    count_reads(monkeypatch, mnist1d_splits)
    set_threads: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", set_threads.append)
    load_workload(tiny_config(train=TrainConfig(batch_size=64, threads=0, device="cpu")))
    assert set_threads == []


def test_load_workload_uses_given_splits_and_model(mnist1d_splits: Splits,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    reads = count_reads(monkeypatch, mnist1d_splits)
    cfg = tiny_config(train=TrainConfig(batch_size=64, device="cpu"))
    workload = load_workload(cfg, model_fn=cnn, splits=mnist1d_splits)
    assert reads == []
    assert workload.model_fn is cnn
    assert workload.splits.train.device == torch.device("cpu")


def test_a_budgeted_run_reads_the_data_once(tmp_path: Path, mnist1d_splits: Splits,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Fitting to a budget measures speed on the workload the stages will use."""
    from tuner.pipeline import budgeted_config

    reads = count_reads(monkeypatch, mnist1d_splits)
    cfg = tiny_config(train=TrainConfig(batch_size=64, threads=1, device="cpu"))
    before = torch.get_num_threads()
    try:
        fitted = budgeted_config(cfg, 60.0, storage=f"sqlite:///{tmp_path}/t.db")
    finally:
        torch.set_num_threads(before)
    assert fitted.refine.total_s == 60.0
    assert len(reads) == 1


def test_context_decision_finds_the_typed_record() -> None:
    lr = RangeDecision(min_lr=0.02, max_lr=0.2, batch_size=64, why="test")
    checked = LRDecision(min_lr=0.0282, max_lr=0.282, factor=1.41, reading=0.2, batch_size=64,
                         why="check")
    ctx = Context(tiny_config(), None, None, "x",  # type: ignore[arg-type]
                  {"lr_range": lr, "lr_check": checked})
    assert ctx.decision(RangeDecision) is lr  # the reading, and what the later stages use
    assert ctx.decision(LRDecision) is checked
    with pytest.raises(LookupError, match="MomentumDecision"):
        ctx.decision(MomentumDecision)


def test_runs_that_differ_in_max_lr_are_compared_from_the_end_of_the_cycle() -> None:
    """Grid runs at one max LR are pruned from pruner.warmup_fraction (70%) of their reports;
    the refinement's, whose max LRs differ, only from schedule.cycle_fraction (90%), where
    every run is down at its min LR."""
    ctx = Context(tiny_config(), None, None, "x")  # type: ignore[arg-type]
    assert ctx.pruner(30)._n_warmup_steps == 21
    assert ctx.pruner(30, varies_max_lr=True)._n_warmup_steps == 27
    assert refine.STAGE.varies_max_lr and not momentum.STAGE.varies_max_lr


def test_repeated_run_averages_seeds_and_reports_the_first(tmp_path: Path,
                                                           mnist1d_splits: Splits) -> None:
    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    ctx = Context(tiny_config(), Workload(mnist1d_splits, cnn, torch.device("cpu")), storage, "x")
    study = optuna.create_study(storage=storage, study_name="x/momentum")
    trial = study.ask()
    hp = HParams(0.01, 0.1, 0.95, 0.85, 1e-4, 64)
    value = ctx.repeated_run(trial, hp, repeats=2, epochs=2)
    study.tell(trial, value)
    (done,) = study.get_trials()
    losses = done.user_attrs["val_losses"]
    assert len(losses) == 2 and losses[0] != losses[1]  # two seeds, two different runs
    assert value == pytest.approx(sum(losses) / 2)
    assert sorted(done.intermediate_values) == [1, 2]  # one report per epoch, first seed only
    assert done.intermediate_values[2] == pytest.approx(losses[0])
    assert len(done.user_attrs["history"]) == 2
    assert len(done.user_attrs["val_metrics"]) == 2
