"""The LR range test as a small static SVG (no plotly, no browser): the dashboard's artifact.

optuna-dashboard previews image artifacts; plotly cannot write SVG without a browser (kaleido),
so this draws the same picture as ``tuner.report.range_test_figure`` by hand: smoothed training
loss and validation loss against LR, the range read off it shaded, the max LR the LR check chose
(a red line), the suggestion rules and the divergence point marked. The title says which
optimizer ran the test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from tuner.lr_range import RISE_RATIO
from tuner.report_data import (
    CHECKED_NAME,
    RISE_NAME,
    RangeTestInfo,
    downsample,
    loss_window,
    range_test_title,
)
from tuner.stages.lr_range import SUGGESTION_NAMES

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 64, 210, 40, 52  # margins; the legend sits in the right one
TRAIN, VAL, CHOSEN, RULE = "#4c78a8", "#f58518", "#d62728", "#555555"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo or 1.0
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _polyline(xs: Sequence[float], ys: Sequence[float | None], sx: Callable[[float], float],
              sy: Callable[[float], float], color: str, width: float, dash: str = "") -> str:
    """One <polyline> per run of finite points."""
    parts, run = [], []
    for x, y in [*zip(xs, ys, strict=True), (None, None)]:
        if x is None or y is None or not math.isfinite(y):
            if len(run) > 1:
                dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}"'
                             f'{dash_attr} points="{" ".join(run)}"/>')
            run = []
            continue
        run.append(f"{sx(x):.1f},{sy(y):.1f}")
    return "".join(parts)


@dataclass(frozen=True)
class _Frame:
    """The plot area: LR (log or linear) across, loss (clipped to the window) up."""

    log: bool
    x0: float
    x1: float
    lo: float
    hi: float
    w: float = WIDTH - LEFT - RIGHT
    h: float = HEIGHT - TOP - BOTTOM

    @classmethod
    def of(cls, info: RangeTestInfo) -> _Frame:
        xs = info.lrs or info.val_lrs or [1e-3, 1.0]
        tx = math.log10 if info.log_lr else float
        x0, x1 = tx(min(xs)), tx(max(xs))
        return cls(info.log_lr, x0, x1 if x1 > x0 else x0 + 1, *loss_window(info))

    def sx(self, lr: float) -> float:
        x = math.log10(lr) if self.log else lr
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * self.w

    def sy(self, loss: float) -> float:
        return TOP + (1 - (min(max(loss, self.lo), self.hi) - self.lo) / (self.hi - self.lo)) \
            * self.h


def _axes(f: _Frame, loss: str) -> list[str]:
    """Grid lines, ticks, the frame and the axis titles."""
    out = []
    if f.log:
        ticks = [10.0 ** e for e in range(math.ceil(f.x0 - 1e-9), math.floor(f.x1 + 1e-9) + 1)]
    else:
        ticks = _nice_ticks(f.x0, f.x1)
    for t in ticks:
        x = f.sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + f.h}" '
                   f'stroke="#e6e6e6"/><text x="{x:.1f}" y="{TOP + f.h + 16}" '
                   f'text-anchor="middle">{t:g}</text>')
    for t in _nice_ticks(f.lo, f.hi):
        y = f.sy(t)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + f.w}" y2="{y:.1f}" '
                   f'stroke="#e6e6e6"/><text x="{LEFT - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{t:g}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{f.w}" height="{f.h}" fill="none" '
               f'stroke="#999"/>')
    out.append(f'<text x="{LEFT + f.w / 2}" y="{HEIGHT - 12}" text-anchor="middle">learning '
               f'rate{" (log scale)" if f.log else ""}</text>')
    out.append(f'<text transform="translate(16 {TOP + f.h / 2}) rotate(-90)" '
               f'text-anchor="middle">loss ({escape(loss)})</text>')
    return out


Legend = list[tuple[str, str, str]]  # (kind, color, text)


def _plot(f: _Frame, info: RangeTestInfo) -> tuple[list[str], Legend]:
    """The range, the checked max LR, the curves, the suggestion rules and the stop, clipped to
    the plot area."""
    legend: Legend = []
    body = ['<g clip-path="url(#plot)">']
    if info.min_lr is not None and info.max_lr is not None:
        a, b = f.sx(info.min_lr), f.sx(info.max_lr)
        body.append(f'<rect x="{a:.1f}" y="{TOP}" width="{b - a:.1f}" height="{f.h}" '
                    f'fill="rgb(84,162,75)" fill-opacity="0.18"/>')
        legend.append(("box", "rgb(84,162,75)", f"range {info.min_lr:.3g} – {info.max_lr:.3g}"))
    if info.rise_lr is not None:  # where the reading was taken
        x = f.sx(info.rise_lr)
        body.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + f.h}" '
                    f'stroke="rgb(84,162,75)" stroke-width="1.5" stroke-dasharray="2 3"/>')
        legend.append(("line", "rgb(84,162,75)",
                       f"{RISE_NAME} {info.rise_lr:.3g} (/ {RISE_RATIO:.3g})"))
    if info.checked is not None:  # what the later stages used (the factor too long to list)
        c, x = info.checked, f.sx(info.checked.max_lr)
        body.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + f.h}" '
                    f'stroke="{CHOSEN}" stroke-width="2"><title>{escape(c.label)}</title></line>')
        legend.append(("line", CHOSEN, f"{CHECKED_NAME} {c.max_lr:.3g}"))
    x, y = downsample(info.lrs, info.train_smoothed, 300)
    body.append(_polyline(x, y, f.sx, f.sy, TRAIN, 2))
    legend.append(("line", TRAIN, "training loss (smoothed)"))
    body.append(_polyline(info.val_lrs, info.val_losses, f.sx, f.sy, VAL, 2.5))
    legend.append(("line", VAL, "validation loss"))
    for (key, value), dash in zip(info.suggestions.items(), ("6 4", "2 3", "8 3 2 3"),
                                  strict=False):
        x = f.sx(value)
        body.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + f.h}" '
                    f'stroke="{RULE}" stroke-dasharray="{dash}"/>')
        legend.append((f"rule:{dash}", RULE, f"{SUGGESTION_NAMES.get(key, key)} {value:.3g}"))
    if info.stop_lr is not None and info.stop_loss is not None:
        cx, cy = f.sx(info.stop_lr), f.sy(info.stop_loss)
        body.append(f'<path d="M{cx - 6:.1f},{cy - 6:.1f}L{cx + 6:.1f},{cy + 6:.1f}'
                    f'M{cx - 6:.1f},{cy + 6:.1f}L{cx + 6:.1f},{cy - 6:.1f}" stroke="{CHOSEN}" '
                    f'stroke-width="3"><title>{escape(info.stop_reason)}</title></path>')
        legend.append(("cross", CHOSEN, f"stopped at {info.stop_lr:.3g}"))
    body.append("</g>")
    return body, legend


def _legend(f: _Frame, legend: Legend) -> list[str]:
    out = []
    lx, ly = LEFT + f.w + 16, TOP + 8
    for i, (kind, color, text) in enumerate(legend):
        y = ly + 20 * i
        if kind == "box":
            out.append(f'<rect x="{lx}" y="{y - 6}" width="22" height="12" fill="{color}" '
                       f'fill-opacity="0.3"/>')
        elif kind == "cross":
            out.append(f'<path d="M{lx + 6},{y - 5}L{lx + 16},{y + 5}M{lx + 6},{y + 5}'
                       f'L{lx + 16},{y - 5}" stroke="{color}" stroke-width="2.5"/>')
        else:
            dash = f' stroke-dasharray="{kind[5:]}"' if kind.startswith("rule:") else ""
            out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 22}" y2="{y}" stroke="{color}" '
                       f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 28}" y="{y + 4}">{escape(text)}</text>')
    return out


def range_test_svg(info: RangeTestInfo, title: str | None = None) -> str:
    """The range test figure as an SVG document."""
    f = _Frame.of(info)
    body, legend = _plot(f, info)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<defs><clipPath id="plot"><rect x="{LEFT}" y="{TOP}" width="{f.w}" '
           f'height="{f.h}"/></clipPath></defs>',
           f'<text x="{LEFT}" y="24" font-size="15">'
           f'{escape(title or range_test_title(info))}</text>',
           *_axes(f, info.training.loss_name), *body, *_legend(f, legend), "</svg>"]
    return "\n".join(out) + "\n"
