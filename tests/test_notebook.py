"""notebooks/inspect_run.ipynb executes against a small run without errors (so it never rots)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tuner.stages import STAGES

from .conftest import TinyRun

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "inspect_run.ipynb"


def test_inspect_run_notebook_executes(tiny_run: TinyRun, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs")
    monkeypatch.setenv("TUNER_STORAGE", tiny_run.url)  # the kernel inherits the environment
    monkeypatch.delenv("TUNER_RUN", raising=False)  # the newest run: the tiny one
    monkeypatch.setenv("PLOTLY_RENDERER", "json")  # figures as JSON, not plotly.js per output
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"run '{tiny_run.run}'" in text
    # the range test's decision in its own words (read at the minimum or at the half-way climb)
    assert f"lr_range: {tiny_run.result.decisions['lr_range'].why[:30]}" in text
    assert "lr_check: x" in text  # the LR check's why: "x1.41 the range test's 0.1: ..."
    assert "optimizer SGD · loss cross-entropy · metric accuracy" in text
    figures = [o for o in outputs if "application/json" in o.get("data", {})
               or "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) == len(STAGES)  # the tiny run refines too: every stage has a figure
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert len(tables) >= 4  # summary, trials, history, range test rules...
    assert "checked max LR" in "".join(o["data"].get("text/plain", "") for o in outputs
                                       if "data" in o)
