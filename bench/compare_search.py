"""The staged pipeline against plain Optuna TPE and random search, at equal tuning budgets.

On MNIST-1D with the published CNN (``--pair``: another of ``bench/lr_calibration.py``'s pairs
that needs no download, e.g. ``mlp_wide_deep``), in one process:
  * pipeline: this tool's default study run with ``budget_s`` = the budget: the tool measures
    this machine, cuts stages 1-4 down to fit and refines with TPE in what they leave;
  * tpe / random: Optuna over max LR (log-uniform), momentum {0.9, 0.95, 0.97, 0.99}, weight
    decay {0, 1e-5, 1e-4, 1e-3}, batch size {32 ... 512} jointly, each trial a 1cycle run of the
    pipeline's short-run length, MedianPruner on validation loss, ``timeout`` = the budget.
Each chosen configuration is then retrained with 1cycle on train + validation and scored on the
test split over ``--seeds`` seeds, twice: for ``--epochs`` epochs whatever its batch size, and for
equal time: the epochs of its batch size that take as long as ``--epochs`` epochs at batch size
``--reference-batch`` (from throughputs measured once at the start, the same for every method).
Each search is repeated with ``--search-seeds`` seeds (``--first-seed``, ``--first-seed`` + 1, ...:
a later run can add seeds to an earlier one's).

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
from collections.abc import Callable
from pathlib import Path

import optuna
from torch import nn

import tuner
from bench._mnist1d import Choice, test_accuracy, train_one_cycle
from bench.lr_calibration import pairs
from tuner.config import StudyConfig, TrainConfig
from tuner.data import concat
from tuner.stages import NAMES
from tuner.train import Diverged, evaluate, make_sgd, measure_throughput

ModelFn = Callable[[], nn.Module]
PAIRS = {name: p for name, p in pairs(None).items() if not name.startswith(("cifar", "resnet"))}
MOMENTA = [0.9, 0.95, 0.97, 0.99]
DECAYS = [0.0, 1e-5, 1e-4, 1e-3]
BATCHES = [32, 64, 128, 256, 512]


def run_pipeline(budget_s: float, seed: int, data, model_fn: ModelFn,  # noqa: ANN001
                 keep: Path | None = None) -> tuple[Choice, float, int, str]:
    """The default study fitted to the budget by the tool itself (``tuner run --budget``):
    stages 1-4 cut down as this machine's measured speed requires, the refinement in the rest.
    Also returns the refinement's decision in words. With ``keep``, the study's SQLite file
    is kept there (``<budget>s_seed<seed>.db``) for reading its trials afterwards."""
    # One final seed: the final stage is not part of the tuning time.
    cfg = StudyConfig(train=TrainConfig(seed=seed))
    cfg = cfg.replace(final=dataclasses.replace(cfg.final, seeds=(0,)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.db"
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            path = keep / f"{budget_s:g}s_seed{seed}.db"
            path.unlink(missing_ok=True)  # a fresh study, not a resumption of an earlier run's
        url = f"sqlite:///{path}"
        t0 = time.perf_counter()
        result = tuner.run(cfg, storage=url, splits=data, budget_s=budget_s, model_fn=model_fn)
        # Tuning time: everything but the final training (the planning's measurements count).
        seconds = time.perf_counter() - t0 - result.final.seconds
        trials = sum(len(optuna.load_study(study_name=f"{result.run}/{s}", storage=url).trials)
                     for s in NAMES if s != "final")
    choice = Choice(result.max_lr, result.momentum, result.weight_decay, result.batch_size,
                    result.min_lr)
    return choice, seconds, trials, result.decisions["refine"].why


def run_optuna(sampler: optuna.samplers.BaseSampler, budget_s: float, data, epochs: int,  # noqa: ANN001
               model_fn: ModelFn) -> tuple[Choice, float, int]:
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
            train_one_cycle(choice, data.train, epochs, seed=0, on_epoch=on_epoch,
                            model_fn=model_fn)
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


def samples_per_second(data, sizes: list[int], model_fn: ModelFn) -> dict[int, float]:  # noqa: ANN001
    """Training samples per second of each batch size on train + validation (the retraining)."""
    train = concat(data.train, data.val)
    rates = {}
    for bs in sizes:
        model = model_fn()
        steps_per_s = measure_throughput(model, make_sgd(model, 0.01, 0.9, 0.0), train, bs,
                                         min_seconds=2.0)
        rates[bs] = steps_per_s * bs
    return rates


def equal_time_epochs(epochs: int, rate: float, reference_rate: float) -> int:
    return max(1, round(epochs * rate / reference_rate))


METHODS = ("pipeline", "tpe", "random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[60.0, 120.0])
    parser.add_argument("--search-seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first search seed (to add seeds to an earlier run's)")
    parser.add_argument("--seeds", type=int, default=5, help="retraining seeds per choice")
    parser.add_argument("--epochs", type=int, default=40, help="retraining epochs (1cycle)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="which searches to run (default all three)")
    parser.add_argument("--pair", default="mnist1d_cnn", choices=sorted(PAIRS),
                        help="model and data (bench/lr_calibration.py's pairs, no CIFAR)")
    parser.add_argument("--why", action="store_true",
                        help="print each pipeline search's refinement decision in words")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="keep each pipeline search's SQLite study file in DIR")
    parser.add_argument("--reference-batch", type=int, default=32,
                        help="equal-time retraining lasts as long as --epochs at this size")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import logging
    logging.getLogger("tuner").setLevel(logging.WARNING)
    pair = PAIRS[args.pair]
    data, model_fn = pair.data(), pair.model
    print(f"pair {args.pair}", flush=True)
    short = StudyConfig().momentum.epochs  # the pipeline's short-run length, for TPE/random too
    seeds = list(range(args.seeds))
    rates = samples_per_second(data, sorted(set(BATCHES) | {args.reference_batch}), model_fn)
    equal = {bs: equal_time_epochs(args.epochs, r, rates[args.reference_batch])
             for bs, r in rates.items()}
    print("measured samples/s (train + validation): " + ", ".join(
        f"bs {bs} {r:.0f}" for bs, r in rates.items()))
    print(f"equal-time retraining ({args.epochs} epochs at batch size {args.reference_batch}): "
          + ", ".join(f"bs {bs} {e} epochs" for bs, e in equal.items()), flush=True)
    rows = []
    print(f"{'budget':>6} {'method':<8} {'seed':>4} {'tuning s':>8} {'trials':>6}  "
          f"{'chosen':<46} {f'{args.epochs} epochs':<16} equal time", flush=True)
    for budget in args.budgets:
        for search_seed in range(args.first_seed, args.first_seed + args.search_seeds):
            for method in args.methods:
                why = ""
                if method == "pipeline":
                    choice, seconds, n, why = run_pipeline(budget, search_seed, data, model_fn,
                                                          args.keep)
                else:
                    sampler = (optuna.samplers.TPESampler(seed=search_seed) if method == "tpe"
                               else optuna.samplers.RandomSampler(seed=search_seed))
                    choice, seconds, n = run_optuna(sampler, budget, data, short, model_fn)
                mean, sd, _ = test_accuracy(choice, data, args.epochs, seeds, model_fn)
                eq_epochs = equal[choice.batch_size]
                eq_mean, eq_sd = ((mean, sd) if eq_epochs == args.epochs  # the same training
                                  else test_accuracy(choice, data, eq_epochs, seeds,
                                                     model_fn)[:2])
                rows.append((budget, method, mean, eq_mean))
                print(f"{budget:6.0f} {method:<8} {search_seed:4d} {seconds:8.1f} {n:6d}  "
                      f"{choice.describe():<46} {100 * mean:5.2f}% ± {100 * sd:4.2f}   "
                      f"{100 * eq_mean:5.2f}% ± {100 * eq_sd:4.2f} ({eq_epochs} ep)", flush=True)
                if args.why and why:
                    print(f"       refinement: {why}", flush=True)
    print("\nmean test accuracy over search seeds:")
    for budget in args.budgets:
        for col, label in ((2, f"{args.epochs} epochs"), (3, "equal time")):
            line = []
            for method in args.methods:
                accs = [r[col] for r in rows if r[0] == budget and r[1] == method]
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                line.append(f"{method} {100 * statistics.fmean(accs):.2f}% ± {100 * sd:.2f}")
            print(f"  {budget:.0f} s, {label:<10}: " + ", ".join(line))


if __name__ == "__main__":
    main()
