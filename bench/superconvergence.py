"""Superconvergence on MNIST-1D: the published recipe against the tool's 1cycle training.

The MNIST-1D paper's CNN recipe: Adam, LR 1e-2, batch 100, 150 epochs (6000 steps), no
schedule. The tool: 1cycle with the values a pipeline run chose, at 10, 20 and 40 epochs. Both
train on the 4000 training samples (train + validation) and are scored on the 1000 test
samples, over 5 seeds each.

    .venv/bin/python bench/superconvergence.py [--storage sqlite:///studies/tuner.db] [--run NAME]

Without a finished run in the storage, the default study is run first (about two minutes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import optuna
import torch

import tuner
from bench._mnist1d import Choice, splits, test_accuracy
from tuner.data import concat
from tuner.models import mnist1d_cnn
from tuner.stages.final import FinalDecision
from tuner.storage import Run, StorageError
from tuner.train import evaluate


def published_recipe(data, seed: int, epochs: int = 150, batch_size: int = 100,  # noqa: ANN001
                     lr: float = 1e-2) -> float:
    torch.manual_seed(seed)
    model = mnist1d_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    train = concat(data.train, data.val)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=generator)
        for i in range(len(train) // batch_size):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return evaluate(model, data.test).metric


def chosen(storage: str, run: str) -> Choice:
    try:
        final = Run.find(storage, run).decisions().get("final")
    except StorageError:
        final = None
    if not isinstance(final, FinalDecision):
        print(f"no finished run {run!r} in {storage}; running the default study first", flush=True)
        final = tuner.run(tuner.load_study("studies/mnist1d_cnn.toml"), storage=storage,
                          run_name=run).final
    v = final.values
    return Choice(v.max_lr, v.max_momentum, v.weight_decay, v.batch_size, v.min_lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///studies/tuner.db")
    parser.add_argument("--run", default="mnist1d_cnn")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = splits()
    seeds = list(range(args.seeds))
    choice = chosen(args.storage, args.run)

    t0 = time.perf_counter()
    adam = [published_recipe(data, s) for s in seeds]
    adam_mean = statistics.fmean(adam)
    print(f"published recipe (Adam 1e-2, batch 100, 150 epochs): "
          f"{100 * adam_mean:.2f}% ± {100 * statistics.stdev(adam):.2f} "
          f"({time.perf_counter() - t0:.0f} s for {len(seeds)} seeds)", flush=True)
    print(f"tool's choice: {choice.describe()}")
    reached = None
    for epochs in (10, 20, 40):
        t0 = time.perf_counter()
        mean, sd, _ = test_accuracy(choice, data, epochs, seeds)
        print(f"1cycle, {epochs:3d} epochs: {100 * mean:.2f}% ± {100 * sd:.2f} "
              f"({time.perf_counter() - t0:.0f} s for {len(seeds)} seeds)", flush=True)
        if reached is None and mean >= adam_mean:
            reached = epochs
    if reached is None:
        print("1cycle did not reach the published recipe's mean accuracy within 40 epochs")
    else:
        print(f"1cycle reached the published recipe's mean accuracy at {reached} epochs, "
              f"{reached / 150:.0%} of its 150")


if __name__ == "__main__":
    main()
