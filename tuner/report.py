"""The run report: the paper's plots for every stage, drawn with plotly, in one HTML file.

The numbers come from ``tuner.report_data`` (plain lists); this module only draws them. The
page embeds plotly.js once, inline, so it opens without a network; plot data are rounded to
five significant digits and the per-step range-test curve is thinned, which keeps the report of
the default study within a few hundred kilobytes of plotly.js itself.

The metric is the run's (``[train] metric``): labelled with its name, accuracy as a percentage,
and left out altogether where the run measured none (a regression). The range test and the
final training say which optimizer ran them.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from tuner.lr_range import RISE_RATIO
from tuner.report_data import (
    RISE_NAME,
    FinalInfo,
    GridStageInfo,
    RangeTestInfo,
    RefineInfo,
    RunInfo,
    StageInfo,
    Training,
    TrialCurve,
    downsample,
    find_run,
    load_run,
    loss_window,
    range_test_title,
)
from tuner.stages.lr_range import SUGGESTION_NAMES
from tuner.storage import Run, storage_folder
from tuner.text import format_metric, split_name
from tuner.version import __version__

log = logging.getLogger(__name__)

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#9d755d", "#72b7b2", "#eeca3b",
           "#ff9da6", "#bab0ac", "#439894")
CHOSEN = "#d62728"
RANGE_FILL = "rgba(84, 162, 75, 0.15)"
RANGE_LINE = "rgb(84, 162, 75)"  # the range's colour, for where it was read
READ_NAME = "range read off the test"  # the range test's reading, shaded
MAX_CURVE_POINTS = 400  # per-step curves are thinned to this many points
_AXIS = {"gridcolor": "#e6e6e6", "linecolor": "#999", "zeroline": False, "ticks": "outside",
         "showline": True}
TEMPLATE = go.layout.Template(layout={
    "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 13},
    "paper_bgcolor": "white", "plot_bgcolor": "white", "colorway": list(PALETTE),
    "xaxis": _AXIS, "yaxis": _AXIS, "hovermode": "closest",
    "margin": {"l": 70, "r": 30, "t": 60, "b": 60},
    "legend": {"bgcolor": "rgba(255,255,255,0.8)"},
})
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def _r(values: Sequence[float | None], digits: int = 5) -> list[float | None]:
    """Rounded to ``digits`` significant digits (smaller JSON); None stays None."""
    out: list[float | None] = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(None)
        else:
            out.append(float(f"{v:.{digits}g}"))
    return out


def _finite(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _metric_format(name: str) -> str:
    """How plotly formats the metric ``name``: accuracy as a percentage."""
    return ".1%" if name == "accuracy" else ".4g"


def _metric_hover(name: str | None, ref: str = "customdata") -> str:
    """The hover line of the metric at ``%{ref}`` ("" without a metric)."""
    if name is None:
        return ""
    return f"<br>{html.escape(name)} %{{{ref}:{_metric_format(name)}}}"


def _metric_data(name: str | None, values: Sequence[float | None]) -> list[float | None] | None:
    """The metric's values as a trace's customdata (None without a metric)."""
    return _r(values, 4) if name is not None else None


# --- LR range test --------------------------------------------------------------------------

def _vertical(fig: go.Figure, x: float, lo: float, hi: float, name: str, color: str,
              dash: str, **where: int) -> None:
    fig.add_trace(go.Scatter(x=_r([x, x]), y=_r([lo, hi]), mode="lines", name=name,
                             line={"color": color, "dash": dash, "width": 1.5},
                             hovertemplate=f"{html.escape(name)}<extra></extra>"), **where)


def range_test_figure(info: RangeTestInfo, title: str | None = None) -> go.Figure:
    """Training and validation loss against LR; the range read off it shaded, the max LR the
    LR check chose from that reading, the suggestion rules and the divergence point marked."""
    fig = go.Figure()
    lo, hi = loss_window(info)
    if info.min_lr is not None and info.max_lr is not None:
        fig.add_trace(go.Scatter(
            x=_r([info.min_lr, info.max_lr, info.max_lr, info.min_lr, info.min_lr]),
            y=_r([lo, lo, hi, hi, lo]), fill="toself", fillcolor=RANGE_FILL, mode="lines",
            line={"width": 0}, name=f"{READ_NAME} {info.min_lr:.3g} – {info.max_lr:.3g}",
            hovertemplate=f"min LR {info.min_lr:.3g}, max LR {info.max_lr:.3g}<extra></extra>"))
    if info.rise_lr is not None:  # where the reading was taken
        _vertical(fig, info.rise_lr, lo, hi, f"{RISE_NAME} {info.rise_lr:.3g} (max LR = it / "
                  f"{RISE_RATIO:.3g})", RANGE_LINE, "dot")
    if info.checked is not None:  # what the later stages used
        _vertical(fig, info.checked.max_lr, lo, hi, info.checked.label, CHOSEN, "solid")
    x, y = downsample(info.lrs, info.train_losses, MAX_CURVE_POINTS)
    fig.add_trace(go.Scatter(x=_r(x), y=_r(y, 4), mode="lines", name="training loss (per step)",
                             line={"color": "#c7c7c7", "width": 1},
                             hovertemplate="LR %{x:.3g}<br>loss %{y:.4g}<extra>train</extra>"))
    x, y = downsample(info.lrs, info.train_smoothed, MAX_CURVE_POINTS)
    fig.add_trace(go.Scatter(x=_r(x), y=_r(y), mode="lines", name="training loss (smoothed)",
                             line={"color": PALETTE[0], "width": 2},
                             hovertemplate="LR %{x:.3g}<br>loss %{y:.4g}<extra>train, "
                                           "smoothed</extra>"))
    for i, losses in enumerate(info.val_losses_each):
        fig.add_trace(go.Scatter(
            x=_r(info.val_lrs[:len(losses)]), y=_r(losses), mode="lines",
            name="validation loss, each test", legendgroup="each", showlegend=i == 0,
            line={"color": PALETTE[1], "width": 1, "dash": "dot"}, opacity=0.6,
            hovertemplate="LR %{x:.3g}<br>loss %{y:.4g}<extra>test " + str(i + 1) + "</extra>"))
    fig.add_trace(go.Scatter(
        x=_r(info.val_lrs), y=_r(info.val_losses),
        customdata=_metric_data(info.metric_name, info.val_metrics),
        mode="lines+markers", name="validation loss" + (" (mean)" if info.val_losses_each
                                                        else ""),
        line={"color": PALETTE[1], "width": 2.5}, marker={"size": 4},
        hovertemplate="LR %{x:.3g}<br>val loss %{y:.4g}" + _metric_hover(info.metric_name)
                      + "<extra>validation</extra>"))
    for (key, value), dash in zip(info.suggestions.items(), ("dash", "dot", "dashdot"),
                                  strict=False):
        _vertical(fig, value, lo, hi, f"suggestion: {SUGGESTION_NAMES.get(key, key)} {value:.3g}",
                  "#555", dash)
    if info.stop_lr is not None and info.stop_loss is not None:
        fig.add_trace(go.Scatter(
            x=_r([info.stop_lr]), y=_r([min(info.stop_loss, hi)]), mode="markers",
            name=f"stopped at LR {info.stop_lr:.3g} (diverging)",
            marker={"symbol": "x", "size": 14, "color": CHOSEN, "line": {"width": 2}},
            hovertemplate=html.escape(info.stop_reason) + "<extra>stop</extra>"))
    fig.update_layout(
        template=TEMPLATE, height=520, title=title or range_test_title(info),
        xaxis={"title": "learning rate" + (" (log scale)" if info.log_lr else ""),
               "type": "log" if info.log_lr else "linear"},
        yaxis={"title": f"loss ({info.training.loss_name})", "range": [lo, hi]})
    return fig



# --- momentum and weight decay --------------------------------------------------------------

def _trial_style(c: TrialCurve, i: int) -> dict[str, Any]:
    cut = c.state in ("pruned", "diverged", "fail", "running")
    if c.chosen:
        return {"color": CHOSEN, "width": 4, "dash": "solid"}
    return {"color": _color(i), "width": 1.8, "dash": "dot" if cut else "solid"}


def grid_stage_figure(info: GridStageInfo) -> go.Figure:
    """Validation loss per epoch for each value: pruned runs end where they were cut off (with
    a cross), the chosen value is drawn thick."""
    fig = go.Figure()
    for i, c in enumerate(info.trials):
        style = _trial_style(c, i)
        x = c.reports[:len(c.val_losses)]
        fig.add_trace(go.Scatter(
            x=x, y=_r(c.val_losses), customdata=_metric_data(info.metric_name, c.val_metrics),
            mode="lines+markers", name=f"{info.label} {c.label}", line=style, marker={"size": 5},
            hovertemplate=f"{info.label} {_fmt(c.value)}<br>epoch %{{x}}<br>val loss %{{y:.4f}}"
                          + _metric_hover(info.metric_name) + "<extra></extra>"))
        if c.state in ("pruned", "diverged") and x:
            last = next((v for v in reversed(c.val_losses) if v is not None), None)
            fig.add_trace(go.Scatter(
                x=[x[-1]], y=_r([last]), mode="markers", showlegend=False,
                marker={"symbol": "x", "size": 12, "color": style["color"]},
                hovertemplate=f"{info.label} {_fmt(c.value)}: {c.state} after epoch "
                              f"{x[-1]}<extra></extra>"))
    decided = f"chosen: {_fmt(info.chosen)}" if info.chosen is not None else "not decided"
    xmax = max([info.planned_reports or 1] + [len(c.val_losses) for c in info.trials])
    fig.update_layout(template=TEMPLATE, height=460,
                      title=f"{info.title}: validation loss per epoch ({decided})",
                      xaxis={"title": "epoch", "range": [0.5, xmax + 0.5], "dtick": 1
                             if xmax <= 15 else None},
                      yaxis={"title": "validation loss"}, legend={"title": info.label})
    return fig


# --- batch size -----------------------------------------------------------------------------

def _batch_size_layout(info: GridStageInfo) -> go.Figure:
    """Validation loss (and the metric, where there is one) above, the range tests below."""
    metric, ranges = info.metric_name, bool(info.range_tests)
    top = [{}, {}] if metric is not None else [{}]
    bottom = [{"colspan": 2}, None] if metric is not None else [{}]
    return make_subplots(
        rows=2 if ranges else 1, cols=len(top), vertical_spacing=0.16, horizontal_spacing=0.1,
        specs=[top, bottom] if ranges else [top],
        subplot_titles=["validation loss"]
        + ([f"validation {metric}"] if metric is not None else [])
        + (["each size's LR range test (validation loss; ● its max LR)"] if ranges else []))


def _size_range_test(fig: go.Figure, c: TrialCurve, rt: RangeTestInfo, style: dict[str, Any],
                     ) -> None:
    """One size's own range test (validation loss against LR) and its max LR, below."""
    fig.add_trace(go.Scatter(x=_r(rt.val_lrs), y=_r(rt.val_losses), mode="lines",
                             name=f"batch {c.label}", legendgroup=str(c.value), showlegend=False,
                             line={**style, "dash": "solid"},
                             hovertemplate=f"batch {c.value}<br>LR %{{x:.3g}}<br>val "
                                           "loss %{y:.4g}<extra></extra>"), 2, 1)
    if rt.max_lr is not None:
        best = min(range(len(rt.val_lrs)), key=lambda j: abs(rt.val_lrs[j] - rt.max_lr))
        fig.add_trace(go.Scatter(
            x=_r([rt.max_lr]), y=_r([rt.val_losses[best]]), mode="markers",
            legendgroup=str(c.value), showlegend=False,
            marker={"size": 10, "color": style["color"]},
            hovertemplate=f"batch {c.value}: max LR {rt.max_lr:.3g}, min LR "
                          f"{(rt.min_lr or 0):.3g}<extra></extra>"), 2, 1)


def batch_size_figure(info: GridStageInfo) -> go.Figure:
    """Validation loss (and the metric) against training seconds, one line per size; below,
    each size's own range test with the max LR it got."""
    fig = _batch_size_layout(info)
    metric = info.metric_name
    for i, c in enumerate(info.trials):
        style = _trial_style(c, i)
        name = f"batch {c.label}"
        secs = _r(c.seconds[:len(c.val_losses)], 4)
        common = {"legendgroup": str(c.value), "mode": "lines+markers", "line": style,
                  "marker": {"size": 5}}
        fig.add_trace(go.Scatter(x=secs, y=_r(c.val_losses), name=name,
                                 hovertemplate=f"batch {c.value}<br>%{{x:.2f}} s<br>val loss "
                                               "%{y:.4f}<extra></extra>", **common), 1, 1)
        if metric is not None:
            fig.add_trace(go.Scatter(
                x=secs, y=_r(c.val_metrics, 4), name=name, showlegend=False,
                hovertemplate=f"batch {c.value}<br>%{{x:.2f}} s" + _metric_hover(metric, "y")
                              + "<extra></extra>", **common), 1, 2)
        rt = info.range_tests.get(c.value)
        if rt is not None:
            _size_range_test(fig, c, rt, style)
    budget = f", {info.budget_s:g} s of training each" if info.budget_s else ""
    decided = f"chosen: {info.chosen}" if info.chosen is not None else "not decided"
    fig.update_xaxes(title_text="training seconds", row=1)
    if metric == "accuracy":
        fig.update_yaxes(tickformat=".0%", row=1, col=2)
    if info.range_tests:
        fig.update_xaxes(title_text="learning rate (log scale)", type="log", row=2, col=1)
        windows = [loss_window(rt) for rt in info.range_tests.values()]
        fig.update_yaxes(title_text="validation loss", row=2, col=1,
                         range=[min(w[0] for w in windows), max(w[1] for w in windows)])
    fig.update_layout(template=TEMPLATE, height=800 if info.range_tests else 460,
                      title=f"{info.title} ({decided}{budget})")
    return fig


# --- final training -------------------------------------------------------------------------

def _final_schedule_traces(fig: go.Figure, info: FinalInfo) -> None:
    """The 1cycle LR and momentum (Adam: beta1) the final training ran, left."""
    momentum = info.training.momentum_name
    fig.add_trace(go.Scatter(x=_r(info.schedule_epochs, 4), y=_r(info.schedule_lrs),
                             mode="lines", name="learning rate",
                             line={"color": PALETTE[0], "width": 2.5},
                             hovertemplate="epoch %{x:.2f}<br>LR %{y:.3g}<extra></extra>"),
                  1, 1, secondary_y=False)
    fig.add_trace(go.Scatter(x=_r(info.schedule_epochs, 4), y=_r(info.schedule_momenta),
                             mode="lines", name=momentum,
                             line={"color": PALETTE[1], "width": 2.5, "dash": "dash"},
                             hovertemplate=f"epoch %{{x:.2f}}<br>{momentum} %{{y:.3f}}"
                                           "<extra></extra>"),
                  1, 1, secondary_y=True)


def _seed_score(info: FinalInfo, c: TrialCurve) -> str:
    """How the legend scores a seed: its metric, else its loss, else how it ended."""
    split, name = split_name(info.scored_on), info.metric_name
    metric = c.attrs.get(f"{info.scored_on}_metric")
    if name is not None and metric is not None:
        return f": {split} {name} {format_metric(name, metric)}"
    loss = c.attrs.get(f"{info.scored_on}_loss")
    return f": {split} loss {loss:.4f}" if loss is not None else f" ({c.state})"


def final_title(info: FinalInfo, title: str = "Final 1cycle training") -> str:
    """The stage's title, the optimizer, and the scores: the metric where there is one."""
    head = f"{title} ({info.optimizer_text})"
    split, name = split_name(info.scored_on), info.metric_name
    if info.loss is None:
        return f"{head}, not finished"
    loss = f"{split} loss {info.loss:.4f}"
    if name is None or info.metric is None:
        return f"{head}: {loss} ± {info.loss_sd or 0:.4f}"
    return (f"{head}: {split} {name} {format_metric(name, info.metric)} ± "
            f"{format_metric(name, info.metric_sd or 0.0, sign=False)}, {loss}")


def final_figure(info: FinalInfo, title: str = "Final 1cycle training") -> go.Figure:
    """The 1cycle LR and momentum schedules it ran, and each seed's training loss per epoch."""
    trained_on = "train + validation" if info.scored_on == "test" else "train"
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.18,
                        specs=[[{"secondary_y": True}, {}]],
                        subplot_titles=["1cycle schedule", f"training loss ({trained_on})"])
    if info.schedule_epochs:
        _final_schedule_traces(fig, info)
    for i, c in enumerate(info.trials):
        fig.add_trace(go.Scatter(x=c.reports, y=_r(c.train_losses), mode="lines+markers",
                                 name=f"seed {c.value}{_seed_score(info, c)}",
                                 line={"color": _color(i + 2), "width": 2}, marker={"size": 4},
                                 hovertemplate="epoch %{x}<br>train loss %{y:.4f}"
                                               "<extra></extra>"), 1, 2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="learning rate", secondary_y=False, row=1, col=1)
    fig.update_yaxes(title_text=info.training.momentum_name, secondary_y=True, row=1, col=1,
                     showgrid=False, tickformat=".3f")
    fig.update_yaxes(title_text="training loss", row=1, col=2)
    fig.update_layout(template=TEMPLATE, height=460, title=final_title(info, title))
    return fig


# --- refinement -----------------------------------------------------------------------------

def refine_figure(info: RefineInfo, title: str = "Refinement") -> go.Figure:
    """Final validation loss against max LR, one marker per trial and a colour per weight
    decay; pruned trials as crosses at the top, confirmation reruns (the next seed) as
    diamonds, the staged and the chosen trial ringed."""
    fig = go.Figure()
    done = [p for p in info.points if p.value is not None]
    top = max((p.value for p in done), default=1.0)
    decays = sorted({p.weight_decay for p in info.points})
    for i, wd in enumerate(decays):
        ps = [p for p in info.points if p.weight_decay == wd]
        fig.add_trace(go.Scatter(
            x=[p.max_lr for p in ps], y=_r([p.value if p.value is not None else top for p in ps]),
            mode="markers", name=f"weight decay {wd:g}",
            marker={"color": _color(i), "size": 10,
                    "symbol": ["x" if p.value is None else "diamond" if p.repeat else "circle"
                               for p in ps]},
            customdata=[[p.number, p.max_momentum,
                         f"{p.state}, confirmation (seed +{p.repeat})" if p.repeat else p.state]
                        for p in ps],
            hovertemplate="trial %{customdata[0]}: %{customdata[2]}<br>max LR %{x:.4g}<br>"
                          f"{info.training.momentum_name} %{{customdata[1]}}<br>val loss "
                          "%{y:.4f}<extra></extra>"))
    for number, label, size in ((info.staged, "staged values", 22), (info.chosen, "chosen", 16)):
        p = next((p for p in done if p.number == number), None)
        if p is not None:
            fig.add_trace(go.Scatter(
                x=[p.max_lr], y=_r([p.value]), mode="markers", name=label,
                marker={"symbol": "circle-open", "size": size, "line": {"width": 2},
                        "color": "#222" if label == "chosen" else "#888"},
                hovertemplate=f"{label}: trial {p.number}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=460,
                      title=f"{title}: final validation loss of each trial",
                      xaxis={"title": "max LR", "type": "log"},
                      yaxis={"title": "final validation loss (× pruned)"})
    return fig


# --- the page -------------------------------------------------------------------------------

def figure(detail: StageInfo, title: str) -> go.Figure:
    """The figure of one stage's numbers (``title``: the stage's)."""
    if isinstance(detail, RangeTestInfo):
        return range_test_figure(detail)
    if isinstance(detail, GridStageInfo):
        # A grid compared at equal time (the batch size) is drawn against seconds.
        timed = detail.budget_s is not None or detail.range_tests
        return batch_size_figure(detail) if timed else grid_stage_figure(detail)
    if isinstance(detail, RefineInfo):
        return refine_figure(detail, title)
    return final_figure(detail, title)


def figures(info: RunInfo) -> list[tuple[str, str, go.Figure]]:
    """``(stage, why, figure)`` for every stage that has something to draw, in order."""
    titles = {s.stage: s.title for s in info.stages}
    return [(name, detail.why, figure(detail, titles[name]))
            for name, detail in info.details.items()]


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1.5rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
.meta { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; white-space: nowrap; }
.why { color: #444; } .figure { min-height: 300px; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; }
"""


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str], numeric: Collection[int] = ()
           ) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in numeric else ''}>{html.escape(str(v))}</td>"
                         for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def training_text(t: Training) -> str:
    """What the run trained with, in a line: optimizer, loss, metric."""
    cycled = f" (the momentum stage grids {t.momentum_name})" if t.adam else ""
    return (f"optimizer {t.describe()}{cycled} · loss {t.loss_name} · metric "
            f"{t.metric or 'none'} · every decision on validation loss")


def _summary_html(info: RunInfo) -> str:
    rows = []
    for s in info.stages:
        trials = ", ".join(f"{n} {k}" for k, n in sorted(s.trials.items())) or "–"
        seconds = f"{s.seconds:.1f} s" if s.seconds is not None else "–"
        rows.append([s.title, s.status, s.chosen or "–", trials, seconds])
    rows.append(["total", "", "", "", f"{info.total_seconds:.1f} s"])
    return (f"<p class=meta>{html.escape(training_text(info.training))}</p>"
            + _table(rows, ["stage", "status", "decision", "trials", "time"], numeric={4}))


def _environment_html(info: RunInfo) -> str:
    if not info.environment:
        return "<p class=meta>not recorded (the run recorded no environment).</p>"
    return _table(sorted(info.environment.items()), ["", ""])


def render_html(info: RunInfo) -> str:
    """The report page: summary, one section per stage with its figure, configuration."""
    sections = []
    drawn = {stage: (why, fig) for stage, why, fig in figures(info)}
    for s in info.stages:
        if s.stage in drawn:
            why, fig = drawn[s.stage]
            div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{s.stage}",
                              config=PLOT_CONFIG, default_width="100%",
                              default_height=f"{fig.layout.height or 460}px")
            body = f'<p class=why>{html.escape(why)}</p><div class=figure>{div}</div>'
        elif s.status == "done" and s.why:  # decided without runs to draw (refine.replaces)
            body = f"<p class=why>{html.escape(s.why)}</p>"
        else:
            continue
        sections.append(f'<section id="{s.stage}"><h2>{len(sections) + 1}. '
                        f"{html.escape(s.title)}</h2>{body}</section>")
    created = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    version = info.tool.get("version")
    started = f" · run started by tuner {html.escape(str(version))}" if version else ""
    title = f"tuner report: {info.run}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>', "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class=meta>storage {html.escape(info.storage)}{started} · report written "
        f"{created} by tuner {__version__} · after Smith (2018), <i>A Disciplined Approach to "
        f"Neural Network Hyper-Parameters</i></p>",
        '<section id="summary"><h2>Summary</h2>', _summary_html(info), "</section>",
        *sections,
        '<section id="configuration"><h2>Study configuration</h2>',
        f"<pre>{html.escape(json.dumps(info.config, indent=2))}</pre></section>",
        '<section id="environment"><h2>Environment</h2>', _environment_html(info),
        "</section>", "</body></html>", ""])


def safe_filename(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def default_report_path(url: str, run: str) -> Path:
    """``reports/RUN.html`` beside a SQLite file, else under the working directory."""
    return storage_folder(url) / "reports" / f"{safe_filename(run)}.html"


def write_report(source: Run | str, run: str | None = None,
                 path: str | Path | None = None) -> Path:
    """Write the report of ``run`` (default: the newest) in the storage at URL ``source`` (or
    of the run ``source``) to ``path`` (default: ``reports/RUN.html`` beside a SQLite file);
    return the path. A SQLite file that does not exist is an error, never created."""
    handle = find_run(source, run)
    info = load_run(handle)
    path = Path(path) if path is not None else default_report_path(handle.url, info.run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(info), encoding="utf-8")
    log.info("report of run %r: %s (%.1f MB)", info.run, path, path.stat().st_size / 1e6)
    return path
