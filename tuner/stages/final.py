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
from tuner.text import split_name
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
    accuracy: float  # on that split, mean over the seeds
    accuracy_sd: float
    loss: float
    accuracies: list[float]
    seeds: list[int]

    def summary(self) -> str:
        name = split_name(self.scored_on)
        return (f"{name} accuracy {100 * self.accuracy:.2f}% ± {100 * self.accuracy_sd:.2f} "
                f"over {len(self.seeds)} seed(s), {name} loss {self.loss:.4f}")


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
        trial.set_user_attr(f"{score.split}_accuracy", ev.accuracy)
        trial.set_user_attr("scored_on", score.split)
        trial.set_user_attr("train_seconds", score.seconds)
        log.info("final training, seed %d: %d epochs in %.1f s, %s accuracy %.2f%%, loss %.4f",
                 seed, n_epochs, score.seconds, score.split, 100 * ev.accuracy, ev.loss)
        return ev.accuracy

    trials = run_grid(study, [{"seed": s} for s in cfg.final.seeds], objective)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    split = done[0].user_attrs["scored_on"]
    accs = [t.user_attrs[f"{split}_accuracy"] for t in done]
    trained_on = "train + validation" if split == "test" else "train (no test split)"
    return FinalDecision(
        values=hp, epochs=n_epochs, scored_on=split, accuracy=statistics.fmean(accs),
        accuracy_sd=statistics.stdev(accs) if len(accs) > 1 else 0.0,
        loss=statistics.fmean(t.user_attrs[f"{split}_loss"] for t in done),
        accuracies=accs, seeds=[t.params["seed"] for t in done],
        why=f"1cycle for {n_epochs} epochs on {trained_on}, {len(done)} seed(s), scored once on "
            f"the {split_name(split)} split")


STAGE = Stage(name="final", title="Final 1cycle training", decision=FinalDecision, run=run,
              direction="maximize", metric="final accuracy")
