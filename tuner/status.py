"""``tuner status``: runs, their stages, trial counts and decisions, as a pandas table.

Read-only: a SQLite file that does not exist is an error (never created), and nothing here
imports torch or the pipeline.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tuner.config import ConfigError
from tuner.stages import STAGES
from tuner.storage import Run, mask_url, open_storage, read_decision, run_names, trial_counts

COUNTS = ["complete", "pruned", "running", "waiting", "failed"]
COLUMNS = ["run", "stage", "state", *COUNTS, "decision"]


def status_table(storage: str, run: str | None = None) -> pd.DataFrame:
    """One row per stage of each run in ``storage`` (or of ``run`` only): its state (done,
    running, pending, not started), its trials by state and its decision in a few words."""
    if run is not None:
        runs = [Run.find(storage, run)]
    else:
        rdb = open_storage(storage, create=False)
        runs = [Run(rdb, mask_url(storage), name) for name in run_names(rdb)]
    rows = [row for handle in runs for row in _run_rows(handle)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    table[COUNTS] = table[COUNTS].fillna(0).astype(int)
    return table.fillna("")


def _run_rows(handle: Run) -> list[dict[str, Any]]:
    try:
        handle.check_schema()
    except ConfigError:  # a run of another tuner version: its records are not readable here
        tool = handle.tool()
        return [{"run": handle.name, "stage": "", "state": "unreadable",
                 "decision": f"stored by tuner {tool.get('version', 'unknown')} (storage "
                             f"schema {tool.get('schema')})"}]
    studies = handle.studies()
    rows = []
    for st in STAGES:
        study = studies.get(st.name)
        if study is None:
            rows.append({"run": handle.name, "stage": st.name, "state": "not started"})
            continue
        counts = trial_counts(study)
        decision = read_decision(st, study)
        busy = counts["running"] or counts["waiting"]
        state = "done" if decision is not None else "running" if busy else "pending"
        rows.append({"run": handle.name, "stage": st.name, "state": state, **counts,
                     "decision": decision.summary() if decision is not None else ""})
    return rows
