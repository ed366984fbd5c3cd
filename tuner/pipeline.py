"""The staged pipeline: LR range -> momentum -> weight decay -> batch size -> final training.

Each stage is a study in one storage; a stage that already holds a decision is skipped, so the
same call resumes an interrupted run. The storage alone is enough to carry on. The pipeline
knows nothing of presentation: ``on_decided`` is called as each stage is decided (``tuner.cli``
and ``tuner.api`` write the dashboard note there).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import optuna
from torch import nn

from tuner.budget import check_budget, fit_to_budget
from tuner.config import StudyConfig
from tuner.context import Context, Workload, load_workload
from tuner.data import Splits
from tuner.environment import ENVIRONMENT_ATTR, environment
from tuner.stages import STAGES, Decision, Stage
from tuner.stages.base import HParams, find
from tuner.stages.final import FinalDecision
from tuner.storage import (
    CONFIG_ATTR,
    DEFAULT_STORAGE,
    NoSuchRun,
    Run,
    open_storage,
    read_decision,
    run_names,
)
from tuner.task import StepFn

log = logging.getLogger(__name__)
OnDecided = Callable[[Stage, optuna.Study, Decision], None]


@dataclass(frozen=True)
class Result:
    """What a finished run chose and measured (``decisions``: each stage's record by name)."""

    run: str
    storage: str  # password masked
    decisions: Mapping[str, Decision]

    @property
    def final(self) -> FinalDecision:
        return find(self.decisions, FinalDecision)

    @property
    def values(self) -> HParams:
        """What the final training ran with."""
        return self.final.values

    @property
    def min_lr(self) -> float:
        return self.values.min_lr

    @property
    def max_lr(self) -> float:
        return self.values.max_lr

    @property
    def momentum(self) -> float:
        return self.values.max_momentum

    @property
    def weight_decay(self) -> float:
        return self.values.weight_decay

    @property
    def batch_size(self) -> int:
        return self.values.batch_size

    @property
    def metric(self) -> float | None:
        """The final metric (``final.metric_name``) on the test split, or on the validation
        split without one; None when the task has no metric."""
        return self.final.metric

    @property
    def accuracy(self) -> float | None:
        """The final accuracy (test, or validation without a test split); None when the
        metric is not accuracy (a regression has none)."""
        return self.final.metric if self.final.metric_name == "accuracy" else None

    @property
    def test_accuracy(self) -> float | None:
        """Mean over the final seeds; None without a test split or an accuracy metric."""
        return self.accuracy if self.final.scored_on == "test" else None

    @property
    def loss(self) -> float:
        """The final loss (test, or validation without a test split)."""
        return self.final.loss

    @property
    def test_loss(self) -> float | None:
        return self.final.loss if self.final.scored_on == "test" else None


def settings(config: StudyConfig, url: str, run_name: str | None, fresh: bool,
             budget_s: float | None, workload: Workload) -> StudyConfig:
    """What the run will run: an existing run's stored settings (with this worker's own
    device, threads and data loading), else ``config`` fitted to ``budget_s`` seconds of
    tuning on this machine (``tuner.budget``), else ``config``."""
    config = config.resolved()
    if budget_s is None:
        return config
    check_budget(budget_s)
    name = None if fresh else run_name or config.name
    storage = open_storage(url)
    if name is not None and name in run_names(storage):
        log.info("run %r exists: it resumes with the settings it was started with", name)
        return with_runtime(Run.find(url, name).config(), config)
    return fit_to_budget(config, budget_s, workload).config


def with_runtime(stored: StudyConfig, local: StudyConfig) -> StudyConfig:
    """``stored`` with this worker's device, threads and data loading."""
    return stored.replace(
        train=dataclasses.replace(stored.train, threads=local.train.threads,
                                  device=local.train.device),
        data=dataclasses.replace(stored.data, workers=local.data.workers, hold=local.data.hold))


def prepare(config: StudyConfig, storage: str = DEFAULT_STORAGE, run_name: str | None = None,
            fresh: bool = False) -> str:
    """Create (or check) the run so that workers can join it; return its name."""
    return Run.start(storage, config.resolved(), run_name, fresh).name


def run(config: StudyConfig, *, storage: str = DEFAULT_STORAGE, run_name: str | None = None,
        fresh: bool = False, model_fn: Callable[[], nn.Module] | None = None,
        splits: Splits | None = None, budget_s: float | None = None,
        workload: Workload | None = None, on_decided: OnDecided | None = None,
        step_fn: StepFn | None = None) -> Result:
    """Run (or resume, or join as one more worker) every stage and return the decisions.

    ``model_fn`` and ``splits`` replace the built-in model and dataset named in ``config``,
    ``step_fn`` its training step (or pass a ``workload`` already loaded). ``budget_s`` fits a
    new run to that many tuning seconds on this machine (``tuner.budget``); a run that exists
    already keeps the settings it was started with. Any number of processes may call this with
    the same storage and run name at once: they share each stage's trials and all reach the
    same decisions.
    """
    if budget_s is not None:
        check_budget(budget_s)
    workload = workload or load_workload(config, model_fn, splits, step_fn)
    config = settings(config, storage, run_name, fresh, budget_s, workload)
    handle = Run.start(storage, config, run_name, fresh)
    log.info("run %r in %s", handle.name, handle.url)
    ctx = Context(config, workload, handle.storage, handle.name)
    for index, stage in enumerate(STAGES, start=1):
        ctx.decisions[stage.name] = run_stage(ctx, handle, stage, f"[{index}/{len(STAGES)}]",
                                              on_decided)
    return Result(handle.name, handle.url, dict(ctx.decisions))


def run_stage(ctx: Context, handle: Run, stage: Stage, label: str,
              on_decided: OnDecided | None) -> Decision:
    """The stage's decision: stored before, or run now and recorded (the first worker's wins)."""
    pruner = (ctx.pruner(stage.reports(ctx), stage.varies_max_lr) if stage.reports is not None
              else None)
    study = handle.study(stage, pruner)
    decision = read_decision(stage, study)
    if CONFIG_ATTR not in study.user_attrs:  # each study carries the settings it ran with
        study.set_user_attr(CONFIG_ATTR, ctx.config.to_dict())
    if decision is not None:
        log.info("%s %s: done before: %s", label, stage.name, decision.why)
        return decision
    log.info("%s %s ...", label, stage.name)
    t0 = time.perf_counter()
    decision = stage.run(ctx, study).timed(time.perf_counter() - t0)
    decision = handle.record(stage, study, decision)
    study.set_user_attr(ENVIRONMENT_ATTR, environment(ctx.device))
    if on_decided is not None:
        on_decided(stage, study, decision)
    log.info("%s %s: %s (%.1f s)", label, stage.name, decision.why, decision.seconds)
    return decision


def budgeted_config(config: StudyConfig, budget_s: float, *, storage: str = DEFAULT_STORAGE,
                    run_name: str | None = None, fresh: bool = False,
                    workload: Workload | None = None) -> StudyConfig:
    """What ``run(config, budget_s=...)`` will run (for a command that starts workers before
    it runs): ``config`` fitted to ``budget_s`` seconds, or an existing run's settings."""
    check_budget(budget_s)
    return settings(config, storage, run_name, fresh, budget_s,
                    workload or load_workload(config))


def join(storage: str = DEFAULT_STORAGE, run_name: str | None = None,
         threads: int | None = None, device: str | None = None,
         on_decided: OnDecided | None = None) -> Result:
    """Join an existing run as one more worker, with the configuration stored in the run
    (``threads`` and ``device`` may differ from worker to worker)."""
    try:
        handle = Run.find(storage, run_name)
    except NoSuchRun as exc:
        raise NoSuchRun(f"{exc} (`tuner worker` joins a run that `tuner run` started)") from None
    config = handle.config()
    train = dataclasses.replace(config.train, threads=threads or config.train.threads,
                                device=device or config.train.device)
    return run(config.replace(train=train), storage=storage, run_name=handle.name,
               on_decided=on_decided)
