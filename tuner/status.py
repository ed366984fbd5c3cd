"""``tuner status``: runs, their stages, trial counts and decisions, as a pandas table."""

from __future__ import annotations

import optuna
import pandas as pd

from tuner.pipeline import RunNotFound
from tuner.report_data import decision_text
from tuner.storage import STAGES, get_decision, open_storage, run_names, study_name, trial_counts


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
                         "decision": decision_text(stage, decision) if decision else ""})
    columns = ["run", "stage", "state", "complete", "pruned", "running", "waiting", "failed",
               "decision"]
    table = pd.DataFrame(rows, columns=columns)
    counts = columns[3:8]
    table[counts] = table[counts].fillna(0).astype(int)
    return table.fillna("")
