"""Stage 5: final 1cycle training with the chosen values on train + validation, one trial per
seed, each scored once on the test split.

Without a test split (``npz:`` data without a test file, ``tuner.tune`` without ``test_set``)
the final training uses the training split only and is scored on the validation split: the
decision then holds ``val_accuracy`` and ``val_loss`` instead of ``test_*``."""

from __future__ import annotations

import logging
import statistics
from typing import Any

import optuna
from optuna.trial import Trial, TrialState

from tuner.data import concat
from tuner.stages.common import Context, HParams, epoch_steps, one_cycle_run
from tuner.train import evaluate
from tuner.trials import run_grid

NAME = "final"
DIRECTION = "maximize"  # the value of a final trial is its test accuracy
log = logging.getLogger(__name__)


def hparams(ctx: Context) -> HParams:
    d = ctx.decisions["refine"]  # every chosen value, refined or passed through
    return HParams(d["min_lr"], d["max_lr"], d["max_momentum"], d["min_momentum"],
                   d["weight_decay"], d["batch_size"])


def epochs(ctx: Context) -> int:
    """``final.epochs``, or with ``final.length = "time"`` the epochs of the chosen batch size
    that last as long (the batch-size stage's ``final_epochs``)."""
    cfg = ctx.config
    if cfg.final.length == "epochs":
        return cfg.final.epochs
    return int(ctx.decisions["batch_size"].get("final_epochs", cfg.final.epochs))


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config
    hp = hparams(ctx)
    n_epochs = epochs(ctx)
    if ctx.splits.test is not None:
        train, scored, split = concat(ctx.splits.train, ctx.splits.val), ctx.splits.test, "test"
    else:
        train, scored, split = ctx.splits.train, ctx.splits.val, "val"
    per_epoch = epoch_steps(len(train), hp.batch_size)

    def objective(trial: Trial) -> float:
        seed = trial.suggest_categorical("seed", list(cfg.final.seeds))
        result = one_cycle_run(ctx, trial, hp, total_steps=n_epochs * per_epoch,
                               eval_every=per_epoch, seed=seed, train=train, val=None,
                               prune=False)
        last = result.last
        score = evaluate(result.model, scored, cfg.train.eval_batch_size)
        trial.set_user_attr(f"{split}_loss", score.loss)
        trial.set_user_attr(f"{split}_accuracy", score.accuracy)
        trial.set_user_attr("train_seconds", last["seconds"])
        log.info("final training, seed %d: %d epochs in %.1f s, %s accuracy %.2f%%, loss %.4f",
                 seed, n_epochs, last["seconds"], split, 100 * score.accuracy,
                 score.loss)
        return score.accuracy

    trials = run_grid(study, [{"seed": s} for s in cfg.final.seeds], objective)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    accs = [t.user_attrs[f"{split}_accuracy"] for t in done]
    losses = [t.user_attrs[f"{split}_loss"] for t in done]
    trained_on = "train + validation" if split == "test" else "train (no test split)"
    scored_name = "test" if split == "test" else "validation"
    return {
        f"{split}_accuracy": statistics.fmean(accs),
        f"{split}_accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        f"{split}_loss": statistics.fmean(losses),
        "scored_on": split,
        "seeds": [t.params["seed"] for t in done],
        f"{split}_accuracies": accs,
        "epochs": n_epochs,
        **hp.__dict__,
        "why": f"1cycle for {n_epochs} epochs on {trained_on}, "
               f"{len(done)} seed(s), scored once on the {scored_name} split",
    }
