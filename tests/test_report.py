"""tuner.report: the figures, the self-contained HTML page, the CLI, and the page drawn in a
headless Chromium (every figure drew, no JavaScript error; a screenshot is kept)."""

from __future__ import annotations

import dataclasses
import html
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tuner.cli import main
from tuner.config import TrainConfig
from tuner.report import (
    default_report_path,
    figures,
    range_test_figure,
    render_html,
    safe_filename,
    write_report,
)
from tuner.report_data import load_run
from tuner.report_svg import range_test_svg
from tuner.stages import NAMES, STAGES
from tuner.storage import Run
from tuner.text import format_metric

from .conftest import TinyRun
from .hand_runs import F1, REGRESSION, finished_run, start_run, text_of

MAX_REPORT_BYTES = 5_000_000
ARTIFACTS = Path(__file__).parent / "artifacts"


def test_every_stage_has_its_figure(tiny_run: TinyRun) -> None:
    info = load_run(tiny_run.url)
    drawn = figures(info)
    assert [stage for stage, _, _ in drawn] == list(NAMES)
    assert all(why for _, why, _ in drawn)
    figs = {stage: fig for stage, _, fig in drawn}
    for st in STAGES:  # each titled as the registry names the stage
        assert figs[st.name].layout.title.text.startswith(st.title), st.name

    rt = figs["lr_range"]
    names = [t.name for t in rt.data]
    assert rt.layout.xaxis.type == "log"
    assert any(n.startswith("range read off the test") for n in names)
    (checked,) = [t for t in rt.data if t.name.startswith("checked max LR")]
    assert checked.name == info.range_test.checked.label
    assert list(checked.x) == pytest.approx([tiny_run.result.decisions["lr_check"].max_lr] * 2,
                                            rel=1e-4)
    assert "validation loss" in names and "training loss (smoothed)" in names
    assert sum(n.startswith("suggestion:") for n in names) == len(info.range_test.suggestions)
    assert figs["lr_check"].layout.legend.title.text == "max LR"
    for stage in ("lr_check", "momentum", "weight_decay"):
        chosen = [t for t in figs[stage].data if t.name and t.name.endswith("(chosen)")]
        assert len(chosen) == 1 and chosen[0].line.width == 4
    sizes = [t for t in figs["batch_size"].data if t.showlegend is not False]
    assert len(sizes) == len(info.grid("batch_size").trials)
    assert figs["batch_size"].layout.xaxis.title.text == "training seconds"
    final_names = [t.name for t in figs["final"].data]
    assert "learning rate" in final_names and "momentum" in final_names


def test_range_test_figure_marks_where_the_test_diverged(tiny_run: TinyRun) -> None:
    info = load_run(tiny_run.url).range_test
    stopped = dataclasses.replace(info, stop_lr=info.lrs[-1], stop_loss=3.0,
                                  stop_reason="smoothed training loss 9 exceeded 4 x 2")
    fig = range_test_figure(stopped)
    (mark,) = [t for t in fig.data if t.name and t.name.startswith("stopped at LR")]
    assert mark.marker.symbol == "x" and "exceeded" in mark.hovertemplate
    svg = range_test_svg(stopped)
    root = ET.fromstring(svg)  # well-formed
    assert root.tag.endswith("svg") and "stopped at" in svg and "exceeded" in svg
    assert svg.count("<polyline") >= 2
    assert stopped.checked is not None and stopped.checked.label in svg  # the LR check's
    unchecked = range_test_svg(dataclasses.replace(stopped, checked=None))
    assert "checked max LR" not in unchecked
    assert not [t for t in range_test_figure(dataclasses.replace(stopped, checked=None)).data
                if t.name.startswith("checked")]


def test_range_test_figures_mark_the_half_way_climb_the_reading_came_from(
        tiny_run: TinyRun) -> None:
    info = load_run(tiny_run.url).range_test
    climbed = dataclasses.replace(info, rise_lr=0.3)
    (mark,) = [t for t in range_test_figure(climbed).data
               if t.name.startswith("half-way climb")]
    assert mark.name == "half-way climb 0.3 (max LR = it / 2.83)"
    assert list(mark.x) == pytest.approx([0.3, 0.3])
    assert "half-way climb 0.3 (/ 2.83)" in range_test_svg(climbed)
    read_at_minimum = dataclasses.replace(info, rise_lr=None)
    assert "half-way climb" not in range_test_svg(read_at_minimum)
    assert not [t for t in range_test_figure(read_at_minimum).data
                if t.name.startswith("half-way climb")]


def test_report_page_is_self_contained_and_small(tiny_run: TinyRun, tmp_path: Path) -> None:
    path = write_report(tiny_run.url, path=tmp_path / "r.html")
    page = path.read_text()
    assert path.stat().st_size < MAX_REPORT_BYTES
    assert page.count('class="plotly-graph-div"') == len(STAGES)
    assert page.count("<script") == 1 + len(STAGES)  # plotly.js once, then one per figure
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)  # no fetches
    d = tiny_run.result.decisions
    for text in [f"batch size {d['batch_size'].batch_size}", html.escape(d["lr_check"].summary()),
                 f"weight decay {d['weight_decay'].weight_decay:g}",
                 f"test accuracy {format_metric('accuracy', d['final'].metric)}",
                 "LR range test (batch size 64; SGD, momentum 0.9)",
                 "Final 1cycle training (SGD): test accuracy", "optimizer SGD",
                 "Study configuration", "Environment", "torch", *(st.title for st in STAGES)]:
        assert text in page, text


def _without_plotlyjs(page: str) -> str:
    """The page less plotly.js itself: what the report writes."""
    start = page.index('<script type="text/javascript">')
    return page[:start] + page[page.index("</script>", start):]


def test_a_regression_report_shows_no_accuracy_anywhere(tmp_path: Path) -> None:
    info = load_run(finished_run(tmp_path, REGRESSION, None))
    drawn = {stage: fig for stage, _, fig in figures(info)}
    page = _without_plotlyjs(render_html(info))
    shown = text_of(page, *(fig.to_json() for fig in drawn.values()),
                    range_test_svg(info.range_test))
    assert "accuracy" not in shown and "metric" not in text_of(*drawn.values())
    assert ("optimizer AdamW, beta2 0.99 (the momentum stage grids beta1) · loss MSE · metric "
            "none") in page
    rt = drawn["lr_range"]
    assert rt.layout.title.text == "LR range test (batch size 64; AdamW, beta1 0.9, beta2 0.99)"
    assert rt.layout.yaxis.title.text == "loss (MSE)" and "loss (MSE)" in range_test_svg(
        info.range_test)
    assert all(t.customdata is None for t in rt.data)  # no metric in the hover
    assert "checked max LR 0.141 (x1.41)" in [t.name for t in rt.data]
    assert "checked max LR 0.141 (x1.41)" in range_test_svg(info.range_test)
    check = drawn["lr_check"]
    assert check.layout.title.text == "Max LR check: validation loss per epoch (chosen: 0.141)"
    assert [t.name for t in check.data if t.showlegend is not False] == [
        "max LR 0.1", "max LR 0.141 (chosen)", "max LR 0.2 (diverged)"]
    assert drawn["momentum"].layout.legend.title.text == "max beta1"
    bs = drawn["batch_size"]  # validation loss above, the range tests below: no metric column
    assert [a.text for a in bs.layout.annotations][0] == "validation loss"
    assert {t.xaxis for t in bs.data} == {"x", "x2"} and len(bs.layout.annotations) == 2
    final = drawn["final"]
    assert final.layout.title.text == ("Final 1cycle training (AdamW, beta2 0.99): test loss "
                                       "0.3100 ± 0.0140")
    names = [t.name for t in final.data]
    assert "beta1" in names and "seed 0: test loss 0.3000" in names
    assert "beta1 %{customdata[1]}" in drawn["refine"].data[0].hovertemplate


@pytest.mark.parametrize(("train", "metric", "words"), [
    (F1, 0.8, ["test f1 0.805 ± 0.007", "validation f1", "f1 %{customdata:.4g}",
               "seed 1: test f1 0.81", "metric f1", "Adam, beta1 0.9, beta2 0.99"]),
    (TrainConfig(batch_size=64, threads=1), 0.8,
     ["test accuracy 80.50% ± 0.70", "validation accuracy", "accuracy %{customdata:.1%}",
      "seed 1: test accuracy 81.00%", "metric accuracy", "SGD, momentum 0.9"]),
])
def test_the_metric_is_named_as_the_run_names_it(tmp_path: Path, train: TrainConfig,
                                                 metric: float, words: list[str]) -> None:
    info = load_run(finished_run(tmp_path, train, metric))
    page = _without_plotlyjs(render_html(info))
    for text in words:
        assert text in page, text
    if train.metric_name() != "accuracy":
        assert "accuracy" not in page.lower()


def test_report_of_a_run_cut_short(tmp_path: Path) -> None:
    run = start_run(tmp_path)  # the first stage's study exists, nothing ran
    page = render_html(load_run(run))
    assert "not started" in page and 'class="plotly-graph-div"' not in page
    assert "not recorded" in page  # the run recorded no environment: none is made up


def test_report_goes_beside_the_sqlite_file(tmp_path: Path) -> None:
    run = start_run(tmp_path, "my run/1")
    assert safe_filename("my run/1") == "my_run_1" and safe_filename("..") == "run"
    assert default_report_path(run.url, run.name) == tmp_path / "reports" / "my_run_1.html"
    path = write_report(Run.find(run.url))
    assert path == tmp_path / "reports" / "my_run_1.html" and path.is_file()


def test_cli_report_and_csv(tiny_run: TinyRun, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    code = main(["-q", "report", "--storage", tiny_run.url, "-o", str(out), "--csv",
                 str(tmp_path / "csv")])
    assert code == 0 and out.is_file()
    printed = capsys.readouterr().out
    assert str(out) in printed and "trials.csv" in printed
    assert (tmp_path / "csv" / "trials.csv").is_file()


def test_cli_report_errors_are_one_line(tiny_run: TinyRun, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--storage", tiny_run.url, "--run", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tuner: error: no run 'nope' in storage '{tiny_run.url}'; runs there: "
                   f"tiny.")
    missing = tmp_path / "missing" / "missing.db"
    assert main(["report", "--storage", f"sqlite:///{missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such database file" in err and str(missing) in err and "\n" not in err
    assert not missing.parent.exists()


def test_end_of_run_summary_says_where_the_report_is(
        tiny_run: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "tuner.db"
    shutil.copy(tiny_run.path, db)
    monkeypatch.setattr("tuner.pipeline.run", lambda *_a, **_k: tiny_run.result)
    assert main(["-q", "run", "--storage", f"sqlite:///{db}"]) == 0
    report = tmp_path / "reports" / "tiny.html"
    assert report.is_file()
    assert re.search(rf"^report\s+{re.escape(str(report))}$", capsys.readouterr().out, re.M)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: the page needs none
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
# Runs before plotly.js: any uncaught error ends up in the page title, which --dump-dom shows.
ERROR_PROBE = ("<script>window.onerror = function (m) { document.title = 'JS ERROR: ' + m; };"
               "</script>")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (tools/ensure_chromium.sh "
                                                "installs it)")
def test_report_draws_every_figure_in_headless_chromium(tiny_run: TinyRun, tmp_path: Path
                                                        ) -> None:
    page = render_html(load_run(tiny_run.url)).replace("<head>", "<head>" + ERROR_PROBE, 1)
    html_path = tmp_path / "report.html"
    html_path.write_text(page)
    chromium = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]

    dump = subprocess.run([*chromium, "--dump-dom", html_path.as_uri()], capture_output=True,
                          text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr[-2000:]
    dom = dump.stdout
    console = [line for line in dump.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    assert re.search(r"<title>(.*?)</title>", dom).group(1) == "tuner report: tiny"
    for stage in NAMES:  # each figure's div now holds the SVG plotly drew into it
        start = dom.index(f'id="fig-{stage}"')
        end = dom.find('id="fig-', start + 1)
        assert 'class="main-svg"' in dom[start:end if end > 0 else None], stage
    assert dom.count('class="main-svg"') >= len(STAGES)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_tiny.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*chromium, "--window-size=1280,4200", f"--screenshot={shot}",
                    html_path.as_uri()], capture_output=True, timeout=60, check=True)
    assert shot.is_file() and shot.stat().st_size > 50_000, shot
    print(f"screenshot of the report: {shot}")
