"""tuner.dashboard: a note per stage, the range test figure and artifact, and ``tuner
dashboard`` serving them through optuna-dashboard's HTTP API."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna_dashboard import get_note

from tuner.cli import main
from tuner.dashboard import annotate_stage, has_range_figure, is_loopback, stage_note
from tuner.storage import STAGES, open_storage, open_study, study_name

from .conftest import TinyRun


def _decision_words(stage: str, d: dict[str, Any]) -> list[str]:
    """What a stage's note must say about its decision."""
    return {"lr_range": [f"{d.get('max_lr', 0):.3g}", f"{d.get('min_lr', 0):.3g}"],
            "momentum": [f"{d.get('max_momentum', 0):g}"],
            "weight_decay": [f"weight decay {d.get('weight_decay', 0):g}"],
            "batch_size": [f"batch size {d.get('batch_size')}"],
            "refine": [f"batch size {d.get('batch_size')}"],
            "final": [f"{100 * d.get('test_accuracy', 0):.2f}%"]}[stage] + [d["why"]]


def test_each_stage_of_a_run_carries_its_note(tiny_run: TinyRun) -> None:
    storage = open_storage(tiny_run.url)
    for stage in STAGES:
        study = optuna.load_study(study_name=study_name(tiny_run.run, stage), storage=storage)
        note = get_note(study)
        for words in _decision_words(stage, tiny_run.result.decisions[stage]):
            assert words in note, (stage, words)
        assert study.user_attrs["environment"]["torch"]
    lr = optuna.load_study(study_name=f"{tiny_run.run}/lr_range", storage=storage)
    assert has_range_figure(lr)


def test_a_note_that_cannot_be_written_never_fails_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    study = open_study(open_storage(f"sqlite:///{tmp_path}/t.db"), "r", "momentum")

    def broken(*_a: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("optuna_dashboard.save_note", broken)
    with caplog.at_level(logging.WARNING):
        annotate_stage(study, "momentum", {"max_momentum": 0.9, "min_momentum": 0.85,
                                           "why": "because"})
    assert "could not write the dashboard note of r/momentum" in caplog.text
    assert "disk full" in caplog.text


def test_stage_note_says_what_and_why() -> None:
    note = stage_note("weight_decay", {"weight_decay": 1e-4, "why": "lowest loss", "seconds": 3})
    assert "weight decay 0.0001" in note and "lowest loss" in note and "3.0 s" in note


def test_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 -- loopback only
        return response.headers.get("Content-Type", ""), response.read()


def _get_json(url: str) -> Any:
    return json.loads(_get(url)[1])


def test_tuner_dashboard_serves_every_stage_with_its_note(tiny_run: TinyRun, tmp_path: Path
                                                         ) -> None:
    db = tmp_path / "tuner.db"
    db.write_bytes(tiny_run.path.read_bytes())
    with sqlite3.connect(db) as con:  # a run from before notes: `tuner dashboard` writes them
        con.execute("DELETE FROM study_system_attributes WHERE key LIKE 'dashboard:%' OR "
                    "key LIKE 'artifacts:%'")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", "dashboard", "--storage", f"sqlite:///{db}",
         "--port", str(port), "--artifact-dir", str(tmp_path / "artifacts")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        studies = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        assert studies is not None, f"the dashboard never answered: {proc.stderr.read()}"
        ids = {s["study_name"]: s["study_id"] for s in studies}
        assert set(ids) == {study_name(tiny_run.run, s) for s in STAGES}
        for stage in STAGES:
            detail = _get_json(f"{base}/api/studies/{ids[study_name(tiny_run.run, stage)]}"
                               f"?after=0")
            note = detail["note"]["body"]
            for words in _decision_words(stage, tiny_run.result.decisions[stage]):
                assert words in note, (stage, words, note)
        lr_id = ids[study_name(tiny_run.run, "lr_range")]
        detail = _get_json(f"{base}/api/studies/{lr_id}?after=0")
        assert [g["id"] for g in detail["plotly_graph_objects"]] == ["lr_range_test"]
        (artifact,) = detail["artifacts"]
        assert artifact["filename"] == "lr_range_test.svg"
        kind, body = _get(f"{base}/artifacts/{lr_id}/{artifact['artifact_id']}")
        assert kind == "image/svg+xml" and body.startswith(b"<svg")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert f"http://127.0.0.1:{port}/dashboard" in out


def test_dashboard_errors_are_one_line(tiny_run: TinyRun, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.db"
    assert main(["dashboard", "--storage", f"sqlite:///{missing}"]) == 2
    assert "no such database file" in capsys.readouterr().err
    assert not missing.exists()
    empty = tmp_path / "empty.db"
    open_storage(f"sqlite:///{empty}")
    assert main(["dashboard", "--storage", f"sqlite:///{empty}"]) == 2
    assert "holds no tuner run" in capsys.readouterr().err
    db = tmp_path / "tuner.db"
    db.write_bytes(tiny_run.path.read_bytes())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["dashboard", "--storage", f"sqlite:///{db}", "--port", str(port),
                     "--artifact-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"tuner: error: cannot serve on 127.0.0.1:{port}")
    assert "\n" not in err
