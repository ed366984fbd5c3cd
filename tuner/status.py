"""``tuner status``: runs, their stages, trial counts and decisions, as a pandas table."""

from __future__ import annotations

from typing import Any

import optuna
import pandas as pd

from tuner.pipeline import RunNotFound
from tuner.storage import STAGES, get_decision, open_storage, run_names, study_name, trial_counts


def short_decision(stage: str, d: dict[str, Any] | None) -> str:
    """A few words for a stage's decision ('' while it has none)."""
    if d is None:
        return ""
    if stage == "lr_range":
        return f"LR {d['min_lr']:.3g} - {d['max_lr']:.3g}"
    if stage == "momentum":
        return f"momentum {d['max_momentum']:g} -> {d['min_momentum']:g}"
    if stage == "weight_decay":
        return f"weight decay {d['weight_decay']:g}"
    if stage == "batch_size":
        return f"batch {d['batch_size']} (LR {d['min_lr']:.3g} - {d['max_lr']:.3g})"
    if stage == "final":
        return (f"test accuracy {100 * d['test_accuracy']:.2f}% "
                f"± {100 * d.get('test_accuracy_sd', 0.0):.2f}")
    return str(d)


def status_table(storage: str, run: str | None = None) -> pd.DataFrame:
    rdb = open_storage(storage)
    runs = run_names(rdb)
    if run is not None:
        if run not in runs:
            raise RunNotFound(f"run {run!r} does not exist; runs there: "
                              f"{', '.join(runs) or 'none'}.")
        runs = [run]
    existing = set(optuna.get_all_study_names(rdb))
    rows = []
    for name in runs:
        for stage in STAGES:
            if study_name(name, stage) not in existing:
                rows.append({"run": name, "stage": stage, "state": "not started"})
                continue
            study = optuna.load_study(study_name=study_name(name, stage), storage=rdb)
            counts = trial_counts(study)
            decision = get_decision(study)
            busy = counts["running"] or counts["waiting"]
            state = "done" if decision else "running" if busy else "pending"
            rows.append({"run": name, "stage": stage, "state": state, **counts,
                         "decision": short_decision(stage, decision)})
    columns = ["run", "stage", "state", "complete", "pruned", "running", "waiting", "failed",
               "decision"]
    table = pd.DataFrame(rows, columns=columns)
    counts = columns[3:8]
    table[counts] = table[counts].fillna(0).astype(int)
    return table.fillna("")
