"""The staged pipeline against plain Optuna TPE and random search, at equal tuning budgets.

On MNIST-1D with the published CNN, in one process:
  * pipeline: this tool's stages 1-4, its settings scaled to the budget (see ``pipeline_config``);
  * tpe / random: Optuna over max LR (log-uniform), momentum {0.9, 0.95, 0.97, 0.99}, weight
    decay {0, 1e-5, 1e-4, 1e-3}, batch size {32 ... 512} jointly, each trial a 1cycle run of the
    pipeline's short-run length, MedianPruner on validation loss, ``timeout`` = the budget.
Each chosen configuration is then retrained with 1cycle on train + validation and scored on the
test split over ``--seeds`` seeds. Each search is repeated with ``--search-seeds`` seeds.

    .venv/bin/python bench/compare_search.py --budgets 60 120 --search-seeds 2

Run it on an otherwise idle machine: budgets are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time

import optuna

import tuner
from bench._mnist1d import Choice, splits, test_accuracy, train_one_cycle
from tuner.config import RefineConfig, StudyConfig, TrainConfig
from tuner.train import Diverged, evaluate

MOMENTA = [0.9, 0.95, 0.97, 0.99]
DECAYS = [0.0, 1e-5, 1e-4, 1e-3]
BATCHES = [32, 64, 128, 256, 512]


def pipeline_config(budget_s: float, seed: int) -> StudyConfig:
    """The default study, cut down so stages 1-4 fit ``budget_s`` on 2 CPU cores (fewer
    repeats below 100 s, and shorter runs as well below 50 s), refining in what is left."""
    cfg = StudyConfig(train=TrainConfig(seed=seed), refine=RefineConfig(total_s=budget_s))
    if budget_s >= 100:
        return cfg
    range_repeats, epochs = (2, cfg.momentum.epochs) if budget_s >= 50 else (1, 12)
    return dataclasses.replace(
        cfg, lr_range=dataclasses.replace(cfg.lr_range, repeats=range_repeats),
        momentum=dataclasses.replace(cfg.momentum, repeats=1, epochs=epochs),
        weight_decay=dataclasses.replace(cfg.weight_decay, repeats=1, epochs=epochs))


def run_pipeline(budget_s: float, seed: int, data) -> tuple[Choice, float, int]:  # noqa: ANN001
    cfg = pipeline_config(budget_s, seed)
    # One final seed: the final stage is not part of the tuning time (its epochs stay: the
    # batch-size stage's default budget is the time of a final training).
    cfg = dataclasses.replace(cfg, final=dataclasses.replace(cfg.final, seeds=(0,)))
    with tempfile.TemporaryDirectory() as tmp:
        result = tuner.run(cfg, storage=f"sqlite:///{tmp}/p.db", splits=data)
        url = f"sqlite:///{tmp}/p.db"
        trials = sum(len(optuna.load_study(study_name=f"{result.run}/{s}", storage=url).trials)
                     for s in ("lr_range", "momentum", "weight_decay", "batch_size", "refine"))
    seconds = sum(result.decisions[s]["seconds"]
                  for s in ("lr_range", "momentum", "weight_decay", "batch_size", "refine"))
    choice = Choice(result.max_lr, result.momentum, result.weight_decay, result.batch_size,
                    result.min_lr)
    return choice, seconds, trials


def run_optuna(sampler: optuna.samplers.BaseSampler, budget_s: float, data, epochs: int  # noqa: ANN001
               ) -> tuple[Choice, float, int]:
    def objective(trial: optuna.Trial) -> float:
        choice = Choice(trial.suggest_float("max_lr", 1e-3, 1.0, log=True),
                        trial.suggest_categorical("momentum", MOMENTA),
                        trial.suggest_categorical("weight_decay", DECAYS),
                        trial.suggest_categorical("batch_size", BATCHES))
        last = {}

        def on_epoch(epoch: int, model) -> None:  # noqa: ANN001
            last["loss"] = evaluate(model, data.val).loss
            if not math.isfinite(last["loss"]):
                raise optuna.TrialPruned("diverged")
            trial.report(last["loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            train_one_cycle(choice, data.train, epochs, seed=0, on_epoch=on_epoch)
        except Diverged:
            raise optuna.TrialPruned("diverged") from None
        return last["loss"]

    study = optuna.create_study(sampler=sampler, pruner=optuna.pruners.MedianPruner(
        n_startup_trials=5, n_warmup_steps=2))
    t0 = time.perf_counter()
    study.optimize(objective, timeout=budget_s)
    seconds = time.perf_counter() - t0
    best = study.best_params
    return (Choice(best["max_lr"], best["momentum"], best["weight_decay"], best["batch_size"]),
            seconds, len(study.trials))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0, 120.0])
    parser.add_argument("--search-seeds", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5, help="retraining seeds per choice")
    parser.add_argument("--epochs", type=int, default=40, help="retraining epochs (1cycle)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import logging
    logging.getLogger("tuner").setLevel(logging.WARNING)
    data = splits()
    short = StudyConfig().momentum.epochs  # the pipeline's short-run length, for TPE/random too
    seeds = list(range(args.seeds))
    rows = []
    print(f"{'budget':>6} {'method':<8} {'seed':>4} {'tuning s':>8} {'trials':>6}  "
          f"{'chosen':<46} test accuracy", flush=True)
    for budget in args.budgets:
        for search_seed in range(args.search_seeds):
            for method in ("pipeline", "tpe", "random"):
                if method == "pipeline":
                    choice, seconds, n = run_pipeline(budget, search_seed, data)
                else:
                    sampler = (optuna.samplers.TPESampler(seed=search_seed) if method == "tpe"
                               else optuna.samplers.RandomSampler(seed=search_seed))
                    choice, seconds, n = run_optuna(sampler, budget, data, short)
                mean, sd, _ = test_accuracy(choice, data, args.epochs, seeds)
                rows.append((budget, method, mean))
                print(f"{budget:6.0f} {method:<8} {search_seed:4d} {seconds:8.1f} {n:6d}  "
                      f"{choice.describe():<46} {100 * mean:.2f}% ± {100 * sd:.2f}", flush=True)
    print("\nmean test accuracy over search seeds:")
    for budget in args.budgets:
        line = []
        for method in ("pipeline", "tpe", "random"):
            accs = [m for b, meth, m in rows if b == budget and meth == method]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            line.append(f"{method} {100 * statistics.fmean(accs):.2f}% ± {100 * sd:.2f}")
        print(f"  {budget:.0f} s: " + ", ".join(line))


if __name__ == "__main__":
    main()
