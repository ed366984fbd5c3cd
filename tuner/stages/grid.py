"""A grid stage: one value per trial from a config section's ``values``, each trial the mean of
``repeats`` short 1cycle runs of ``epochs`` epochs at the reference batch size; the value with
the lowest final validation loss wins. Momentum and weight decay are two instances.

A stage named in ``refine.replaces`` runs no trials: it decides its starting value and the
refinement searches its whole grid, jointly with the others (``tuner.budget`` does this when a
budget leaves one run per value, which ranks values by chance)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from optuna.trial import FrozenTrial, Trial, TrialState

from tuner.stages.base import D, HParams, Sizes, Speed, Stage, epoch_steps
from tuner.text import format_metric
from tuner.trials import run_grid, trial_params

if TYPE_CHECKING:
    import optuna

    from tuner.config import StudyConfig
    from tuner.context import Context

log = logging.getLogger(__name__)


class GridSettings(Protocol):
    """The config section of a grid stage (``[momentum]``, ``[weight_decay]``)."""

    @property
    def values(self) -> tuple[float, ...]: ...
    @property
    def epochs(self) -> int: ...
    @property
    def repeats(self) -> int: ...


class GridChoice(NamedTuple):
    value: Any
    why: str


def describe_trial(t: FrozenTrial) -> str:
    if t.state == TrialState.COMPLETE:
        return f"{t.value:.4g}"
    if "diverged" in t.user_attrs:
        return "diverged"
    if "infeasible" in t.user_attrs:
        return "out of memory"
    return f"pruned at report {t.user_attrs.get('pruned_at', t.last_step)}"


def scored(t: FrozenTrial) -> bool:
    """COMPLETE with a finite final loss."""
    return t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)


def value_text(value: float) -> str:
    """A grid value for a reader: an integer as it is, a float to 3 significant digits."""
    return str(value) if isinstance(value, int) else f"{value:.3g}"


def decide_grid(trials: Sequence[FrozenTrial], param: str, label: str | None = None
                ) -> GridChoice:
    """The value of ``param`` whose COMPLETE trial has the lowest final validation loss."""
    label = label or param
    complete = [t for t in trials if scored(t)]
    if not complete:
        seen = ", ".join(f"{trial_params(t)[param]}: {describe_trial(t)}" for t in trials)
        raise RuntimeError(f"every {label} trial was pruned or diverged ({seen}); the LR range "
                           f"is probably too high: lower lr_range.end_lr.")
    best = min(complete, key=lambda t: t.value)
    others = ", ".join(f"{value_text(trial_params(t)[param])}: {describe_trial(t)}"
                       for t in sorted(trials, key=lambda t: trial_params(t)[param], reverse=True))
    why = (f"{label} {value_text(best.params[param])} gave the lowest final validation loss "
           f"{best.value:.4g} (all: {others})")
    return GridChoice(best.params[param], why)


def metric_text(name: str | None, values: Sequence[float | None]) -> str:
    """", accuracy 95.1%, 94.9%" for a log line; "" without a metric."""
    if name is None or None in values:
        return ""
    return f", {name} " + ", ".join(format_metric(name, v) for v in values)


def grid_seconds(cfg: StudyConfig, section: GridSettings, speed: Speed, sizes: Sizes) -> float:
    """Seconds of a grid of short runs at ``train.batch_size``, one evaluation per epoch."""
    bs = cfg.train.batch_size
    epoch = epoch_steps(sizes.n_train, bs) * speed.step_s[bs] + sizes.n_val * speed.eval_sample_s
    return len(section.values) * section.repeats * section.epochs * epoch


def grid_stage(*, name: str, title: str, param: str, label: str, decision: type[D],
               settings: Callable[[StudyConfig], GridSettings],
               hparams: Callable[[Context, float], HParams],
               decide: Callable[[Context, float, str], D],
               wording: Callable[[StudyConfig], str] | None = None,
               values: Callable[[Context], Sequence[float]] | None = None,
               choose: Callable[[Context, Sequence[FrozenTrial], str], GridChoice] | None = None,
               start: Callable[[Context], float] | None = None) -> Stage[D]:
    """A ``Stage`` that runs ``settings(cfg).values`` as a grid of ``param``.

    ``hparams(ctx, value)`` gives a trial's run; ``decide(ctx, value, why)`` the decision;
    ``wording(cfg)`` names the value in the log and the decision (default ``label``);
    ``values(ctx)`` the grid when it depends on earlier decisions (default
    ``settings(cfg).values``, which also sizes the cost estimate); ``choose(ctx, trials,
    wording)`` picks the value (default ``decide_grid``: the lowest mean final loss);
    ``start(ctx)`` the value taken without runs when ``refine.replaces`` names the stage.
    """

    def replaced(cfg: StudyConfig) -> bool:
        return start is not None and name in cfg.refine.replaces

    def run(ctx: Context, study: optuna.Study) -> D:
        cfg = ctx.config
        section = settings(cfg)
        grid = list(values(ctx)) if values is not None else list(section.values)
        words = wording(cfg) if wording is not None else label
        if start is not None and replaced(cfg):
            value = start(ctx)
            return decide(ctx, value, f"{words} {value_text(value)} to start from, no runs: the "
                                      f"refinement searches across "
                                      f"{', '.join(map(value_text, grid))} jointly with the other "
                                      f"values (refine.replaces)")
        ctx.epoch_steps(cfg.train.batch_size)  # a clear error before any trial is stored

        def objective(trial: Trial) -> float:
            value = trial.suggest_categorical(param, grid)
            loss = ctx.repeated_run(trial, hparams(ctx, value), repeats=section.repeats,
                                    epochs=section.epochs)
            log.info("%s %g: val loss %.4f (mean of %d)%s", words, value, loss,
                     section.repeats, metric_text(cfg.train.metric_name(),
                                                  trial.user_attrs["val_metrics"]))
            return loss

        trials = run_grid(study, [{param: v} for v in grid], objective)
        choice = (choose(ctx, trials, words) if choose is not None
                  else decide_grid(trials, param, words))
        return decide(ctx, choice.value, choice.why)

    def cost(cfg: StudyConfig, speed: Speed, sizes: Sizes) -> float:
        section = settings(cfg.resolved())
        if replaced(cfg):  # no runs here, but the refinement's search needs one per value
            section = dataclasses.replace(section, repeats=1)  # type: ignore[type-var]
        return grid_seconds(cfg, section, speed, sizes)

    return Stage(name=name, title=title, decision=decision, run=run,
                 reports=lambda ctx: settings(ctx.config).epochs, cost=cost,
                 param=param, param_label=label)
