"""Stage 5: final 1cycle training with the chosen values on train + validation, one trial per
seed, each scored once on the test split.

Without a test split (``npz:`` data without a test file, ``tuner.tune`` without ``test_set``)
the final training uses the training split only and is scored on the validation split: the
decision's ``scored_on`` is then ``"val"`` instead of ``"test"``."""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from optuna.trial import Trial, TrialState

from tuner.stages.base import Decision, HParams, Stage
from tuner.stages.batch_size import BatchSizeDecision
from tuner.stages.refine import RefineDecision
from tuner.text import format_metric, split_name
from tuner.trials import run_grid

if TYPE_CHECKING:
    import optuna

    from tuner.context import Context

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FinalDecision(Decision):
    values: HParams  # what the final training ran with
    epochs: int
    scored_on: Literal["test", "val"]  # "val": the data had no test split
    loss: float  # on that split, mean over the seeds
    loss_sd: float
    losses: list[float]
    seeds: list[int]
    optimizer: str = "sgd"  # train.optimizer
    metric_name: str | None = None  # train.metric's name: "accuracy", ... (None: no metric)
    metric: float | None = None  # on that split, mean over the seeds (higher is better)
    metric_sd: float | None = None
    metrics: list[float] | None = None

    def summary(self) -> str:
        name = split_name(self.scored_on)
        loss = f"{name} loss {self.loss:.4f}"
        if self.metric is None:
            return f"{loss} ± {self.loss_sd:.4f} over {len(self.seeds)} seed(s)"
        return (f"{name} {self.metric_name} {format_metric(self.metric_name, self.metric)} ± "
                f"{format_metric(self.metric_name, self.metric_sd or 0.0, sign=False)} over "
                f"{len(self.seeds)} seed(s), {loss}")


def epochs(ctx: Context) -> int:
    """``final.epochs``, or with ``final.length = "time"`` the epochs of the chosen batch size
    that last as long (the batch-size stage's ``final_epochs``)."""
    cfg = ctx.config
    if cfg.final.length == "epochs":
        return cfg.final.epochs
    return ctx.decision(BatchSizeDecision).final_epochs


def run(ctx: Context, study: optuna.Study) -> FinalDecision:
    cfg = ctx.config
    hp = ctx.decision(RefineDecision).values
    n_epochs = epochs(ctx)

    def objective(trial: Trial) -> float:
        seed = trial.suggest_categorical("seed", list(cfg.final.seeds))
        score = ctx.final_run(trial, hp, epochs=n_epochs, seed=seed)
        ev = score.evaluation
        trial.set_user_attr(f"{score.split}_loss", ev.loss)
        if ev.metric is not None:
            trial.set_user_attr(f"{score.split}_metric", ev.metric)
        trial.set_user_attr("scored_on", score.split)
        trial.set_user_attr("train_seconds", score.seconds)
        log.info("final training, seed %d: %d epochs in %.1f s, %s loss %.4f%s", seed, n_epochs,
                 score.seconds, score.split, ev.loss, "" if ev.metric is None else
                 f", {name} {format_metric(name, ev.metric)}")
        return ev.loss

    name = cfg.train.metric_name()
    trials = run_grid(study, [{"seed": s} for s in cfg.final.seeds], objective)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    split = done[0].user_attrs["scored_on"]
    losses = [t.user_attrs[f"{split}_loss"] for t in done]
    metrics = ([t.user_attrs[f"{split}_metric"] for t in done] if name is not None else None)
    trained_on = "train + validation" if split == "test" else "train (no test split)"
    return FinalDecision(
        values=hp, epochs=n_epochs, scored_on=split, loss=statistics.fmean(losses),
        loss_sd=sd(losses), losses=losses, seeds=[t.params["seed"] for t in done],
        optimizer=cfg.train.optimizer, metric_name=name,
        metric=statistics.fmean(metrics) if metrics else None,
        metric_sd=sd(metrics) if metrics else None, metrics=metrics,
        why=f"1cycle ({cfg.train.optimizer}) for {n_epochs} epochs on {trained_on}, "
            f"{len(done)} seed(s), scored once on the {split_name(split)} split")


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


STAGE = Stage(name="final", title="Final 1cycle training", decision=FinalDecision, run=run,
              metric="test loss")
