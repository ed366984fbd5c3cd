"""Where does the 1cycle run's best max LR lie against the range test's readings?

For each model/data pair: the tool's range test (``lr_range`` defaults, 3 seeds averaged, at the
reference batch size) and its readings (validation minimum: the paper's max LR; divergence
point; fastai's valley, steepest and minimum/10; the training-loss minimum); then a dense sweep
of the 1cycle max LR, factors of sqrt(2) around the validation minimum (9 points, x1/4 ... x4,
and further out one step at a time while the best band reaches the sweep's edge), 3 seeds
each, at the stages' own settings (momentum 0.95 -> 0.85, weight decay 1e-4, batch 32,
``--epochs`` 30), trained on train + validation and scored on the test split. Prints one
markdown table per pair, the band within 0.3 points of the best, and which readings fall in
it; ``--out DIR`` also writes the numbers (JSON) and an SVG of every curve.

Then the pipeline's choice: the tool's stages 1 and 1b (range test read by its default
``lr_range.reading``, LR check) with the default study on the pair, and the sweep's 1cycle
training at the max LR they chose (same seeds), so its accuracy can be set beside the sweep's
best. ``--sweeps results.json`` reuses sweeps measured before and measures only the choice.
With ``--out DIR`` every measured point is saved as it comes (``DIR/results.json``; stages 1 and
1b keep their trials in ``DIR/choice.db``), and a run started again with the same ``--out``
resumes where the last one stopped: a pair that takes longer than one sitting (ResNet-20 on
CPU) is measured in several.
A larger ``--seeds`` on such a checkpoint adds the missing seeds to every sweep point and to
the choice's training (stages 1 and 1b are not run again).
``--stability N`` runs only stages 1 and 1b from N search seeds per pair and prints the spread
of the max LRs they chose.

    .venv/bin/python -m bench.lr_calibration --pairs mnist1d_cnn mlp_small digits_cnn
    .venv/bin/python -m bench.lr_calibration --pairs cifar3_10k --cifar cifar10_train.npz

CIFAR pairs need an npz file with arrays x (uint8 NHWC) and y (int64) (``--cifar``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import optuna
import torch
from optuna.storages import RDBStorage
from torch import nn

from tuner.config import DataConfig, LRRangeConfig, ScheduleConfig, StudyConfig, TrainConfig
from tuner.context import Context, Workload
from tuner.data import Splits, concat, load_splits, make_splits
from tuner.lr_range import NoUsableMinimum, decide_range, mean_curve, rise_range, suggestions
from tuner.models import build_model
from tuner.range_test import range_test
from tuner.schedules import LRMomentum, one_cycle
from tuner.sources import Arrays, check_arrays
from tuner.stages import lr_check, lr_range
from tuner.stages.lr_check import LRDecision
from tuner.storage import open_storage, open_study, study_name
from tuner.train import evaluate, fit, make_sgd

BATCH, MOMENTUM, MIN_MOMENTUM, WEIGHT_DECAY = 32, 0.95, 0.85, 1e-4  # the stages' own
STEPS = range(-4, 5)  # the sweep: the reading x sqrt(2)**k, x1/4 ... x4
EDGES = (-8, 16)  # ... extended one step at a time to x1/16 or x256 where the best lies at an edge
BAND = 0.003  # within 0.3 points of the best


# --- pairs ------------------------------------------------------------------------------------

def mlp(widths: list[int], n_in: int = 40, norm: bool = False) -> Callable[[], nn.Module]:
    """An MLP with ReLU; ``norm``: BatchNorm1d before each ReLU."""
    def make() -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        for w_in, w_out in zip([n_in, *widths], widths, strict=False):
            layers += [nn.Linear(w_in, w_out), *([nn.BatchNorm1d(w_out)] if norm else []),
                       nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(widths[-1], 10))
    return make


class GRUNet(nn.Module):
    """A 1-D recurrent net: the signal as a sequence of 40 scalars, a GRU, the last state."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.transpose(1, 2))  # (N, 1, L) -> (N, L, 1)
        return self.head(out[:, -1])


def digits_cnn(norm: bool = False) -> nn.Module:
    """``norm``: BatchNorm2d before each ReLU."""
    def bn(c: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(c)] if norm else []
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), *bn(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), *bn(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 16, 10))


def mnist1d_cnn_bn() -> nn.Module:
    """The MNIST-1D paper's CNN with BatchNorm1d before each ReLU."""
    layers: list[nn.Module] = []
    for conv in build_model("mnist1d_cnn", 10):
        layers.append(conv)
        if isinstance(conv, nn.Conv1d):
            layers.append(nn.BatchNorm1d(conv.out_channels))
    return nn.Sequential(*layers)


def mnist1d() -> Splits:
    return load_splits(DataConfig())


def digits() -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * 16).clip(0, 255).astype(np.uint8)  # 0..16 -> uint8 images (N, 8, 8)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    cut = len(x) * 4 // 5
    train = check_arrays(x[order[:cut]], d.target[order[:cut]], "digits")
    test = check_arrays(x[order[cut:]], d.target[order[cut:]], "digits")
    return make_splits(train, None, test, DataConfig(name="digits"))


def cifar(path: str | None, n: int) -> Callable[[], Splits]:
    def load() -> Splits:
        if not path:
            raise SystemExit("CIFAR pairs need --cifar PATH.npz (arrays x uint8 NHWC, y int64)")
        cfg = DataConfig(name=f"npz:{path}", train_subset=n)
        with np.load(path) as f:
            train = check_arrays(f["x"], f["y"], path)
            test = (check_arrays(f["x_test"], f["y_test"], path) if "x_test" in f.files
                    else _test_beside(path))
        return make_splits(train, None, test, cfg)
    return load


def _test_beside(path: str) -> Arrays:
    test = Path(path).with_name(Path(path).name.replace("train", "test"))
    with np.load(test) as f:
        return check_arrays(f["x"], f["y"], str(test))


@dataclass(frozen=True)
class Pair:
    data: Callable[[], Splits]
    model: Callable[[], nn.Module]
    epochs: int | None = None  # None: --epochs


def pairs(cifar_path: str | None) -> dict[str, Pair]:
    return {
        "mnist1d_cnn": Pair(mnist1d, lambda: build_model("mnist1d_cnn", 10)),
        "mlp_small": Pair(mnist1d, mlp([100, 100])),
        "mlp_wide_deep": Pair(mnist1d, mlp([256, 256, 256])),
        "mnist1d_gru": Pair(mnist1d, GRUNet),
        "digits_cnn": Pair(digits, digits_cnn),
        # batch-norm nets: the range test scores them with batch statistics (lr_range.norm_stats)
        "mnist1d_cnn_bn": Pair(mnist1d, mnist1d_cnn_bn),
        "mlp_bn": Pair(mnist1d, mlp([256, 256, 256], norm=True)),
        "digits_cnn_bn": Pair(digits, lambda: digits_cnn(norm=True)),
        "cifar3_10k": Pair(cifar(cifar_path, 10_000), lambda: build_model("cifar10_3layer", 10),
                           epochs=15),
        "resnet20_5k": Pair(cifar(cifar_path, 5_000), lambda: build_model("resnet20", 10),
                            epochs=15),
    }


# --- measuring --------------------------------------------------------------------------------

@dataclass
class Readings:
    val_min: float | None
    divergence: float | None
    valley: float | None
    steepest: float | None
    minimum_div10: float | None
    train_min: float | None
    rise: float | None = None  # the tool's default reading (lr_range.reading "rise")


@dataclass
class Choice:
    """What the tool's stages 1 and 1b (range test, LR check; default settings) chose."""

    reading: float  # stage 1's max LR
    max_lr: float  # stage 1b's
    why: str
    accuracies: list[float]  # 1cycle at max_lr, as the sweep's points (per seed)
    seconds: float  # stages 1 and 1b
    check: list[list[float]] = field(default_factory=list)  # [max LR, seeds' val losses...]
    check_metrics: list[list[float]] = field(default_factory=list)  # [max LR, val accuracies...]


@dataclass
class Result:
    pair: str
    readings: Readings | None  # None: not measured yet (a checkpoint)
    lrs: list[float] = field(default_factory=list)
    accuracies: list[list[float]] = field(default_factory=list)  # per LR, per seed
    seconds: float = 0.0
    choice: Choice | None = None
    # the sweep grid's middle (its max LRs are center x sqrt(2)**k): the validation-minimum
    # reading it was first measured around, kept when the readings are measured again
    center: float | None = None


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def read_range(pair: Pair, data: Splits, seeds: list[int]) -> Readings:
    cfg = LRRangeConfig()
    curves = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = pair.model()
        optimizer = make_sgd(model, cfg.start_lr, cfg.momentum, cfg.weight_decay)
        curves.append(range_test(model, optimizer, data.train, data.val, cfg, BATCH,
                                 generator=torch.Generator().manual_seed(seed)))
    curve = mean_curve(curves)
    try:
        val_min = decide_range(curve.val_lrs, curve.val_losses, cfg.min_lr_div).max_lr
        rise = rise_range(curve.val_lrs, curve.val_losses, cfg.min_lr_div).max_lr
    except NoUsableMinimum:
        val_min = rise = None
    rules = suggestions(curve.lrs, curve.train_losses, cfg.smooth)
    stop = curve.lrs[curve.stop_step - 1] if curve.stop_step else None
    minimum = finite(rules.minimum)
    return Readings(val_min, stop, finite(rules.valley), finite(rules.steepest), minimum,
                    minimum * 10 if minimum else None, rise)


def one_cycle_accuracy(pair: Pair, data: Splits, max_lr: float, epochs: int, seed: int) -> float:
    train = concat(data.train, data.val)
    torch.manual_seed(seed)
    model = pair.model()
    min_lr = max_lr / 10
    optimizer = make_sgd(model, min_lr, MOMENTUM, WEIGHT_DECAY)
    total = len(train) // BATCH * epochs
    sched = ScheduleConfig()

    def schedule(step: int) -> LRMomentum:
        return one_cycle(step, total, min_lr, max_lr, MOMENTUM, MIN_MOMENTUM,
                         sched.cycle_fraction, sched.final_div)

    try:
        fit(model, optimizer, train, total_steps=total, batch_size=BATCH, schedule=schedule,
            eval_every=total, on_eval=lambda *_: None,
            generator=torch.Generator().manual_seed(seed))
    except Exception:  # noqa: BLE001 -- a diverged run scores chance
        return 0.1
    return evaluate(model, data.test).metric


def checked_lr(pair: Pair, data: Splits, seed: int,
               storage: optuna.storages.BaseStorage | None = None, run: str = "calibration"
               ) -> tuple[LRDecision, list[list[float]], list[list[float]]]:
    """Stages 1 and 1b of the tool, default study (reference batch 32, SGD), on the pair; and
    per checked max LR [max LR, each seed's final validation loss...] (none: pruned), and the
    same with the validation accuracies. With a database ``storage`` an interrupted call resumes:
    the trials done are kept, as in ``tuner run``."""
    cfg = StudyConfig(train=TrainConfig(batch_size=BATCH, seed=seed))
    ctx = Context(cfg, Workload(data, pair.model, torch.device("cpu")),
                  storage or optuna.storages.InMemoryStorage(), run)
    for stage in (lr_range.STAGE, lr_check.STAGE):
        pruner = ctx.pruner(stage.reports(ctx)) if stage.reports is not None else None
        study = open_study(ctx.storage, ctx.run, stage, pruner)
        ctx.decisions[stage.name] = stage.run(ctx, study)
    rows = [[t.params["max_lr"], *t.user_attrs.get("val_losses", [])] for t in study.trials]
    metrics = [[t.params["max_lr"], *t.user_attrs.get("val_metrics", [])] for t in study.trials]
    return ctx.decision(LRDecision), rows, metrics


def stability(name: str, pair: Pair, seeds: int) -> None:
    """Stages 1 and 1b from ``seeds`` search seeds: the readings, the checked max LRs, their
    spread (largest / smallest)."""
    data = pair.data()
    rows = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        d, _, _ = checked_lr(pair, data, seed)
        rows.append(d)
        print(f"  {name} seed {seed}: range test {d.reading:.4g}, x{d.factor:.3g} -> max LR "
              f"{d.max_lr:.4g} ({time.perf_counter() - t0:.0f} s)", flush=True)
    lrs = [d.max_lr for d in rows]
    readings = [d.reading for d in rows]
    print(f"| {name} | {', '.join(f'{r:.3g}' for r in readings)} | "
          f"{', '.join(f'{d.factor:.3g}' for d in rows)} | {', '.join(f'{x:.3g}' for x in lrs)} "
          f"| {max(readings) / min(readings):.2f} | {max(lrs) / min(lrs):.2f} |", flush=True)


def trial_seconds(storage: optuna.storages.BaseStorage, run: str) -> float:
    """Seconds the finished trials of stages 1 and 1b took (over every sitting of a resumed run;
    a run cut off by an interruption is not counted)."""
    total = 0.0
    for stage in (lr_range.STAGE, lr_check.STAGE):
        study = optuna.load_study(study_name=study_name(run, stage.name), storage=storage)
        total += sum((t.datetime_complete - t.datetime_start).total_seconds()
                     for t in study.trials if t.datetime_complete and t.datetime_start)
    return total


def pipeline_choice(pair: Pair, data: Splits, epochs: int, seeds: list[int], name: str,
                    before: Choice | None, save: Callable[[Choice], None],
                    storage: optuna.storages.BaseStorage | None) -> Choice:
    """Stages 1 and 1b of the tool with the default study (reference batch 32, SGD) on the pair,
    then the sweep's 1cycle training at the max LR they chose; ``before`` (a checkpoint) is
    completed, and ``save`` called after each step."""
    choice = before
    if choice is None:
        storage = storage or optuna.storages.InMemoryStorage()
        t0 = time.perf_counter()
        checked, check, metrics = checked_lr(pair, data, seeds[0], storage, name)
        seconds = (trial_seconds(storage, name) if isinstance(storage, RDBStorage)
                   else time.perf_counter() - t0)
        choice = Choice(checked.reading, checked.max_lr, checked.why, [], seconds, check, metrics)
        save(choice)
    for s in seeds[len(choice.accuracies):]:
        choice.accuracies.append(one_cycle_accuracy(pair, data, choice.max_lr, epochs, s))
        save(choice)
    print(f"  pipeline: range test {choice.reading:.4g}, checked max LR {choice.max_lr:.4g} "
          f"({choice.seconds:.0f} s): {100 * statistics.fmean(choice.accuracies):.2f}%",
          flush=True)
    return choice


def center_of(readings: Readings) -> float:
    """The sweep's middle: the validation-minimum reading (the valley where it has none)."""
    return readings.val_min or readings.valley or 0.01


def steps_of(lrs: list[float], center: float, name: str) -> list[int]:
    """The steps k of stored sweep points (max LR = center x sqrt(2)**k); an error for a point
    off that grid (a sweep measured around other readings)."""
    steps = [round(2 * math.log2(lr / center)) for lr in lrs]
    for lr, k in zip(lrs, steps, strict=True):  # 1e-3: a sweep read from a log has 4 digits
        if not math.isclose(lr, center * 2 ** (k / 2), rel_tol=1e-3):
            raise SystemExit(f"{name}: the stored sweep's max LR {lr:.4g} is not on the grid "
                             f"{center:.4g} x sqrt(2)**k of its readings; was it measured with "
                             f"other readings?")
    return steps


def next_step(points: dict[int, list[float]]) -> int | None:
    """The next sweep point to measure (a step k), or None when the sweep is done: first the
    planned ``STEPS``, lowest first; then, while the best band reaches an edge of the points
    measured (the point there within ``BAND`` of the best), one step beyond that edge, the upper
    edge first, as far as ``EDGES``: so the band is bracketed, not cut off by the sweep's range.
    """
    missing = [k for k in STEPS if k not in points]
    if missing:
        return missing[0]
    means = {k: statistics.fmean(a) for k, a in points.items()}
    best = max(means.values())
    top, bottom = max(means), min(means)
    if means[top] >= best - BAND and top < EDGES[1]:
        return top + 1
    if means[bottom] >= best - BAND and bottom > EDGES[0]:
        return bottom - 1
    return None


def calibrate(name: str, pair: Pair, epochs: int, seeds: list[int], result: Result | None = None,
              save: Callable[[Result], None] = lambda _: None,
              storage: optuna.storages.BaseStorage | None = None,
              measure_sweep: bool = True, extra: tuple[int, ...] = ()) -> Result:
    """The sweep and the pipeline's choice, completing ``result`` where it has them (a
    checkpoint; ``measure_sweep=False``: its sweep as it is, measured before); ``save`` is called
    after every measured point; ``extra``: grid steps measured too, wherever the band lies."""
    data = pair.data()
    result = result or Result(name, None)
    epochs = pair.epochs or epochs
    if result.readings is None:
        t0 = time.perf_counter()
        result.readings = read_range(pair, data, seeds)
        result.seconds += time.perf_counter() - t0
        print(f"  {name}: readings " + ", ".join(
            f"{k} {v:.4g}" for k, v in asdict(result.readings).items() if v is not None),
            flush=True)
        save(result)
    if result.center is None:
        result.center = center_of(result.readings)
    center = result.center
    points = dict(zip(steps_of(result.lrs, center, name), result.accuracies, strict=True))
    def todo() -> int | None:
        # first the points measured with fewer seeds than asked (a checkpoint from a run with a
        # smaller --seeds): the band is read off means over the same seeds
        short = [k for k in sorted(points) if len(points[k]) < len(seeds)]
        missing = [k for k in extra if k not in points]
        return (short or missing or [next_step(points)])[0]

    while measure_sweep and (k := todo()) is not None:
        lr = center * 2 ** (k / 2)
        t0 = time.perf_counter()
        done = points.get(k, [])
        points[k] = done + [one_cycle_accuracy(pair, data, lr, epochs, s)
                            for s in seeds[len(done):]]
        result.seconds += time.perf_counter() - t0
        print(f"  {name}: max LR {lr:.4g}: {100 * statistics.fmean(points[k]):.2f}% "
              f"({', '.join(f'{100 * a:.1f}' for a in points[k])})", flush=True)
        result.lrs = [center * 2 ** (k / 2) for k in sorted(points)]  # full precision
        result.accuracies = [points[k] for k in sorted(points)]
        save(result)

    def keep(choice: Choice) -> None:
        result.choice = choice
        save(result)

    result.choice = pipeline_choice(pair, data, epochs, seeds, name, result.choice, keep, storage)
    return result


# --- reporting --------------------------------------------------------------------------------

def band(result: Result) -> tuple[float, float, float]:
    """(best mean accuracy, lowest and highest LR whose mean is within BAND of it), over the
    sweep's points and the pipeline's choice (trained the same way, so one more point: a choice
    between two sweep points is in the band if its own accuracy is)."""
    points = list(zip(result.lrs, result.accuracies, strict=True))
    if result.choice is not None:
        points.append((result.choice.max_lr, result.choice.accuracies))
    means = [(lr, statistics.fmean(a)) for lr, a in points]
    best = max(m for _, m in means)
    inside = [lr for lr, m in means if m >= best - BAND]
    return best, min(inside), max(inside)


def table(result: Result) -> str:
    best, lo, hi = band(result)
    lines = [f"### {result.pair} ({result.seconds:.0f} s)", "",
             "| max LR | test accuracy (mean ± sd over seeds) |", "|---|---|"]
    for lr, accs in zip(result.lrs, result.accuracies, strict=True):
        mark = " **(best band)**" if lo <= lr <= hi else ""
        lines.append(f"| {lr:.4g} | {100 * statistics.fmean(accs):.2f}% ± "
                     f"{100 * statistics.stdev(accs):.2f}{mark} |")
    lines += ["", f"Best {100 * best:.2f}%; band within 0.3 points: {lo:.4g} – {hi:.4g}.", "",
              "| reading | LR | in the band |", "|---|---|---|"]
    readings = asdict(result.readings)
    if result.choice is not None:
        readings["pipeline (stage 1b)"] = result.choice.max_lr
    for key, value in readings.items():
        where = "—" if value is None else ("yes" if lo <= value <= hi else
                                           "below" if value < lo else "above")
        lines.append(f"| {key} | {'—' if value is None else f'{value:.4g}'} | {where} |")
    if result.choice is not None:
        acc = statistics.fmean(result.choice.accuracies)
        sweep_best = max(statistics.fmean(a) for a in result.accuracies)
        gap = 100 * (acc - sweep_best)
        lines += ["", f"Pipeline: {result.choice.why}", "",
                  f"Its 1cycle test accuracy: {100 * acc:.2f}% ({abs(gap):.2f} points "
                  f"{'above' if gap >= 0 else 'below'} the sweep's best)."]
    return "\n".join(lines)


def summary(results: list[Result]) -> str:
    """One row per pair with a measured choice: the reading, the checked max LR, the band, and
    the choice's accuracy against the sweep's best (the acceptance: in the band, within 0.5)."""
    lines = ["| pair | seeds | range test | checked max LR | best band | in the band | choice "
             "accuracy | sweep's best | gap (points) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.choice is None or not r.choice.accuracies:
            continue
        best, lo, hi = band(r)
        sweep_best = max(statistics.fmean(a) for a in r.accuracies)
        acc = statistics.fmean(r.choice.accuracies)
        where = ("yes" if lo <= r.choice.max_lr <= hi else
                 "below" if r.choice.max_lr < lo else "above")
        lines.append(f"| {r.pair} | {len(r.choice.accuracies)} | {r.choice.reading:.3g} | "
                     f"{r.choice.max_lr:.3g} | {lo:.3g} – {hi:.3g} | {where} | "
                     f"{100 * acc:.2f}% | {100 * sweep_best:.2f}% | "
                     f"{100 * (acc - sweep_best):+.2f} |")
    return "\n".join(lines)


def svg(results: list[Result]) -> str:
    """Test accuracy against max LR / the validation-minimum reading, one line per pair; a ring
    marks the pipeline's max LR and its accuracy."""
    w, h, pad, legend = 800, 360, 50, 150
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]

    factors = [lr / center_of(r.readings) for r in results for lr in r.lrs] or [1.0]
    lo2, hi2 = min(-2.0, math.log2(min(factors))), max(2.0, math.log2(max(factors)))

    def x(f: float) -> float:
        return pad + (math.log2(f) - lo2) / (hi2 - lo2) * (w - 2 * pad - legend)

    def y(acc: float, lo: float) -> float:
        return h - pad - (acc - lo) / (1.0 - lo) * (h - 2 * pad)

    lo = min(statistics.fmean(a) for r in results for a in r.accuracies) - 0.02
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="11">',
             f'<line x1="{x(1)}" y1="{pad}" x2="{x(1)}" y2="{h - pad}" stroke="#999" '
             f'stroke-dasharray="4"/>',
             f'<text x="{(w - legend) / 2}" y="{h - 10}" text-anchor="middle">max LR / '
             f'range test\'s validation-minimum reading (log scale, x{2 ** lo2:.3g} ... '
             f'x{2 ** hi2:.3g})</text>',
             f'<text x="12" y="{pad - 15}">test accuracy (mean of seeds; axis from '
             f'{100 * lo:.0f}%)</text>']
    for i, r in enumerate(results):
        center = center_of(r.readings)
        pts = " ".join(f"{x(lr / center):.1f},{y(statistics.fmean(a), lo):.1f}"
                       for lr, a in zip(r.lrs, r.accuracies, strict=True))
        color = colors[i % len(colors)]
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        if r.choice is not None:  # the pipeline's max LR and its accuracy: a ring
            parts.append(f'<circle cx="{x(r.choice.max_lr / center):.1f}" '
                         f'cy="{y(statistics.fmean(r.choice.accuracies), lo):.1f}" r="5" '
                         f'fill="none" stroke="{color}" stroke-width="2"/>')
        parts.append(f'<text x="{w - legend}" y="{pad + 14 * i}" fill="{color}">{r.pair}'
                     f'</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def load_results(path: Path, with_choice: bool = True) -> dict[str, Result]:
    """The pairs of a results.json, by pair (``with_choice=False``: their sweeps only)."""
    rows = json.loads(path.read_text())
    return {r["pair"]: Result(r["pair"], r["readings"] and Readings(**r["readings"]), r["lrs"],
                              r["accuracies"], r["seconds"],
                              Choice(**r["choice"]) if with_choice and r["choice"] else None,
                              r.get("center") or (r["readings"] and center_of(
                                  Readings(**r["readings"]))))
            for r in rows}


def sweep_from_log(text: str, name: str) -> Result:
    """The sweep points a run printed for ``name`` (lines ``  name: max LR 0.01: 60.00% (59.9,
    60.1)``; per-seed accuracies to 0.1 point), as a checkpoint without readings: a run killed
    before it wrote one (older versions saved only at the end) resumes from its log."""
    pattern = re.compile(rf"^  {re.escape(name)}: max LR ([0-9.e+-]+): [0-9.]+% \(([^)]*)\)$")
    result = Result(name, None)
    for match in map(pattern.match, text.splitlines()):
        if match:
            result.lrs.append(float(match[1]))
            result.accuracies.append([float(a) / 100 for a in match[2].split(", ")])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=["mnist1d_cnn", "mlp_small",
                                                       "mlp_wide_deep", "mnist1d_gru",
                                                       "digits_cnn"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cifar", help="an npz file with arrays x (uint8 NHWC) and y (int64)")
    parser.add_argument("--out", type=Path, help="write results.json and curves.svg here")
    parser.add_argument("--stability", type=int, default=0, metavar="N",
                        help="instead: stages 1 and 1b from N search seeds per pair, and the "
                             "spread of their max LRs")
    parser.add_argument("--from-log", type=Path, metavar="LOG",
                        help="resume the pairs' sweeps from the points a killed run printed")
    parser.add_argument("--sweeps", type=Path,
                        help="a results.json measured before: its pairs' sweeps are reused, "
                             "only the pipeline's choice is measured")
    parser.add_argument("--reread", action="store_true",
                        help="measure the pairs' range-test readings (and the pipeline's "
                             "choice) again, keeping their sweeps: after the range test changed")
    parser.add_argument("--steps", type=int, nargs="+", default=[], metavar="K",
                        help="also measure these sweep steps (max LR = center x sqrt(2)**K), "
                             "e.g. where a reading lies outside the swept range")
    parser.add_argument("--summary", type=Path, metavar="RESULTS",
                        help="instead: print one row per pair of a results.json and exit")
    args = parser.parse_args()
    if args.summary:
        print(summary(list(load_results(args.summary).values())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    known = pairs(args.cifar)
    unknown = [name for name in args.pairs if name not in known]
    if unknown:
        raise SystemExit(f"unknown pair(s) {', '.join(map(repr, unknown))}; pairs: "
                         f"{', '.join(known)}")
    before = load_results(args.sweeps, with_choice=False) if args.sweeps else {}
    swept = set(before)  # their sweeps are kept as they are
    checkpoint = args.out / "results.json" if args.out else None
    # resume: what the last run measured is kept (and its other pairs stay in the file)
    results = load_results(checkpoint) if checkpoint and checkpoint.is_file() else {}
    before |= results
    if args.from_log:
        text = args.from_log.read_text()
        before |= {name: sweep_from_log(text, name) for name in args.pairs if name not in before}
    if args.stability:
        print("| pair | range test max LR by seed | factor | checked max LR | spread of the "
              "readings | spread of the max LRs |\n|---|---|---|---|---|---|")
        for name in args.pairs:
            stability(name, known[name], args.stability)
        return
    storage = open_storage(f"sqlite:///{args.out / 'choice.db'}") if args.out else None
    if args.reread:
        for name in args.pairs:
            if name in before:
                before[name].readings, before[name].choice = None, None
            if storage is not None and study_name(name, lr_range.STAGE.name) in (
                    optuna.get_all_study_names(storage)):
                raise SystemExit(f"--reread: {args.out / 'choice.db'} holds {name}'s stages "
                                 "from the earlier range test; move it aside first")

    def save(result: Result) -> None:
        results[result.pair] = result
        if checkpoint:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp")  # a kill mid-write leaves the last checkpoint
            tmp.write_text(json.dumps([asdict(r) for r in results.values()], indent=1))
            tmp.replace(checkpoint)

    for name in args.pairs:
        result = calibrate(name, known[name], args.epochs, list(range(args.seeds)),
                           before.get(name), save, storage,
                           measure_sweep=name not in swept, extra=tuple(args.steps))
        save(result)
        print(table(result), "\n", flush=True)
    if args.out:
        (args.out / "curves.svg").write_text(svg(list(results.values())))


if __name__ == "__main__":
    main()
