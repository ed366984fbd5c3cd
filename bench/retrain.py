"""Retrain given configurations as compare_search.py scores its choices: 1cycle on train +
validation, test accuracy over ``--seeds`` seeds. For checking one value at a time, e.g. the
max LR a larger batch survives:

    .venv/bin/python -m bench.retrain 0.228,0.95,1e-4,64,80 0.151,0.95,1e-4,64,80

Each configuration is MAX_LR,MOMENTUM,WEIGHT_DECAY,BATCH_SIZE,EPOCHS (min LR = max / 10).
``--pair`` picks another of compare_search.py's model/data pairs (default the published CNN).
"""

from __future__ import annotations

import argparse

from bench._mnist1d import Choice, test_accuracy
from bench.compare_search import PAIRS


def parse(text: str) -> tuple[Choice, int]:
    try:
        lr, mom, wd, bs, epochs = text.split(",")
        return Choice(float(lr), float(mom), float(wd), int(bs)), int(epochs)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected MAX_LR,MOMENTUM,WEIGHT_DECAY,BATCH_SIZE,EPOCHS such as "
            f"0.1,0.95,1e-3,32,40, but got {text!r}.") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", type=parse, nargs="+")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--pair", default="mnist1d_cnn", choices=sorted(PAIRS),
                        help="model and data (compare_search.py's pairs)")
    args = parser.parse_args()
    pair = PAIRS[args.pair]
    data = pair.data()
    for choice, epochs in args.configs:
        mean, sd, accs = test_accuracy(choice, data, epochs, list(range(args.seeds)), pair.model)
        print(f"{choice.describe():<46} {epochs:4d} epochs  {100 * mean:.2f}% ± {100 * sd:.2f}  "
              f"(seeds: {', '.join(f'{100 * a:.1f}' for a in accs)})", flush=True)


if __name__ == "__main__":
    main()
