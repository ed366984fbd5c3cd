"""Stage 5: final 1cycle training with the chosen values on train + validation, one trial per
seed, each scored once on the test split."""

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
    d = ctx.decisions
    return HParams(d["batch_size"]["min_lr"], d["batch_size"]["max_lr"],
                   d["momentum"]["max_momentum"], d["momentum"]["min_momentum"],
                   d["weight_decay"]["weight_decay"], d["batch_size"]["batch_size"])


def run(ctx: Context, study: optuna.Study) -> dict[str, Any]:
    cfg = ctx.config
    hp = hparams(ctx)
    train = concat(ctx.splits.train, ctx.splits.val)
    per_epoch = epoch_steps(len(train), hp.batch_size)

    def objective(trial: Trial) -> float:
        seed = trial.suggest_categorical("seed", list(cfg.final.seeds))
        result = one_cycle_run(ctx, trial, hp, total_steps=cfg.final.epochs * per_epoch,
                               eval_every=per_epoch, seed=seed, train=train, val=None,
                               prune=False)
        last = result.last
        test = evaluate(result.model, ctx.splits.test, cfg.train.eval_batch_size)
        trial.set_user_attr("test_loss", test.loss)
        trial.set_user_attr("test_accuracy", test.accuracy)
        trial.set_user_attr("train_seconds", last["seconds"])
        log.info("final training, seed %d: %d epochs in %.1f s, test accuracy %.2f%%, loss %.4f",
                 seed, cfg.final.epochs, last["seconds"], 100 * test.accuracy, test.loss)
        return test.accuracy

    trials = run_grid(study, [{"seed": s} for s in cfg.final.seeds], objective)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    accs = [t.user_attrs["test_accuracy"] for t in done]
    losses = [t.user_attrs["test_loss"] for t in done]
    return {
        "test_accuracy": statistics.fmean(accs),
        "test_accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "test_loss": statistics.fmean(losses),
        "seeds": [t.params["seed"] for t in done],
        "test_accuracies": accs,
        "epochs": cfg.final.epochs,
        **hp.__dict__,
        "why": f"1cycle for {cfg.final.epochs} epochs on train + validation, "
               f"{len(done)} seed(s), scored once on the test split",
    }
