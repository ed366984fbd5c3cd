"""What the report shows, read from a run's studies as plain numbers (no plotting here).

Each ``get_..._info(study)`` reads one stage's study, in the manner of Optuna's visualization
module, and returns a frozen dataclass of plain lists and numbers; ``load_run`` gathers them
for a whole run. ``tuner.report`` draws them, the notebook tabulates them, and the tests check
them without plotly. ``trials_table`` and friends give every trial as a pandas table.
"""

from __future__ import annotations

import math
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from tuner.lr_range import ema
from tuner.schedules import one_cycle
from tuner.storage import (
    CONFIG_ATTR,
    DECISION_ATTR,
    STAGES,
    TOOL_ATTR,
    StorageError,
    mask_url,
    open_storage,
    run_names,
    storage_folder,
    study_name,
)
from tuner.trials import trial_params
from tuner.version import __version__

if TYPE_CHECKING:
    import pandas as pd
    import torch

ENVIRONMENT_ATTR = "environment"
STAGE_TITLES = {
    "lr_range": "LR range test",
    "momentum": "Cyclical momentum",
    "weight_decay": "Weight decay",
    "batch_size": "Batch size at equal wall-clock time",
    "refine": "Refinement around the staged values",
    "final": "Final 1cycle training",
}
SUGGESTION_NAMES = {"valley": "valley", "minimum": "minimum / 10", "steepest": "steepest"}
GRID_PARAMS = {"momentum": ("max_momentum", "max momentum"),
               "weight_decay": ("weight_decay", "weight decay"),
               "batch_size": ("batch_size", "batch size"),
               "final": ("seed", "seed")}


class NoSuchRun(StorageError):
    """The storage holds no run of that name (or no run at all)."""


# --- reading the storage -------------------------------------------------------------------

def open_existing_storage(url: str) -> optuna.storages.RDBStorage:
    """Open a storage to read; a SQLite file that does not exist is an error, not a new file."""
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 -- open_storage words the error
        return open_storage(url)
    if (parsed.get_backend_name() == "sqlite" and parsed.database
            and parsed.database != ":memory:" and not Path(parsed.database).is_file()):
        raise StorageError(f"storage {mask_url(url)!r}: no such database file; run "
                           f"`tuner run` first, or pass --storage.")
    return open_storage(url)


def resolve_run(storage: optuna.storages.BaseStorage, run: str | None = None) -> str:
    """``run`` if the storage holds it; by default the newest run."""
    names = run_names(storage)
    if not names:
        raise NoSuchRun("the storage holds no tuner run; start one with `tuner run`.")
    if run is None:
        return names[-1]
    if run not in names:
        raise NoSuchRun(f"no run {run!r} in the storage; runs: {', '.join(names)}.")
    return run


def load_stage_studies(storage: optuna.storages.BaseStorage, run: str
                       ) -> dict[str, optuna.Study]:
    """The run's stage studies that exist, in pipeline order."""
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, False)}
    return {stage: optuna.load_study(study_name=study_name(run, stage), storage=storage)
            for stage in STAGES if study_name(run, stage) in existing}


def history_rows(trial: FrozenTrial) -> list[dict[str, Any]]:
    return list(trial.user_attrs.get("history", []))


def _finite(x: Any) -> float | None:
    """A float, or None for NaN, inf and missing values (JSON- and plot-friendly)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _trial_state(t: FrozenTrial) -> str:
    if t.state == TrialState.PRUNED and "diverged" in t.user_attrs:
        return "diverged"
    return t.state.name.lower()


def _param(t: FrozenTrial, name: str) -> Any:
    return trial_params(t).get(name)


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that ran to an end (complete or pruned): one per grid point. A running trial
    stores its history only when it ends, and a failed one is run again."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# --- the LR range test ---------------------------------------------------------------------

@dataclass(frozen=True)
class RangeTestInfo:
    """The (mean) range test curve, the decision read off it and the rules beside it."""

    lrs: list[float]  # per step
    train_losses: list[float | None]  # per step, raw
    train_smoothed: list[float | None]  # bias-corrected EMA: what the stop rule looks at
    val_lrs: list[float]
    val_losses: list[float | None]  # mean over the repeats
    val_accuracies: list[float | None]
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


def get_range_test_info(study: optuna.Study, curve_attr: str = "curve") -> RangeTestInfo | None:
    """The LR range test of a ``lr_range`` study; None before the test has finished."""
    trials = [t for t in study.get_trials(deepcopy=False) if curve_attr in t.user_attrs]
    if not trials:
        return None
    trial = trials[-1]
    return range_info_from_attrs(trial.user_attrs, study.user_attrs.get(DECISION_ATTR),
                                 study.user_attrs.get(CONFIG_ATTR) or {})


def range_info_from_attrs(attrs: dict[str, Any], decision: dict[str, Any] | None,
                          config: dict[str, Any], prefix: str = "") -> RangeTestInfo:
    curve = attrs[f"{prefix}curve"]
    cfg = config.get("lr_range", {})
    lrs = [float(x) for x in curve["lrs"]]
    raw = [_finite(x) for x in curve["train_losses"]]
    n_finite = next((i for i, x in enumerate(raw) if x is None), len(raw))
    finite = [x for x in raw[:n_finite] if x is not None]
    smoothed: list[float | None] = [*ema(finite, cfg.get("smooth", 0.9)),
                                    *([None] * (len(raw) - n_finite))]
    stop_lr = stop_loss = None
    stop_step = curve.get("stop_step")
    if stop_step is not None and lrs:
        i = max(0, min(int(stop_step), len(lrs)) - 1)
        stop_lr = lrs[i]
        stop_loss = next((smoothed[j] for j in range(i, -1, -1) if smoothed[j] is not None),
                         None)
    each = attrs.get(f"{prefix}val_losses_each") or []
    suggestions = {k: float(v) for k, v in (attrs.get(f"{prefix}suggestions") or {}).items()
                   if _finite(v) is not None}
    if decision is not None:
        min_lr, max_lr, why = decision.get("min_lr"), decision.get("max_lr"), decision["why"]
    elif "max_lr" in attrs:  # a batch-size trial carries its own range
        min_lr, max_lr, why = attrs.get("min_lr"), attrs["max_lr"], ""
    else:
        min_lr = max_lr = None
        why = attrs.get("no_range", "no LR range was decided (see the run's log).")
    return RangeTestInfo(
        lrs=lrs, train_losses=raw, train_smoothed=smoothed,
        val_lrs=[float(x) for x in curve["val_lrs"]],
        val_losses=[_finite(x) for x in curve["val_losses"]],
        val_accuracies=[_finite(x) for x in curve["val_accuracies"]],
        val_losses_each=[[_finite(x) for x in losses] for losses in each] if len(each) > 1
        else [],
        log_lr=cfg.get("mode", "exp") == "exp",
        min_lr=min_lr, max_lr=max_lr, suggestions=suggestions,
        stop_reason=curve.get("stop_reason", ""), stop_lr=stop_lr, stop_loss=stop_loss,
        batch_size=(decision or {}).get("batch_size", config.get("train", {}).get("batch_size")),
        why=why)


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


# --- grid stages: momentum, weight decay, batch size, final ---------------------------------

@dataclass(frozen=True)
class TrialCurve:
    """One grid trial's history: one entry per report (an epoch, or a share of the budget)."""

    number: int
    value: Any  # the grid value (max momentum, weight decay, batch size or seed)
    state: str  # complete | pruned | diverged | fail | running
    chosen: bool
    reports: list[int]  # 1, 2, ...: epochs for the per-epoch stages
    steps: list[int]
    seconds: list[float]  # training seconds so far (evaluation not counted)
    train_losses: list[float | None]
    val_losses: list[float | None]  # empty for final training (no validation split)
    val_accuracies: list[float | None]
    objective: float | None  # the trial's value: final val loss, or test accuracy
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


def _trial_curve(t: FrozenTrial, param: str, chosen: Any) -> TrialCurve:
    rows = history_rows(t)
    value = _param(t, param)
    scalars = {k: v for k, v in t.user_attrs.items()
               if isinstance(v, int | float | str | bool) and k not in ("diverged", "pruned_at")}
    return TrialCurve(
        number=t.number, value=value, state=_trial_state(t),
        chosen=chosen is not None and value == chosen and t.state == TrialState.COMPLETE,
        reports=list(range(1, len(rows) + 1)),
        steps=[int(r["step"]) for r in rows],
        seconds=[float(r["seconds"]) for r in rows],
        train_losses=[_finite(r.get("train_loss")) for r in rows],
        val_losses=[_finite(r.get("val_loss")) for r in rows if "val_loss" in r],
        val_accuracies=[_finite(r.get("val_accuracy")) for r in rows if "val_accuracy" in r],
        objective=_finite(t.value) if t.state == TrialState.COMPLETE else None,
        pruned_at=t.user_attrs.get("pruned_at"), diverged=t.user_attrs.get("diverged"),
        attrs=scalars)


@dataclass(frozen=True)
class GridStageInfo:
    """A stage that trains one short run per grid value (momentum, weight decay, batch size)."""

    stage: str
    param: str
    label: str
    chosen: Any  # None before the stage has decided
    trials: list[TrialCurve]  # sorted by value
    planned_reports: int | None  # epochs (or reports) per run, from the configuration
    why: str
    budget_s: float | None = None  # batch size: training seconds per candidate
    range_tests: dict[Any, RangeTestInfo] = field(default_factory=dict)  # batch size: per size


def get_grid_stage_info(study: optuna.Study, stage: str) -> GridStageInfo | None:
    param, label = GRID_PARAMS[stage]
    decision = study.user_attrs.get(DECISION_ATTR) or {}
    config = study.user_attrs.get(CONFIG_ATTR) or {}
    chosen = decision.get(param) if stage != "final" else None
    trials = [t for t in _finished(study) if _param(t, param) is not None]
    if not trials:
        return None
    curves = sorted((_trial_curve(t, param, chosen) for t in trials),
                    key=lambda c: (c.value, c.number))
    stage_cfg = config.get(stage, {})
    planned = stage_cfg.get("reports") if stage == "batch_size" else stage_cfg.get("epochs")
    ranges = {}
    if stage == "batch_size":
        for t in trials:
            if "range_curve" in t.user_attrs:
                ranges[_param(t, param)] = range_info_from_attrs(t.user_attrs, None, config,
                                                                 prefix="range_")
    return GridStageInfo(stage=stage, param=param, label=label, chosen=chosen, trials=curves,
                         planned_reports=planned, why=decision.get("why", "not decided yet"),
                         budget_s=decision.get("budget_s", stage_cfg.get("budget_s")),
                         range_tests=ranges)


@dataclass(frozen=True)
class RefinePoint:
    number: int
    max_lr: float
    momentum: float
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


def get_refine_info(study: optuna.Study) -> RefineInfo | None:
    """The refinement's trials, or None where it ran none (it is off by default)."""
    trials = [t for t in study.get_trials(deepcopy=False) if "max_lr" in t.params]
    if not trials:
        return None
    decision = study.user_attrs.get(DECISION_ATTR) or {}
    points = [RefinePoint(t.number, t.params["max_lr"], t.params["max_momentum"],
                          t.params["weight_decay"], _trial_state(t),
                          t.value if t.state == TrialState.COMPLETE else None,
                          int(t.user_attrs.get("repeat", 0)))
              for t in sorted(trials, key=lambda t: t.number)]
    chosen = None
    if decision:
        matches = [p for p in points if p.value is not None and not p.repeat
                   and p.max_lr == decision["max_lr"]
                   and p.momentum == decision["max_momentum"]
                   and p.weight_decay == decision["weight_decay"]]
        chosen = matches[0].number if matches else None
    return RefineInfo(points, points[0].number, chosen, decision.get("why", "not decided yet"))


@dataclass(frozen=True)
class FinalInfo:
    """Final training: the 1cycle schedule it ran (recomputed), its curves, its test scores."""

    trials: list[TrialCurve]  # one per seed; train loss per epoch, no validation
    schedule_epochs: list[float]  # x of the schedule, in epochs
    schedule_lrs: list[float]
    schedule_momenta: list[float]
    scored_on: str  # "test", or "val" for data without a test split (trained on train only)
    accuracy: float | None  # on that split, mean over seeds
    accuracy_sd: float | None
    loss: float | None
    hparams: dict[str, Any]  # lr_min, lr_max, mom_max, mom_min, weight_decay, batch_size
    why: str


def schedule_points(total_steps: int, hp: dict[str, Any], cycle_fraction: float,
                    final_div: float, max_points: int = 200) -> tuple[list[int], list[float],
                                                                        list[float]]:
    """The 1cycle LR and momentum at up to ``max_points`` steps, corners included."""
    last = total_steps - 1
    corners = {0, last, round(cycle_fraction / 2 * last), round(cycle_fraction * last)}
    n = min(max_points, total_steps)
    steps = sorted({round(i * last / max(n - 1, 1)) for i in range(n)} | corners)
    values = [one_cycle(s, total_steps, hp["lr_min"], hp["lr_max"], hp["mom_max"],
                        hp["mom_min"], cycle_fraction, final_div) for s in steps]
    return steps, [v.lr for v in values], [v.momentum for v in values]


def get_final_info(study: optuna.Study) -> FinalInfo | None:
    grid = get_grid_stage_info(study, "final")
    decision = study.user_attrs.get(DECISION_ATTR) or {}
    config = study.user_attrs.get(CONFIG_ATTR) or {}
    if grid is None:
        return None
    split = decision.get("scored_on", "test")
    keys = ("lr_min", "lr_max", "mom_max", "mom_min", "weight_decay", "batch_size")
    hp = {k: decision[k] for k in keys if k in decision}
    xs: list[float] = []
    lrs: list[float] = []
    moms: list[float] = []
    with_steps = [c for c in grid.trials if c.steps]
    if len(hp) == len(keys) and with_steps:
        trial = max(with_steps, key=lambda c: len(c.steps))
        per_epoch = trial.steps[0]
        epochs = decision.get("epochs", config.get("final", {}).get("epochs", len(trial.steps)))
        sched = config.get("schedule", {})
        steps, lrs, moms = schedule_points(per_epoch * epochs, hp,
                                           sched.get("cycle_fraction", 0.9),
                                           sched.get("final_div", 100.0))
        xs = [s / per_epoch for s in steps]
    return FinalInfo(trials=grid.trials, schedule_epochs=xs, schedule_lrs=lrs,
                     schedule_momenta=moms, scored_on=split,
                     accuracy=decision.get(f"{split}_accuracy"),
                     accuracy_sd=decision.get(f"{split}_accuracy_sd"),
                     loss=decision.get(f"{split}_loss"), hparams=hp,
                     why=decision.get("why", "not finished yet"))


# --- the whole run --------------------------------------------------------------------------

@dataclass(frozen=True)
class StageSummary:
    stage: str
    title: str
    status: str  # done | started | not started
    chosen: str  # the decision in a few words ("" before it is made)
    why: str
    seconds: float | None
    trials: dict[str, int]  # count by state


@dataclass(frozen=True)
class RunInfo:
    run: str
    storage: str  # password masked
    config: dict[str, Any]
    environment: dict[str, Any]
    environment_recorded: bool  # False: the run recorded none; the report's own is shown
    tool: dict[str, Any]  # version and storage schema of the tuner that started the run
    stages: list[StageSummary]
    decisions: dict[str, dict[str, Any]]
    range_test: RangeTestInfo | None
    momentum: GridStageInfo | None
    weight_decay: GridStageInfo | None
    batch_size: GridStageInfo | None
    final: FinalInfo | None
    refine: RefineInfo | None = None

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds or 0.0 for s in self.stages)


def split_name(split: str) -> str:
    """How a final score's split is called: test, or validation (data without a test split)."""
    return "test" if split == "test" else "validation"


def decision_text(stage: str, d: dict[str, Any]) -> str:
    """A stage's decision in a few words (the summary table, the dashboard notes)."""
    if stage == "lr_range":
        return f"LR {d['min_lr']:.3g} – {d['max_lr']:.3g}"
    if stage == "momentum":
        return f"max momentum {d['max_momentum']:g} (cycling down to {d['min_momentum']:g})"
    if stage == "weight_decay":
        return f"weight decay {d['weight_decay']:g}"
    if stage == "batch_size":
        return f"batch size {d['batch_size']} (LR {d['min_lr']:.3g} – {d['max_lr']:.3g})"
    if stage == "refine":
        return (f"LR {d['min_lr']:.3g} – {d['max_lr']:.3g}, max momentum {d['max_momentum']:g}, "
                f"weight decay {d['weight_decay']:g}, batch size {d['batch_size']}")
    if stage == "final":
        seeds = d.get("seeds", [])
        split = d.get("scored_on", "test")
        name = split_name(split)
        return (f"{name} accuracy {100 * d[f'{split}_accuracy']:.2f}% ± "
                f"{100 * d.get(f'{split}_accuracy_sd', 0.0):.2f} over {len(seeds)} seed(s), "
                f"{name} loss {d[f'{split}_loss']:.4f}")
    return ", ".join(f"{k} {v}" for k, v in d.items() if k not in ("why", "seconds"))


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions and hardware of this process (recorded with each stage the run finishes)."""
    import torch

    env: dict[str, Any] = {
        "tuner": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "optuna": optuna.__version__, "platform": platform.platform(terse=True),
        "cpu_threads": torch.get_num_threads(),
    }
    if device is not None:
        env["device"] = str(device)
        if torch.device(device).type == "cuda" and torch.cuda.is_available():
            env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env


def _stage_summary(stage: str, study: optuna.Study | None) -> StageSummary:
    if study is None:
        return StageSummary(stage, STAGE_TITLES[stage], "not started", "", "", None, {})
    decision = study.user_attrs.get(DECISION_ATTR)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[_trial_state(t)] = counts.get(_trial_state(t), 0) + 1
    if decision is None:
        return StageSummary(stage, STAGE_TITLES[stage], "started", "", "", None, counts)
    return StageSummary(stage, STAGE_TITLES[stage], "done", decision_text(stage, decision),
                        decision.get("why", ""), decision.get("seconds"), counts)


def load_run(storage: optuna.storages.BaseStorage | str, run: str | None = None) -> RunInfo:
    """Everything the report shows about ``run`` (default: the newest run in the storage)."""
    url = storage if isinstance(storage, str) else getattr(storage, "url", "")
    if isinstance(storage, str):
        storage = open_existing_storage(storage)
    run = resolve_run(storage, run)
    studies = load_stage_studies(storage, run)
    config: dict[str, Any] = {}
    env: dict[str, Any] = {}
    tool: dict[str, Any] = {}
    for study in studies.values():
        config = config or study.user_attrs.get(CONFIG_ATTR) or {}
        env = env or study.user_attrs.get(ENVIRONMENT_ATTR) or {}
        tool = tool or study.user_attrs.get(TOOL_ATTR) or {}
    recorded = bool(env)
    if not env:
        env = environment()
    decisions = {s: st.user_attrs[DECISION_ATTR] for s, st in studies.items()
                 if DECISION_ATTR in st.user_attrs}

    def grid(stage: str) -> GridStageInfo | None:
        return get_grid_stage_info(studies[stage], stage) if stage in studies else None

    return RunInfo(
        run=run, storage=mask_url(url) if url else "", config=config, environment=env,
        environment_recorded=recorded, tool=tool,
        stages=[_stage_summary(s, studies.get(s)) for s in STAGES], decisions=decisions,
        range_test=get_range_test_info(studies["lr_range"]) if "lr_range" in studies else None,
        momentum=grid("momentum"), weight_decay=grid("weight_decay"),
        batch_size=grid("batch_size"),
        final=get_final_info(studies["final"]) if "final" in studies else None,
        refine=get_refine_info(studies["refine"]) if "refine" in studies else None)


# --- tables ---------------------------------------------------------------------------------

def summary_frame(info: RunInfo) -> pd.DataFrame:
    """One row per stage: status, decision, time, trials by state."""
    import pandas as pd

    return pd.DataFrame([{
        "stage": s.stage, "status": s.status, "decision": s.chosen,
        "seconds": None if s.seconds is None else round(s.seconds, 1),
        "trials": ", ".join(f"{n} {k}" for k, n in sorted(s.trials.items())), "why": s.why,
    } for s in info.stages]).set_index("stage")


def trials_table(storage: optuna.storages.BaseStorage | str, run: str | None = None
                 ) -> pd.DataFrame:
    """Every trial of every stage of ``run``, one row each: grid value, state, outcome, scalar
    user attributes and the last validation (or training) measurement."""
    import pandas as pd

    if isinstance(storage, str):
        storage = open_existing_storage(storage)
    run = resolve_run(storage, run)
    rows = []
    for stage, study in load_stage_studies(storage, run).items():
        for t in study.get_trials(deepcopy=False):
            rows.append(_trial_row(stage, t))
    columns = ["stage", "number", "state", "value", "param", "param_value", "reports",
               "last_val_loss", "last_val_accuracy", "last_train_loss", "train_seconds",
               "pruned_at", "diverged", "duration_s", "datetime_start"]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    rest = sorted(c for c in frame.columns if c not in columns)
    return frame[[c for c in columns if c in frame.columns] + rest]


def _trial_row(stage: str, t: FrozenTrial) -> dict[str, Any]:
    rows = history_rows(t)
    last = rows[-1] if rows else {}
    param = GRID_PARAMS.get(stage, ("", ""))[0]
    row: dict[str, Any] = {
        "stage": stage, "number": t.number, "state": _trial_state(t), "value": t.value,
        "param": param or None, "param_value": _param(t, param) if param else None,
        "reports": len(rows) or len(t.intermediate_values),
        "last_val_loss": last.get("val_loss"), "last_val_accuracy": last.get("val_accuracy"),
        "last_train_loss": last.get("train_loss"),
        "pruned_at": t.user_attrs.get("pruned_at"), "diverged": t.user_attrs.get("diverged"),
        "duration_s": t.duration.total_seconds() if t.duration else None,
        "datetime_start": t.datetime_start,
    }
    for key, value in t.user_attrs.items():
        if isinstance(value, int | float | str | bool) and key not in row:
            row[key] = value
    if stage == "lr_range" and "suggestions" in t.user_attrs:
        for key, value in t.user_attrs["suggestions"].items():
            row[f"suggestion_{key}"] = value
    return row


def history_table(storage: optuna.storages.BaseStorage | str, run: str | None = None
                  ) -> pd.DataFrame:
    """Every measurement of every grid trial: stage, trial, report, step, seconds, losses."""
    import pandas as pd

    if isinstance(storage, str):
        storage = open_existing_storage(storage)
    run = resolve_run(storage, run)
    rows = []
    for stage, study in load_stage_studies(storage, run).items():
        param = GRID_PARAMS.get(stage, ("", ""))[0]
        for t in study.get_trials(deepcopy=False):
            for k, r in enumerate(history_rows(t), start=1):
                rows.append({"stage": stage, "number": t.number, "param": param or None,
                             "param_value": _param(t, param) if param else None,
                             "state": _trial_state(t), "report": k, **r})
    return pd.DataFrame(rows)


def range_test_table(info: RangeTestInfo) -> pd.DataFrame:
    """The range test per step; validation columns where it was measured."""
    import pandas as pd

    frame = pd.DataFrame({"step": range(1, len(info.lrs) + 1), "lr": info.lrs,
                          "train_loss": info.train_losses,
                          "train_loss_smoothed": info.train_smoothed})
    val = pd.DataFrame({"lr": info.val_lrs, "val_loss": info.val_losses,
                        "val_accuracy": info.val_accuracies})
    return pd.concat([frame.assign(kind="train"), val.assign(kind="val")], ignore_index=True)


def write_csv(storage: optuna.storages.BaseStorage | str, run: str | None, directory: Path
              ) -> list[Path]:
    """``trials.csv``, ``history.csv`` and ``range_test.csv`` of ``run`` under ``directory``."""
    if isinstance(storage, str):
        storage = open_existing_storage(storage)
    run = resolve_run(storage, run)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "trials.csv", directory / "history.csv"]
    trials_table(storage, run).to_csv(paths[0], index=False)
    history_table(storage, run).to_csv(paths[1], index=False)
    studies = load_stage_studies(storage, run)
    info = get_range_test_info(studies["lr_range"]) if "lr_range" in studies else None
    if info is not None:
        paths.append(directory / "range_test.csv")
        range_test_table(info).to_csv(paths[-1], index=False)
    return paths


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def default_report_path(url: str, run: str) -> Path:
    """``reports/RUN.html`` beside a SQLite file, else under the working directory."""
    return storage_folder(url) / "reports" / f"{safe_filename(run)}.html"


def downsample(xs: Sequence[Any], ys: Sequence[Any], max_points: int) -> tuple[list, list]:
    """At most ``max_points`` points, evenly spaced by index, the first and last kept."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    idx = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [xs[i] for i in idx], [ys[i] for i in idx]
