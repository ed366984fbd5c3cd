"""How short runs rank max LRs: the refinement's runs (1cycle for ``--epochs`` epochs on the
train split, scored on the validation split) at several max LRs, from ``--seeds`` seeds each,
with one seed's spread beside the mean. Put beside 40-epoch retraining (``bench/retrain.py``) it
says whether the short runs' validation loss ranks LRs as a long training's test accuracy does,
and how much of a one-seed ranking is noise:

    .venv/bin/python -m bench.short_runs --pair mnist1d_cnn 0.068 0.0926 0.133 0.16

Momentum, weight decay and batch size default to what the refinement chose on MNIST-1D
(0.97, 1e-3, 32).
"""

from __future__ import annotations

import argparse
import statistics

from bench._mnist1d import Choice, train_one_cycle
from bench.compare_search import PAIRS
from tuner.train import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("max_lrs", type=float, nargs="+")
    parser.add_argument("--pair", default="mnist1d_cnn", choices=sorted(PAIRS),
                        help="model and data (compare_search.py's pairs)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30, help="the short runs' length")
    parser.add_argument("--momentum", type=float, default=0.97)
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.seeds < 2:
        parser.error(f"--seeds must be at least 2 (a spread needs two runs), but got "
                     f"{args.seeds=}.")
    pair = PAIRS[args.pair]
    data = pair.data()
    print(f"{args.pair}: {args.epochs} epochs on {len(data.train)} training samples, momentum "
          f"{args.momentum:g}, weight decay {args.weight_decay:g}, batch {args.batch_size}, "
          f"{args.seeds} seeds")
    print(f"{'max LR':>8}  {'val loss, mean ± sd':>20}  {'one seed sd':>11}  "
          f"{'val accuracy':>15}  losses by seed")
    for lr in args.max_lrs:
        choice = Choice(lr, args.momentum, args.weight_decay, args.batch_size)
        results = [evaluate(train_one_cycle(choice, data.train, args.epochs, seed,
                                            model_fn=pair.model), data.val)
                   for seed in range(args.seeds)]
        loss = [r.loss for r in results]
        acc = [100 * r.metric for r in results]
        mean, sd = statistics.fmean(loss), statistics.stdev(loss)
        print(f"{lr:>8.4g}  {mean:>11.4f} ± {sd:.4f}  {sd / mean:>10.1%}  "
              f"{statistics.fmean(acc):>6.2f}% ± {statistics.stdev(acc):.2f}  "
              f"{', '.join(f'{x:.3f}' for x in loss)}", flush=True)


if __name__ == "__main__":
    main()
