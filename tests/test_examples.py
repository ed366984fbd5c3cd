"""The examples in ``examples/`` (regression, multi-label, dict batches with a step function):
each runs through its study file and through ``tuner.tune``, and each tuned result beats an
untuned run of the same budget: the same model and data, the optimizer's PyTorch defaults at a
constant LR, for as many optimizer steps as the final training, scored the same way.

The tuning stages are cut to seconds (one short range test, two max LRs checked, two momentum
values, two weight decays, one or two batch sizes, one final seed); the final training is as
long as the study file says, so the budget compared is the one a user of the example gets.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import tuner
import tuner.report
from tuner.cli import summary_table
from tuner.config import WEIGHT_DECAY_DEFAULTS, StudyConfig
from tuner.context import Workload, load_workload
from tuner.data import concat
from tuner.references import check_references
from tuner.report_data import find_run, load_run
from tuner.schedules import LRMomentum
from tuner.stages.base import epoch_steps
from tuner.train import Evaluation, fit

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# example -> the batch sizes its tiny study compares (the first is the file's train.batch_size)
SIZES = {"diabetes_regression": (16,), "multilabel": (32, 64), "token_tagger": (32,)}
R = dataclasses.replace


def tiny_study(name: str) -> StudyConfig:
    """The example's study file with the tuning stages cut to seconds."""
    cfg = tuner.load_study(EXAMPLES / f"{name}.toml")
    _, held = WEIGHT_DECAY_DEFAULTS[cfg.train.optimizer]
    return cfg.replace(
        train=R(cfg.train, threads=1),
        lr_range=R(cfg.lr_range, num_iters=200, repeats=1),
        # the files leave [lr_check] at its defaults; its runs as long as the momentum stage's
        lr_check=R(cfg.lr_check, factors=(1.0, 2.0), prefer=2.0, epochs=cfg.momentum.epochs,
                   repeats=1),
        momentum=R(cfg.momentum, values=(0.95, 0.9), repeats=1),
        weight_decay=R(cfg.weight_decay, values=(held, 0.0), repeats=1),
        batch_size=R(cfg.batch_size, values=SIZES[name], budget_s=0.5, range_test_iters=200,
                     reports=3),
        final=R(cfg.final, seeds=(0,)),
    )


def example(name: str) -> ModuleType:
    """The example module, imported as the study file's ``module:callable`` names import it."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@functools.cache
def workload(name: str) -> Workload:
    """The example's data, model and step, as its study file names them."""
    return load_workload(tiny_study(name))


def untuned(work: Workload, result: tuner.Result) -> Evaluation:
    """The final training's model, data, batch size, step count and seed, trained with the
    optimizer's PyTorch defaults (SGD: lr 0.01, no momentum, no weight decay; Adam/AdamW: every
    default, lr 1e-3) at a constant LR, and scored on the split the final training was scored
    on, by the same evaluation."""
    final, splits = result.final, work.splits
    if final.scored_on == "test":
        train, scored = concat(splits.train, splits.val), splits.test
    else:
        train, scored = splits.train, splits.val
    batch_size, seed = final.values.batch_size, final.seeds[0]
    steps = final.epochs * epoch_steps(len(train), batch_size)
    model = work.new_model(seed)
    optimizer = {"sgd": lambda p: torch.optim.SGD(p, lr=0.01), "adamw": torch.optim.AdamW,
                 "adam": torch.optim.Adam}[work.train.optimizer](model.parameters())
    lr = optimizer.param_groups[0]["lr"]
    fit(model, optimizer, train, total_steps=steps, batch_size=batch_size,
        schedule=lambda _step: LRMomentum(lr, None), eval_every=steps,  # type: ignore[arg-type]
        on_eval=lambda *_: None, generator=work.generator(seed), task=work.task)
    return work.evaluate(model, scored)


def report_page(url: str, run: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The run's HTML report without plotly.js (whose code says "accuracy" too)."""
    monkeypatch.setattr(tuner.report, "get_plotlyjs", lambda: "")
    return tuner.report.render_html(load_run(find_run(url, run)))


def check_beats_untuned(name: str, result: tuner.Result) -> None:
    cfg = tiny_study(name)
    assert len(result.final.seeds) == 1 and result.test_loss is not None
    baseline = untuned(workload(name), result)
    assert result.test_loss < baseline.loss, (name, result.test_loss, baseline)
    metric_name = cfg.train.metric_name()
    assert result.final.metric_name == metric_name
    if metric_name is None:  # the regression: no metric anywhere, the report says loss only
        assert result.metric is None and baseline.metric is None
        assert "accuracy" not in summary_table(result)
    else:
        assert result.metric >= baseline.metric, (name, result.metric, baseline)
        assert f"test {metric_name}" in summary_table(result)


@pytest.mark.parametrize("name", SIZES)
def test_study_file_names_what_exists(name: str) -> None:
    cfg = tuner.load_study(EXAMPLES / f"{name}.toml")
    assert cfg.name == name and cfg.data.path == str(EXAMPLES)
    check_references(cfg)  # what `tuner run` checks before anything is trained


@pytest.mark.parametrize("name", SIZES)
def test_example_through_its_study_file_beats_untuned(name: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'tuner.db'}"
    result = tuner.run(tiny_study(name), storage=url)
    check_beats_untuned(name, result)
    page = report_page(url, result.run, monkeypatch).lower()
    assert ("accuracy" in page) == (result.final.metric_name == "accuracy")


@pytest.mark.parametrize("name", SIZES)
def test_example_through_tune_beats_untuned(name: str, tmp_path: Path) -> None:
    module = example(name)
    train, val, test = module.data()
    cfg = tiny_study(name)
    kwargs = {}
    if cfg.train.step:  # the Python form: the functions themselves, no names in the config
        kwargs = {"step_fn": module.step, "collate_fn": module.collate}
        cfg = cfg.replace(train=R(cfg.train, step=""), data=R(cfg.data, collate=""))
    result = tuner.tune(module.make_model, train, val, cfg, test_set=test,
                        storage=f"sqlite:///{tmp_path / 'tuner.db'}", **kwargs)
    check_beats_untuned(name, result)


def test_a_step_returning_a_loss_alone_may_not_report_a_metric() -> None:
    """Without counts there is no metric to report: one line, not an accuracy of 0."""
    module = example("token_tagger")
    cfg = tiny_study("token_tagger")

    def loss_only(model, batch):  # noqa: ANN001, ANN202
        return module.step(model, batch)[0]

    with pytest.raises(tuner.ConfigError) as info:
        load_workload(cfg, step_fn=loss_only)
    assert "returned a loss alone" in str(info.value) and "\n" not in str(info.value)
    none = cfg.replace(train=R(cfg.train, metric="none"))
    assert load_workload(none, step_fn=loss_only).task.metric_name is None


def test_items_of_different_sizes_without_a_collate_are_one_line(tmp_path: Path) -> None:
    module = example("token_tagger")
    cfg = tiny_study("token_tagger")
    cfg = cfg.replace(train=R(cfg.train, step=""), data=R(cfg.data, collate=""))
    train, val, test = module.data()
    with pytest.raises(tuner.ConfigError) as info:
        tuner.tune(module.make_model, train, val, cfg, test_set=test, step_fn=module.step,
                   storage=f"sqlite:///{tmp_path / 'tuner.db'}")
    message = str(info.value)
    assert message.startswith("cannot batch the training items") and "\n" not in message
    assert "collate" in message and not (tmp_path / "tuner.db").exists()
