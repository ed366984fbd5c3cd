"""A run as pandas tables: the stage summary, every trial, every measurement, the range test;
and the same as CSV files (``tuner report --csv DIR``). Read-only: no torch, no training.

The metric's columns are ``val_metric`` and ``last_val_metric`` whatever the metric (the run's
``[train] metric``: its name is in the summary's decisions and the report), empty where the run
measured none."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial

from tuner.report_data import (
    RangeTestInfo,
    RunInfo,
    find_run,
    get_range_test_info,
    history_rows,
    trial_param,
    trial_state,
)
from tuner.stages import STAGES, Stage, lr_range

if TYPE_CHECKING:
    import pandas as pd

    from tuner.storage import Run

TRIAL_COLUMNS = ["stage", "number", "state", "value", "param", "param_value", "reports",
                 "last_val_loss", "last_val_metric", "last_train_loss", "train_seconds",
                 "pruned_at", "diverged", "duration_s", "datetime_start"]


def summary_frame(info: RunInfo) -> pd.DataFrame:
    """One row per stage: status, decision, time, trials by state."""
    import pandas as pd

    return pd.DataFrame([{
        "stage": s.stage, "status": s.status, "decision": s.chosen,
        "seconds": None if s.seconds is None else round(s.seconds, 1),
        "trials": ", ".join(f"{n} {k}" for k, n in sorted(s.trials.items())), "why": s.why,
    } for s in info.stages]).set_index("stage")


def _stage_trials(handle: Run) -> list[tuple[Stage, FrozenTrial]]:
    studies = handle.studies()
    return [(st, t) for st in STAGES if st.name in studies
            for t in studies[st.name].get_trials(deepcopy=False)]


def trials_table(source: Run | str, run: str | None = None) -> pd.DataFrame:
    """Every trial of every stage of ``run`` (default: the newest), one row each: grid value,
    state, outcome, scalar user attributes and the last validation (or training) measurement."""
    import pandas as pd

    frame = pd.DataFrame([_trial_row(st, t) for st, t in _stage_trials(find_run(source, run))])
    if frame.empty:
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    rest = sorted(c for c in frame.columns if c not in TRIAL_COLUMNS)
    return frame[[c for c in TRIAL_COLUMNS if c in frame.columns] + rest]


def _trial_row(st: Stage, t: FrozenTrial) -> dict[str, Any]:
    rows = history_rows(t)
    last = rows[-1] if rows else {}
    param, value = trial_param(st, t)
    row: dict[str, Any] = {
        "stage": st.name, "number": t.number, "state": trial_state(t), "value": t.value,
        "param": param, "param_value": value,
        "reports": len(rows) or len(t.intermediate_values),
        "last_val_loss": last.get("val_loss"), "last_val_metric": last.get("val_metric"),
        "last_train_loss": last.get("train_loss"),
        "pruned_at": t.user_attrs.get("pruned_at"), "diverged": t.user_attrs.get("diverged"),
        "duration_s": t.duration.total_seconds() if t.duration else None,
        "datetime_start": t.datetime_start,
    }
    for key, v in t.user_attrs.items():
        if isinstance(v, int | float | str | bool) and key not in row:
            row[key] = v
    for key, v in (t.user_attrs.get("suggestions") or {}).items():
        row[f"suggestion_{key}"] = v
    return row


def history_table(source: Run | str, run: str | None = None) -> pd.DataFrame:
    """Every measurement of every grid trial: stage, trial, report, step, seconds, losses."""
    import pandas as pd

    rows = []
    for st, t in _stage_trials(find_run(source, run)):
        param, value = trial_param(st, t)
        for k, r in enumerate(history_rows(t), start=1):
            rows.append({"stage": st.name, "number": t.number, "param": param,
                         "param_value": value, "state": trial_state(t), "report": k, **r})
    return pd.DataFrame(rows)


def range_test_table(info: RangeTestInfo) -> pd.DataFrame:
    """The range test per step; validation columns where it was measured (``val_metric``
    empty without a metric)."""
    import pandas as pd

    frame = pd.DataFrame({"step": range(1, len(info.lrs) + 1), "lr": info.lrs,
                          "train_loss": info.train_losses,
                          "train_loss_smoothed": info.train_smoothed})
    val = pd.DataFrame({"lr": info.val_lrs, "val_loss": info.val_losses,
                        "val_metric": info.val_metrics})
    return pd.concat([frame.assign(kind="train"), val.assign(kind="val")], ignore_index=True)


def write_csv(source: Run | str, run: str | None, directory: Path) -> list[Path]:
    """``trials.csv``, ``history.csv`` and ``range_test.csv`` of ``run`` under ``directory``."""
    handle = find_run(source, run)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "trials.csv", directory / "history.csv"]
    trials_table(handle).to_csv(paths[0], index=False)
    history_table(handle).to_csv(paths[1], index=False)
    study = handle.studies().get(lr_range.STAGE.name)
    info = get_range_test_info(study, handle.config()) if study is not None else None
    if info is not None:
        paths.append(directory / "range_test.csv")
        range_test_table(info).to_csv(paths[-1], index=False)
    return paths
