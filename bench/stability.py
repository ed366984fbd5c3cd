"""Decisions from search seed to search seed: one study run whole from several ``train.seed``s.

Each seed moves every stage's seeds (range tests, the check's and the grids' runs, the
batch-size runs); the data split stays (``data.split_seed``). Prints each seed's decisions
(range test reading, the check's factor and max LR, momentum, weight decay, batch size, the
final max LR and test accuracy) and the spread of the final max LRs (largest / smallest), and
whether one batch size was chosen throughout: the LR issue's "same study on 5 search seeds
gives max LRs within a factor 1.5 and one batch size".

    .venv/bin/python -m bench.stability studies/mnist1d_cnn.toml --seeds 5

Run it alone on the machine: the batch-size stage compares sizes at equal time.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path

import tuner
from tuner.config import load_study
from tuner.stages.base import find
from tuner.stages.batch_size import BatchSizeDecision
from tuner.stages.lr_check import LRDecision
from tuner.stages.momentum import MomentumDecision
from tuner.stages.weight_decay import WeightDecayDecision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--seeds", type=int, default=5, help="search seeds 0 .. N-1")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = load_study(args.study)
    lrs, sizes, accs = [], [], []
    print("| seed | reading | check | momentum | weight decay | batch | final max LR | test "
          "metric | minutes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        cfg = base.replace(train=dataclasses.replace(base.train, seed=seed))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = tuner.run(cfg, storage=f"sqlite:///{tmp}/s.db")
            minutes = (time.perf_counter() - t0) / 60
        d = result.decisions
        check, size = find(d, LRDecision), find(d, BatchSizeDecision)
        metric = result.metric
        row = (f"| {seed} | {check.reading:.3g} | x{check.factor:.3g} = {check.max_lr:.3g} | "
               f"{find(d, MomentumDecision).max_momentum:g} | "
               f"{find(d, WeightDecayDecision).weight_decay:g} | {size.batch_size} | "
               f"{result.max_lr:.3g} | "
               f"{'-' if metric is None else f'{metric:.2%}'} | {minutes:.1f} |")
        print(row, flush=True)
        lrs.append(result.max_lr)
        sizes.append(result.batch_size)
        if metric is not None:
            accs.append(metric)
    print(f"\nfinal max LRs {min(lrs):.3g} - {max(lrs):.3g}: spread {max(lrs) / min(lrs):.2f}x; "
          f"batch sizes {sorted(set(sizes))}"
          + (f"; test metric {statistics.fmean(accs):.2%} +- {statistics.stdev(accs):.2%}"
             if len(accs) > 1 else ""))


if __name__ == "__main__":
    main()
