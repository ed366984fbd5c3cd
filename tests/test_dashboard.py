"""tuner.dashboard: a note per stage, the range test figure and artifact, and ``tuner
dashboard`` serving them through optuna-dashboard's HTTP API."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from optuna.artifacts import FileSystemArtifactStore
from optuna_dashboard import get_note

from tuner.cli import main
from tuner.dashboard import (
    _system_attrs,
    annotate_run,
    annotate_stage,
    has_note,
    has_range_figure,
    is_loopback,
    stage_note,
)
from tuner.stages import STAGES, Decision, stage
from tuner.stages.base import HParams
from tuner.stages.final import FinalDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.momentum import MomentumDecision
from tuner.stages.weight_decay import WeightDecayDecision
from tuner.storage import Run, open_storage, study_name

from .conftest import TinyRun, tiny_config
from .hand_runs import (
    CHECKED,
    F1,
    READ,
    REGRESSION,
    check_lr,
    decide,
    finished_run,
    range_test_decided,
    stage_study,
    start_run,
    text_of,
)


def _decision_words(d: Decision) -> list[str]:
    """What a stage's note must say about its decision."""
    return [d.summary(), d.why]


def _without_notes(tiny_run: TinyRun, tmp_path: Path) -> Run:
    """A copy of the tiny run without dashboard notes, figures or artifacts."""
    db = tmp_path / "tuner.db"
    shutil.copy(tiny_run.path, db)
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM study_system_attributes WHERE key LIKE 'dashboard:%' OR "
                    "key LIKE 'artifacts:%'")
    return Run.find(f"sqlite:///{db}")


def test_annotate_run_writes_what_each_decided_stage_lacks(tiny_run: TinyRun, tmp_path: Path
                                                          ) -> None:
    run = _without_notes(tiny_run, tmp_path)
    written = annotate_run(run)
    assert sorted(written) == sorted([*(f"{st.name} note" for st in STAGES), "lr_range figure"])
    studies = run.studies()
    for st in STAGES:
        note = get_note(studies[st.name])
        assert note.startswith(f"### {st.title}"), st.name
        for words in _decision_words(tiny_run.result.decisions[st.name]):
            assert words in note, (st.name, words)
    assert has_range_figure(studies["lr_range"], checked=True)  # the LR check's max LR marked
    assert annotate_run(run) == []  # nothing is written twice


def test_annotate_stage_writes_the_note_and_the_range_figure(tiny_run: TinyRun, tmp_path: Path
                                                            ) -> None:
    studies = _without_notes(tiny_run, tmp_path).studies()
    decision = tiny_run.result.decisions["lr_range"]
    assert not has_note(studies["lr_range"]) and not has_range_figure(studies["lr_range"])
    annotate_stage(stage("lr_range"), studies["lr_range"], decision)
    assert decision.why in get_note(studies["lr_range"])
    assert has_range_figure(studies["lr_range"])


def test_the_lr_check_redraws_the_range_figure_with_its_max_lr(tmp_path: Path) -> None:
    run = range_test_decided(tmp_path)
    rt = run.studies()["lr_range"]
    annotate_stage(stage("lr_range"), rt, READ)  # as the pipeline does, before the check
    assert has_range_figure(rt) and not has_range_figure(rt, checked=True)
    check = check_lr(run)
    annotate_stage(stage("lr_check"), check, CHECKED)
    assert has_range_figure(rt, checked=True)
    note = get_note(check)
    assert note.startswith("### Max LR check")
    assert all(words in note for words in _decision_words(CHECKED))
    figure = "".join(v for k, v in _system_attrs(rt).items() if k.startswith("dashboard:plot"))
    assert "checked max LR 0.141 (x1.41)" in figure


def test_tuner_dashboard_redraws_a_range_figure_drawn_before_the_check(tmp_path: Path) -> None:
    run = range_test_decided(tmp_path)
    assert sorted(annotate_run(run)) == ["lr_range figure", "lr_range note"]
    check_lr(run)  # decided, but its hook never ran (a worker killed before it)
    (tmp_path / "artifacts").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    assert sorted(annotate_run(run, store)) == [
        "lr_check note", "lr_range artifact", "lr_range figure"]
    assert has_range_figure(run.studies()["lr_range"], checked=True)
    (svg,) = (tmp_path / "artifacts").rglob("*")
    assert "checked max LR 0.141 (x1.41)" in svg.read_text()
    assert annotate_run(run, store) == []


def test_a_note_that_cannot_be_written_never_fails_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    study = stage_study(start_run(tmp_path), "momentum")

    def broken(*_a: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("optuna_dashboard.save_note", broken)
    with caplog.at_level(logging.WARNING):
        annotate_stage(stage("momentum"), study,
                       MomentumDecision(max_momentum=0.9, min_momentum=0.85, why="because"))
    assert "could not write the dashboard note of r/momentum" in caplog.text
    assert "disk full" in caplog.text


def test_stage_note_says_what_and_why() -> None:
    note = stage_note(stage("weight_decay"),
                      WeightDecayDecision(weight_decay=1e-4, why="lowest loss", seconds=3))
    assert note.startswith("### Weight decay")
    assert "weight decay 0.0001" in note and "lowest loss" in note and "3.0 s" in note


def test_range_test_note_adds_where_it_stopped_and_the_suggestions() -> None:
    decision = RangeDecision(min_lr=0.01, max_lr=0.1, batch_size=32, why="read off",
                             stop_reason="ran to end_lr", suggestions={"valley": 0.02})
    note = stage_note(stage("lr_range"), decision)
    assert "LR 0.01 – 0.1" in note and "read off" in note
    assert decision.details() in note and "valley 0.02" in note and "figure" in note


def test_range_and_final_notes_say_which_optimizer_ran() -> None:
    decision = RangeDecision(min_lr=0.01, max_lr=0.1, batch_size=32, why="read off")
    note = stage_note(stage("lr_range"), decision, tiny_config())
    assert ("**Trained with:** SGD, momentum 0.9 (constant during the test); loss "
            "cross-entropy") in note
    assert "Trained with" not in stage_note(stage("lr_range"), decision)  # config unknown
    final = FinalDecision(values=HParams(0.01, 0.1, 0.95, 0.85, 0.0, 32), epochs=3,
                          scored_on="test", loss=0.3, loss_sd=0.0, losses=[0.3], seeds=[0],
                          optimizer="adamw", why="w")
    assert "**Trained with:** AdamW (1cycle)" in stage_note(stage("final"), final)
    assert "accuracy" not in stage_note(stage("final"), final).lower()


def test_notes_of_a_regression_show_no_accuracy(tmp_path: Path) -> None:
    run = finished_run(tmp_path, REGRESSION, None)
    studies = run.studies()
    # As the pipeline writes them (the range test's with its figure), then the rest.
    for name in ("lr_range", "final"):
        annotate_stage(stage(name), studies[name], run.decisions()[name])
    (tmp_path / "artifacts").mkdir()
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    assert sorted(annotate_run(run, store)) == sorted(
        ["lr_check note", "momentum note", "weight_decay note", "lr_recheck note",
         "batch_size note", "refine note", "lr_range artifact"])
    notes = {name: get_note(study) for name, study in studies.items()}
    (svg,) = (tmp_path / "artifacts").rglob("*")
    figure = [v for k, v in _system_attrs(studies["lr_range"]).items()
              if k.startswith("dashboard:plot_data:")]
    assert figure and "accuracy" not in text_of(*notes.values(), *figure, svg.read_text())
    assert ("**Trained with:** AdamW, beta1 0.9, beta2 0.99 (constant during the test); loss "
            "MSE") in notes["lr_range"]
    assert "AdamW, beta1 0.9, beta2 0.99" in "".join(figure) + svg.read_text()
    assert "checked max LR 0.141 (x1.41)" in svg.read_text()
    assert CHECKED.summary() in notes["lr_check"] and CHECKED.why in notes["lr_check"]
    assert ("**Trained with:** AdamW, beta2 0.99 (1cycle); loss MSE; metric none"
            in notes["final"])
    assert "test loss 0.3100 ± 0.0140 over 2 seed(s)" in notes["final"]


def test_the_final_note_names_a_custom_metric(tmp_path: Path) -> None:
    run = finished_run(tmp_path, F1, 0.8)
    annotate_run(run)
    note = get_note(run.studies()["final"])
    assert "test f1 0.805 ± 0.007 over 2 seed(s)" in note
    assert "Adam, beta2 0.99 (1cycle); loss cross-entropy; metric f1" in note
    assert "accuracy" not in note.lower()


def test_a_stage_decided_later_gets_its_note_from_annotate_run(tmp_path: Path) -> None:
    run = start_run(tmp_path)
    study = stage_study(run, "weight_decay")
    assert annotate_run(run) == []  # nothing decided: nothing to say
    decide(study, WeightDecayDecision(weight_decay=0.0, why="w"))
    assert annotate_run(run) == ["weight_decay note"]
    assert "weight decay 0" in get_note(study)


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
    _without_notes(tiny_run, tmp_path)  # a run without notes: `tuner dashboard` writes them
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
        assert set(ids) == {study_name(tiny_run.run, s.name) for s in STAGES}
        for st in STAGES:
            detail = _get_json(f"{base}/api/studies/{ids[study_name(tiny_run.run, st.name)]}"
                               f"?after=0")
            note = detail["note"]["body"]
            for words in _decision_words(tiny_run.result.decisions[st.name]):
                assert words in note, (st.name, words, note)
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
    missing = tmp_path / "missing" / "missing.db"
    assert main(["dashboard", "--storage", f"sqlite:///{missing}"]) == 2
    assert "no such database file" in capsys.readouterr().err
    assert not missing.parent.exists()
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
