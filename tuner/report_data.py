"""What the report shows, read from a run's studies as plain numbers (no plotting here).

Each ``get_..._info(study)`` reads one stage's study, in the manner of Optuna's visualization
module, and returns a frozen dataclass of plain lists and numbers; ``load_run`` gathers them
for a whole run. Decisions are read as the stages' typed records, stage titles and grid
parameters come from the registry (``tuner.stages``). ``tuner.report`` draws the numbers,
``tuner.tables`` tabulates them, the tests check them without plotly. Nothing here imports
torch or the training path.

What the run trained with (``Training``: optimizer, loss, metric) comes from its stored
configuration: the readers name the metric as the run named it (accuracy as a percentage, any
other metric as a number) and show none where the run measured none (a regression).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.config import ScheduleConfig, StudyConfig, TrainConfig, from_dict
from tuner.environment import ENVIRONMENT_ATTR
from tuner.lr_range import RISE_RATIO, ema, rise_lr
from tuner.schedules import one_cycle
from tuner.stages import STAGES, Decision, Stage, final, lr_range, refine, stage
from tuner.stages.base import HParams
from tuner.stages.batch_size import BUDGET_ATTR, BatchSizeDecision
from tuner.stages.final import FinalDecision
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.refine import REPEAT_ATTR, RefineDecision
from tuner.storage import CONFIG_ATTR, Run, read_decision
from tuner.trials import trial_params

NOT_DECIDED = "not decided yet"
CHECKED_NAME = "checked max LR"  # the LR check's choice, on the range test's figures
RISE_NAME = "half-way climb"  # where the "rise" reading was taken (max LR = it / 2.83)
SEED = "seed"  # the final training's trial parameter: one trial per seed


def find_run(source: Run | str, run: str | None = None) -> Run:
    """``source`` itself, or the run ``run`` (default: the newest) in the storage at that URL;
    a SQLite file that does not exist is an error, never created."""
    if isinstance(source, Run):
        if run is not None and run != source.name:
            raise ValueError(f"run {run!r} asked of the handle of run {source.name!r}.")
        return source
    return Run.find(source, run)


def study_config(study: optuna.Study, config: StudyConfig | None = None) -> StudyConfig:
    """``config``, else the configuration stored in ``study`` (the run's first stage holds
    it), else the defaults."""
    if config is not None:
        return config
    stored = study.user_attrs.get(CONFIG_ATTR)
    return from_dict(StudyConfig, stored) if stored else StudyConfig()


OPTIMIZER_NAMES = {"sgd": "SGD", "adamw": "AdamW", "adam": "Adam"}
LOSS_NAMES = {"cross_entropy": "cross-entropy", "mse": "MSE", "bce_with_logits": "BCE with logits"}


@dataclass(frozen=True)
class Training:
    """What a run trained with, as the readers name it (from ``[train]``)."""

    optimizer: str = "sgd"  # sgd | adamw | adam
    beta2: float = 0.99  # Adam's
    loss: str = "cross_entropy"  # a built-in loss, or "module:callable"
    metric: str | None = "accuracy"  # the metric's name (None: the run measured none)

    @classmethod
    def of(cls, train: TrainConfig) -> Training:
        return cls(optimizer=train.optimizer, beta2=train.beta2, loss=train.loss,
                   metric=train.metric_name())

    @property
    def adam(self) -> bool:
        return self.optimizer != "sgd"

    @property
    def momentum_name(self) -> str:
        """What the momentum stage grids and 1cycle cycles: SGD's momentum, Adam's beta1."""
        return "beta1" if self.adam else "momentum"

    @property
    def loss_name(self) -> str:
        return LOSS_NAMES.get(self.loss, self.loss.rpartition(":")[2])

    def describe(self, momentum: float | None = None) -> str:
        """"SGD, momentum 0.9", "AdamW, beta1 0.9, beta2 0.99"; without ``momentum`` (the
        1cycle schedule cycles it) "SGD", "AdamW, beta2 0.99"."""
        parts = [OPTIMIZER_NAMES.get(self.optimizer, self.optimizer)]
        if momentum is not None:
            parts.append(f"{self.momentum_name} {momentum:g}")
        if self.adam:
            parts.append(f"beta2 {self.beta2:g}")
        return ", ".join(parts)


def training_of(config: StudyConfig | dict[str, Any] | None) -> Training:
    """What a run trained with, from its configuration (as stored, or read); the defaults
    without one."""
    if isinstance(config, dict):
        config = from_dict(StudyConfig, config) if config else None
    return Training.of(config.train) if config is not None else Training()


def history_rows(trial: FrozenTrial) -> list[dict[str, Any]]:
    return list(trial.user_attrs.get("history", []))


def finite(x: Any) -> float | None:
    """A float, or None for NaN, inf and missing values (JSON- and plot-friendly)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def trial_state(t: FrozenTrial) -> str:
    """complete | pruned | diverged | running | waiting | fail."""
    if t.state == TrialState.PRUNED and "diverged" in t.user_attrs:
        return "diverged"
    return t.state.name.lower()


def trial_param(st: Stage, t: FrozenTrial) -> tuple[str | None, Any]:
    """The parameter a trial of stage ``st`` stands for and its value: the grid stage's
    ``param``, else the trial's only parameter (a final training's seed), else none."""
    params = trial_params(t)
    if st.param is not None:
        return st.param, params.get(st.param)
    if len(params) == 1:
        return next(iter(params.items()))
    return None, None


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that ran to an end (complete or pruned): one per grid point. A running trial
    stores its history only when it ends, and a failed one is run again."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# --- the LR range test ---------------------------------------------------------------------

class LRChoice(NamedTuple):
    """The range read off a range test (None: none was), and why."""

    min_lr: float | None
    max_lr: float | None
    why: str


class CheckedLR(NamedTuple):
    """The max LR the LR check (stage 1b) chose: ``factor`` x the range test's reading; the LR
    range every later stage used."""

    min_lr: float
    max_lr: float
    factor: float

    @classmethod
    def of(cls, decision: LRDecision) -> CheckedLR:
        return cls(decision.min_lr, decision.max_lr, decision.factor)

    @property
    def label(self) -> str:
        """How the range test's figures name it: "checked max LR 0.141 (x1.41)"."""
        return f"{CHECKED_NAME} {self.max_lr:.3g} (x{self.factor:.3g})"


@dataclass(frozen=True)
class RangeTestInfo:
    """The (mean) range test curve, the decision read off it and the rules beside it."""

    lrs: list[float]  # per step
    train_losses: list[float | None]  # per step, raw
    train_smoothed: list[float | None]  # bias-corrected EMA: what the stop rule looks at
    val_lrs: list[float]
    val_losses: list[float | None]  # mean over the repeats
    val_metrics: list[float | None]  # all None without a metric
    val_losses_each: list[list[float | None]]  # each repeat (empty with a single test)
    log_lr: bool  # the LR rose exponentially: draw it on a log axis
    min_lr: float | None  # None when no range could be read off the curve
    max_lr: float | None
    suggestions: dict[str, float]  # fastai's rules on the training loss (finite ones only)
    stop_reason: str
    stop_lr: float | None  # where the test stopped early (divergence); None: it ran to end_lr
    stop_loss: float | None  # the smoothed training loss there
    batch_size: int | None
    why: str
    training: Training = Training()
    momentum: float | None = None  # the test's constant momentum (Adam: beta1)
    checked: CheckedLR | None = None  # the LR check's choice (None: not decided, or no check)
    rise_lr: float | None = None  # the half-way climb the max LR was read at (None: not so read)

    @property
    def metric_name(self) -> str | None:
        return self.training.metric

    @property
    def optimizer_text(self) -> str:
        """Which optimizer ran the test: "SGD, momentum 0.9", "AdamW, beta1 0.9, beta2 0.99"."""
        return self.training.describe(self.momentum)


def range_test_title(info: RangeTestInfo) -> str:
    """"LR range test (batch size 64; SGD, momentum 0.9)": which optimizer ran it."""
    return f"LR range test (batch size {info.batch_size}; {info.optimizer_text})"


def get_range_test_info(study: optuna.Study, config: StudyConfig | None = None,
                        checked: LRDecision | None = None) -> RangeTestInfo | None:
    """The LR range test of a ``lr_range`` study, and the max LR the LR check chose from its
    reading (``checked``: the run's ``lr_check`` decision, where it has one); None before the
    test has finished."""
    trials = [t for t in study.get_trials(deepcopy=False) if "curve" in t.user_attrs]
    if not trials:
        return None
    attrs = trials[-1].user_attrs
    cfg = study_config(study, config)
    decision = read_decision(lr_range.STAGE, study)
    if isinstance(decision, RangeDecision):
        lr = LRChoice(decision.min_lr, decision.max_lr, decision.why)
        batch_size = decision.batch_size
    else:
        lr = LRChoice(None, None, attrs.get("no_range", "no LR range was decided (see the "
                                                         "run's log)."))
        batch_size = cfg.train.batch_size
    info = range_info_from_attrs(attrs, cfg, batch_size, lr)
    return info if checked is None else dataclasses.replace(info, checked=CheckedLR.of(checked))


def reading_rise(val_lrs: list[float], val_losses: list[float], max_lr: float | None
                 ) -> float | None:
    """The half-way climb of the validation loss if ``max_lr`` was read off it (it / 2.83), so
    that the figure shows where the reading came from; else None (the minimum, the valley, or a
    batch size's scaled range)."""
    if max_lr is None:
        return None
    rise = rise_lr([float(x) for x in val_lrs], [math.nan if x is None else float(x)
                                                 for x in val_losses])
    return rise if rise is not None and math.isclose(rise / RISE_RATIO, max_lr) else None


def _smoothed(raw: list[float | None], beta: float) -> list[float | None]:
    """The EMA of the finite prefix, None after it."""
    n = next((i for i, x in enumerate(raw) if x is None), len(raw))
    return [*ema([x for x in raw[:n] if x is not None], beta), *([None] * (len(raw) - n))]


def range_info_from_attrs(attrs: dict[str, Any], cfg: StudyConfig, batch_size: int | None,
                          lr: LRChoice, prefix: str = "") -> RangeTestInfo:
    """A range test from a trial's user attrs (``{prefix}curve``, ``{prefix}suggestions``,
    ``{prefix}val_losses_each``) and the range read off it."""
    curve = attrs[f"{prefix}curve"]
    lrs = [float(x) for x in curve["lrs"]]
    raw = [finite(x) for x in curve["train_losses"]]
    smoothed = _smoothed(raw, cfg.lr_range.smooth)
    stop_lr = stop_loss = None
    stop_step = curve.get("stop_step")
    if stop_step is not None and lrs:
        i = max(0, min(int(stop_step), len(lrs)) - 1)
        stop_lr = lrs[i]
        stop_loss = next((smoothed[j] for j in range(i, -1, -1) if smoothed[j] is not None),
                         None)
    each = attrs.get(f"{prefix}val_losses_each") or []
    return RangeTestInfo(
        rise_lr=reading_rise(curve["val_lrs"], curve["val_losses"], lr.max_lr),
        lrs=lrs, train_losses=raw, train_smoothed=smoothed,
        val_lrs=[float(x) for x in curve["val_lrs"]],
        val_losses=[finite(x) for x in curve["val_losses"]],
        val_metrics=_metrics(curve.get("val_metrics"), len(curve["val_losses"])),
        val_losses_each=[[finite(x) for x in losses] for losses in each] if len(each) > 1
        else [],
        log_lr=cfg.lr_range.mode == "exp", min_lr=lr.min_lr, max_lr=lr.max_lr,
        suggestions={k: float(v) for k, v in (attrs.get(f"{prefix}suggestions") or {}).items()
                     if finite(v) is not None},
        stop_reason=curve.get("stop_reason", ""), stop_lr=stop_lr, stop_loss=stop_loss,
        batch_size=batch_size, why=lr.why, training=training_of(cfg),
        momentum=cfg.lr_range.momentum)


def _metrics(values: Sequence[Any] | None, n: int) -> list[float | None]:
    """A curve's metric values (None each where it measured none)."""
    return [finite(x) for x in values] if values else [None] * n


def loss_window(info: RangeTestInfo) -> tuple[float, float]:
    """A loss range that shows the fall and the start of the rise, not the explosion after it:
    up to 1.6 x the first loss, a little padding either side."""
    values = [v for v in (*info.train_smoothed, *info.val_losses) if v is not None]
    if not values:
        return 0.0, 1.0
    firsts = [v for v in (*info.train_smoothed[:1], *info.val_losses[:1]) if v is not None]
    hi = min(max(values), 1.6 * max(firsts or values))
    lo = min(values)
    pad = 0.05 * (hi - lo or 1.0)
    return max(0.0, lo - pad), hi + pad


# --- grid stages: LR check, momentum, weight decay, batch size; the final training's seeds --

@dataclass(frozen=True)
class TrialCurve:
    """One grid trial's history: one entry per report (an epoch, or a share of the budget)."""

    number: int
    value: Any  # the grid value (max LR, max momentum, weight decay, batch size or seed)
    state: str  # complete | pruned | diverged | fail | running
    chosen: bool
    reports: list[int]  # 1, 2, ...: epochs for the per-epoch stages
    steps: list[int]
    seconds: list[float]  # training seconds so far (evaluation not counted)
    train_losses: list[float | None]
    val_losses: list[float | None]  # empty for final training (no validation split)
    val_metrics: list[float | None]  # one per validation measurement; None: no metric
    objective: float | None  # the trial's value: final val loss, or test loss
    pruned_at: int | None
    diverged: str | None
    attrs: dict[str, Any] = field(default_factory=dict)  # scalar user attrs (min_lr, epochs...)

    @property
    def label(self) -> str:
        """How the legend names it: the value, and how it ended when not complete."""
        text = f"{self.value:g}" if isinstance(self.value, float) else f"{self.value}"
        if self.state == "diverged":
            return f"{text} (diverged)"
        if self.state == "pruned":
            at = f" at {self.pruned_at}" if self.pruned_at is not None else ""
            return f"{text} (pruned{at})"
        if self.state not in ("complete",):
            return f"{text} ({self.state})"
        return f"{text} (chosen)" if self.chosen else text


def _trial_curve(t: FrozenTrial, value: Any, chosen: Any) -> TrialCurve:
    rows = history_rows(t)
    scalars = {k: v for k, v in t.user_attrs.items()
               if isinstance(v, int | float | str | bool) and k not in ("diverged", "pruned_at")}
    return TrialCurve(
        number=t.number, value=value, state=trial_state(t),
        chosen=chosen is not None and value == chosen and t.state == TrialState.COMPLETE,
        reports=list(range(1, len(rows) + 1)),
        steps=[int(r["step"]) for r in rows],
        seconds=[float(r["seconds"]) for r in rows],
        train_losses=[finite(r.get("train_loss")) for r in rows],
        val_losses=[finite(r.get("val_loss")) for r in rows if "val_loss" in r],
        val_metrics=[finite(r.get("val_metric")) for r in rows if "val_loss" in r],
        objective=finite(t.value) if t.state == TrialState.COMPLETE else None,
        pruned_at=t.user_attrs.get("pruned_at"), diverged=t.user_attrs.get("diverged"),
        attrs=scalars)


def _curves(trials: Sequence[FrozenTrial], param: str, chosen: Any) -> list[TrialCurve]:
    """The finished trials that stand for a value of ``param``, sorted by value."""
    points = [(t, trial_params(t).get(param)) for t in trials]
    return sorted((_trial_curve(t, v, chosen) for t, v in points if v is not None),
                  key=lambda c: (c.value, c.number))


@dataclass(frozen=True)
class GridStageInfo:
    """A stage that trains one short run per grid value (LR check, momentum, weight decay,
    batch size)."""

    stage: str
    title: str
    param: str
    label: str
    chosen: Any  # None before the stage has decided
    trials: list[TrialCurve]  # sorted by value
    planned_reports: int | None  # epochs (or reports) per run, from the configuration
    why: str
    # Grid stages compared at equal time (the batch size): training seconds per candidate,
    # and each candidate's own range test by value. None / empty for per-epoch stages.
    budget_s: float | None = None
    range_tests: dict[Any, RangeTestInfo] = field(default_factory=dict)
    training: Training = Training()

    @property
    def metric_name(self) -> str | None:
        return self.training.metric


def get_grid_stage_info(study: optuna.Study, which: Stage | str,
                        config: StudyConfig | None = None) -> GridStageInfo | None:
    """A grid stage's trials (one per value), the value chosen; None before any finished."""
    st = which if isinstance(which, Stage) else stage(which)
    if st.param is None:
        raise ValueError(f"stage {st.name!r} runs no grid (its Stage has no param).")
    decision = read_decision(st, study)
    chosen = getattr(decision, st.param) if decision is not None else None
    curves = _curves(_finished(study), st.param, chosen)
    if not curves:
        return None
    cfg = study_config(study, config)
    section = getattr(cfg, st.name, None)
    train = training_of(cfg)
    label = st.param_label or st.param
    if st.param == "max_momentum" and train.adam:  # Adam's momentum stage grids beta1
        label = "max beta1"
    return GridStageInfo(
        stage=st.name, title=st.title, param=st.param, label=label, chosen=chosen, trials=curves,
        training=train,
        planned_reports=getattr(section, "reports", None) or getattr(section, "epochs", None),
        why=decision.why if decision is not None else NOT_DECIDED,
        budget_s=_budget(study, decision, section),
        range_tests=_size_range_tests(study, st.param, cfg))


def _budget(study: optuna.Study, decision: Decision | None, section: Any) -> float | None:
    """Training seconds per candidate of a stage compared at equal time (else None): the
    decision's, else the one measured and stored in the study, else the configured one."""
    decided = decision.budget_s if isinstance(decision, BatchSizeDecision) else None
    value = decided or study.user_attrs.get(BUDGET_ATTR) or getattr(section, "budget_s", 0.0)
    return float(value) if value else None


def _size_range_tests(study: optuna.Study, param: str, cfg: StudyConfig
                      ) -> dict[Any, RangeTestInfo]:
    """The range tests a grid's trials ran of their own (the batch sizes'), by value."""
    out = {}
    for t in _finished(study):
        attrs, value = t.user_attrs, trial_params(t).get(param)
        if "range_curve" not in attrs or value is None:
            continue
        lr = (LRChoice(attrs.get("min_lr"), attrs["max_lr"], attrs.get("lr_why", ""))
              if "max_lr" in attrs else LRChoice(None, None, attrs.get("no_range", "")))
        out[value] = range_info_from_attrs(attrs, cfg, value, lr, prefix="range_")
    return out


# --- the refinement ------------------------------------------------------------------------

@dataclass(frozen=True)
class RefinePoint:
    number: int
    max_lr: float
    max_momentum: float
    weight_decay: float
    state: str  # complete | pruned | diverged | failed | running
    value: float | None  # final validation loss (COMPLETE trials)
    repeat: int = 0  # seed offset: 1 for a confirmation rerun of a search trial's values


@dataclass(frozen=True)
class RefineInfo:
    """The refinement's trials; ``staged`` and ``chosen`` are trial numbers (None: not run)."""

    points: list[RefinePoint]
    staged: int | None
    chosen: int | None
    why: str
    training: Training = Training()


def get_refine_info(study: optuna.Study, config: StudyConfig | None = None
                    ) -> RefineInfo | None:
    """The refinement's trials, or None where it ran none (it is off by default)."""
    trials = [t for t in study.get_trials(deepcopy=False) if "max_lr" in t.params]
    if not trials:
        return None
    points = [RefinePoint(t.number, t.params["max_lr"], t.params["max_momentum"],
                          t.params["weight_decay"], trial_state(t),
                          t.value if t.state == TrialState.COMPLETE else None,
                          int(t.user_attrs.get(REPEAT_ATTR, 0)))
              for t in sorted(trials, key=lambda t: t.number)]
    decision = read_decision(refine.STAGE, study)
    chosen = None
    if isinstance(decision, RefineDecision):
        v = decision.values
        matches = [p for p in points if p.value is not None and not p.repeat
                   and (p.max_lr, p.max_momentum, p.weight_decay)
                   == (v.max_lr, v.max_momentum, v.weight_decay)]
        chosen = matches[0].number if matches else None
    return RefineInfo(points, points[0].number, chosen,
                      decision.why if decision is not None else NOT_DECIDED,
                      training_of(study_config(study, config)))


# --- the final training --------------------------------------------------------------------

@dataclass(frozen=True)
class FinalInfo:
    """Final training: the 1cycle schedule it ran (recomputed), its curves, its scores."""

    trials: list[TrialCurve]  # one per seed; train loss per epoch, no validation
    schedule_epochs: list[float]  # x of the schedule, in epochs
    schedule_lrs: list[float]
    schedule_momenta: list[float]
    scored_on: str  # "test", or "val" for data without a test split (trained on train only)
    loss: float | None  # on that split, mean over seeds (None: not finished)
    loss_sd: float | None
    metric: float | None  # the metric on that split, mean over seeds (None: none, or not finished)
    metric_sd: float | None
    hparams: HParams | None  # what it ran with (None: not finished)
    epochs: int | None
    why: str
    training: Training = Training()

    @property
    def metric_name(self) -> str | None:
        return self.training.metric

    @property
    def optimizer_text(self) -> str:
        """Which optimizer ran it: "SGD", "AdamW, beta2 0.99" (1cycle cycles the momentum)."""
        return self.training.describe()


def schedule_points(total_steps: int, hp: HParams, cycle_fraction: float,
                    final_div: float, max_points: int = 200) -> tuple[list[int], list[float],
                                                                        list[float]]:
    """The 1cycle LR and momentum at up to ``max_points`` steps, corners included."""
    last = total_steps - 1
    corners = {0, last, round(cycle_fraction / 2 * last), round(cycle_fraction * last)}
    n = min(max_points, total_steps)
    steps = sorted({round(i * last / max(n - 1, 1)) for i in range(n)} | corners)
    values = [one_cycle(s, total_steps, hp.min_lr, hp.max_lr, hp.max_momentum,
                        hp.min_momentum, cycle_fraction, final_div) for s in steps]
    return steps, [v.lr for v in values], [v.momentum for v in values]


def _final_schedule(curves: Sequence[TrialCurve], decision: FinalDecision,
                    sched: ScheduleConfig) -> tuple[list[float], list[float], list[float]]:
    """The schedule the final training ran, in epochs (from the steps of its first report)."""
    with_steps = [c for c in curves if c.steps]
    if not with_steps:
        return [], [], []
    per_epoch = max(with_steps, key=lambda c: len(c.steps)).steps[0]
    steps, lrs, moms = schedule_points(per_epoch * decision.epochs, decision.values,
                                       sched.cycle_fraction, sched.final_div)
    return [s / per_epoch for s in steps], lrs, moms


def get_final_info(study: optuna.Study, config: StudyConfig | None = None) -> FinalInfo | None:
    """The final training's seeds and schedule; None before any seed finished."""
    decision = read_decision(final.STAGE, study)
    curves = _curves(_finished(study), SEED, None)
    if not curves:
        return None
    cfg = study_config(study, config)
    train = training_of(cfg)
    if not isinstance(decision, FinalDecision):
        scored_on = next((c.attrs["scored_on"] for c in curves if "scored_on" in c.attrs),
                         "test")
        return FinalInfo(curves, [], [], [], scored_on, None, None, None, None, None, None,
                         "not finished yet", training=train)
    # What the final training ran with, as its record says.
    train = dataclasses.replace(train, optimizer=decision.optimizer, metric=decision.metric_name)
    xs, lrs, moms = _final_schedule(curves, decision, cfg.schedule)
    return FinalInfo(trials=curves, schedule_epochs=xs, schedule_lrs=lrs,
                     schedule_momenta=moms, scored_on=decision.scored_on, loss=decision.loss,
                     loss_sd=decision.loss_sd, metric=decision.metric,
                     metric_sd=decision.metric_sd, hparams=decision.values,
                     epochs=decision.epochs, why=decision.why, training=train)


# --- the whole run --------------------------------------------------------------------------

StageInfo = RangeTestInfo | GridStageInfo | RefineInfo | FinalInfo


def get_stage_info(st: Stage, study: optuna.Study, config: StudyConfig | None = None,
                   checked: LRDecision | None = None) -> StageInfo | None:
    """What the report shows of stage ``st`` (by its decision's type, or its grid parameter:
    the LR check is a grid of max LRs); None when it has nothing to show yet. ``checked``:
    the LR check's decision, marked on the range test."""
    if st.decision is RangeDecision:
        return get_range_test_info(study, config, checked)
    if st.decision is RefineDecision:
        return get_refine_info(study, config)
    if st.decision is FinalDecision:
        return get_final_info(study, config)
    if st.param is not None:
        return get_grid_stage_info(study, st, config)
    return None


@dataclass(frozen=True)
class StageSummary:
    stage: str
    title: str
    status: str  # done | started | not started
    chosen: str  # the decision in a few words ("" before it is made)
    why: str
    seconds: float | None
    trials: dict[str, int]  # count by state


def stage_summary(st: Stage, study: optuna.Study | None, decision: Decision | None
                  ) -> StageSummary:
    if study is None:
        return StageSummary(st.name, st.title, "not started", "", "", None, {})
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[trial_state(t)] = counts.get(trial_state(t), 0) + 1
    if decision is None:
        return StageSummary(st.name, st.title, "started", "", "", None, counts)
    return StageSummary(st.name, st.title, "done", decision.summary(), decision.why,
                        decision.seconds, counts)


@dataclass(frozen=True)
class RunInfo:
    run: str
    storage: str  # password masked
    config: dict[str, Any]  # as stored
    environment: dict[str, Any]  # as recorded by the run ({}: none recorded)
    tool: dict[str, Any]  # version and storage schema of the tuner that started the run
    stages: list[StageSummary]  # every stage, in pipeline order
    decisions: dict[str, Decision]  # by stage name
    details: dict[str, StageInfo]  # by stage name: the stages with something to show

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds or 0.0 for s in self.stages)

    def _first(self, kind: type) -> Any:
        return next((d for d in self.details.values() if isinstance(d, kind)), None)

    @property
    def range_test(self) -> RangeTestInfo | None:
        return self._first(RangeTestInfo)

    @property
    def refine(self) -> RefineInfo | None:
        return self._first(RefineInfo)

    @property
    def final(self) -> FinalInfo | None:
        return self._first(FinalInfo)

    @property
    def training(self) -> Training:
        """What the run trained with (optimizer, loss, metric), from its configuration."""
        return training_of(self.config)

    def grid(self, name: str) -> GridStageInfo | None:
        """The grid stage ``name`` (None before it has finished a trial)."""
        info = self.details.get(name)
        return info if isinstance(info, GridStageInfo) else None


def load_run(source: Run | str, run: str | None = None) -> RunInfo:
    """Everything the report shows about ``run`` (default: the newest run in the storage);
    ``source`` is a storage URL (a missing SQLite file is an error) or a ``Run``."""
    handle = find_run(source, run)
    studies = handle.studies()
    decisions = handle.decisions()
    config = handle.config()
    env = next((s.user_attrs[ENVIRONMENT_ATTR] for s in studies.values()
                if ENVIRONMENT_ATTR in s.user_attrs), {})
    checked = next((d for d in decisions.values() if isinstance(d, LRDecision)), None)
    details = {}
    for st in STAGES:
        shown = (get_stage_info(st, studies[st.name], config, checked) if st.name in studies
                 else None)
        if shown is not None:
            details[st.name] = shown
    return RunInfo(
        run=handle.name, storage=handle.url, config=handle.stored_config() or {},
        environment=dict(env), tool=handle.tool(),
        stages=[stage_summary(st, studies.get(st.name), decisions.get(st.name))
                for st in STAGES],
        decisions=decisions, details=details)


def downsample(xs: Sequence[Any], ys: Sequence[Any], max_points: int) -> tuple[list, list]:
    """At most ``max_points`` points, evenly spaced by index, the first and last kept."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    idx = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [xs[i] for i in idx], [ys[i] for i in idx]
