"""Time one training epoch of tuner's training loop against a minimal hand-written PyTorch loop.

Same model (same initial weights), same data tensors, same batch size, same SGD settings, same
device; the runs alternate (tool, minimal, minimal, tool, ...) so that a drift in the machine's
speed hits both alike, and the medians of ``--runs`` epochs each are compared.

The tool's epoch is ``tuner.train.fit`` as every stage calls it: a 1cycle LR and momentum set
before each step, the shuffled batches gathered on the device, the mean training loss kept on
the device and read once at the end, and an evaluation callback (here a no-op). The minimal loop
is what one would write by hand: randperm, index, forward, backward, step.

    python bench/epoch_overhead.py                       # MNIST-1D CNN and CIFAR-10 3-layer
    python bench/epoch_overhead.py --cifar cifar10_train.npz --threads 2
    python bench/epoch_overhead.py --only cifar10 --model resnet20 --device cuda

Without ``--cifar`` the CIFAR-10 case uses synthetic random images of CIFAR's shape
(3x32x32; the time per epoch does not depend on the pixel values). ``--cifar`` takes an npz
file with arrays ``x`` (uint8, N x 32 x 32 x 3) and ``y`` (int64 labels), e.g. built by your
own script from torchvision's CIFAR-10. ``--model`` picks the CIFAR case's network.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuner.config import DataConfig  # noqa: E402
from tuner.data import TensorData, load_splits  # noqa: E402
from tuner.device import autocast, prepare_model, resolve_device, synchronize  # noqa: E402
from tuner.models import build_model  # noqa: E402
from tuner.schedules import one_cycle  # noqa: E402
from tuner.train import fit, make_sgd  # noqa: E402

LR, MOMENTUM, WD = 0.01, 0.9, 5e-4
CIFAR_RESNETS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
CIFAR_LABELS = {"cifar10_3layer": "3-layer",
                **{name: f"ResNet-{name[len('resnet'):]}" for name in CIFAR_RESNETS}}


def tool_epoch(model: nn.Module, data: TensorData, batch_size: int, seed: int) -> float:
    steps = len(data) // batch_size
    optimizer = make_sgd(model, LR, MOMENTUM, WD)

    def schedule(step: int):  # noqa: ANN202 -- the stages' 1cycle, LR and momentum per step
        return one_cycle(step, steps, LR / 10, LR, 0.95, 0.85)

    synchronize(data.device)
    t0 = time.perf_counter()
    fit(model, optimizer, data, total_steps=steps, batch_size=batch_size, schedule=schedule,
        eval_every=steps, on_eval=lambda *_: None,
        generator=torch.Generator(device=data.device).manual_seed(seed))
    synchronize(data.device)
    return time.perf_counter() - t0


def minimal_epoch(model: nn.Module, data: TensorData, batch_size: int, seed: int) -> float:
    x_all, y_all, device = data.x, data.y, data.device
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    generator = torch.Generator(device=device).manual_seed(seed)
    channels_last = device.type == "cuda" and x_all.dim() == 4
    synchronize(device)
    t0 = time.perf_counter()
    model.train()
    perm = torch.randperm(len(y_all), device=device, generator=generator)
    for i in range(len(y_all) // batch_size):
        index = perm[i * batch_size:(i + 1) * batch_size]
        x, y = x_all[index], y_all[index]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):  # bf16 on CUDA, as the tool; nothing on the CPU
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - t0


def compare(name: str, make_model: Callable[[], nn.Module], data: TensorData, batch_size: int,
            runs: int, device: torch.device) -> dict[str, float]:
    torch.manual_seed(0)
    init = prepare_model(make_model(), device).state_dict()

    def fresh() -> nn.Module:
        model = prepare_model(make_model(), device)
        model.load_state_dict(init)
        return model

    tool_epoch(fresh(), data, batch_size, 0)  # warm-up: allocation, kernel choice
    minimal_epoch(fresh(), data, batch_size, 0)
    tool, minimal = [], []
    for r in range(runs):
        order = [(tool_epoch, tool), (minimal_epoch, minimal)]
        for run_epoch, times in order if r % 2 == 0 else order[::-1]:
            times.append(run_epoch(fresh(), data, batch_size, r + 1))
    t, m = statistics.median(tool), statistics.median(minimal)
    print(f"{name:<34} {len(data):>6} {batch_size:>5} {len(data) // batch_size:>6}  "
          f"{t:8.3f} s {m:8.3f} s  {t / m:6.3f}x  {min(tool) / min(minimal):6.3f}x", flush=True)
    print(f"{'':<34} epochs (s): tool {', '.join(f'{v:.3f}' for v in tool)}; "
          f"minimal {', '.join(f'{v:.3f}' for v in minimal)}", flush=True)
    return {"tool_s": t, "minimal_s": m, "ratio": t / m}


def cifar_data(path: str | None, n: int, device: torch.device) -> TensorData:
    if path:
        splits = load_splits(DataConfig(name=f"npz:{path}", train_subset=n, val_fraction=0.01,
                                        augment="none"), device)
        return splits.train
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.standard_normal((n, 3, 32, 32), dtype=np.float32), device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return TensorData(x, torch.tensor(rng.integers(0, 10, n), device=device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", metavar="NPZ",
                        help="real CIFAR-10: an npz file with arrays x (uint8 NHWC) and y "
                             "(int64), e.g. built by your own script; default synthetic random "
                             "images of CIFAR's shape")
    parser.add_argument("--model", default="cifar10_3layer",
                        choices=("cifar10_3layer", *CIFAR_RESNETS),
                        help="the CIFAR case's network (default cifar10_3layer)")
    parser.add_argument("--cifar-images", type=int, default=10000,
                        help="training images per CIFAR epoch (default 10000; 50000 = all)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--only", choices=("mnist1d", "cifar10"), help="run one case only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, "
          f"median of {args.runs} epochs each, runs alternating\n")
    print(f"{'case':<34} {'images':>6} {'batch':>5} {'steps':>6}  {'tool':>10} {'minimal':>10}"
          f"  {'ratio':>7} {'(fastest)':>9}")
    results = {}
    if args.only in (None, "mnist1d"):
        mnist1d = load_splits(DataConfig(name="mnist1d"), device)
        train = TensorData(torch.cat([mnist1d.train.x, mnist1d.val.x]),
                           torch.cat([mnist1d.train.y, mnist1d.val.y]))  # all 4000
        results["mnist1d_cnn"] = compare("MNIST-1D CNN (mnist1d)",
                                         lambda: build_model("mnist1d_cnn", 10), train,
                                         args.batch_size, args.runs, device)
    if args.only in (None, "cifar10"):
        data = cifar_data(args.cifar, args.cifar_images, device)
        label = "CIFAR-10" if args.cifar else "random 3x32x32"
        results[args.model] = compare(f"CIFAR-10 {CIFAR_LABELS[args.model]} ({label})",
                                      lambda: build_model(args.model, 10), data,
                                      args.batch_size, args.runs, device)
    worst = max(r["ratio"] for r in results.values())
    print(f"\nworst ratio of the medians {worst:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
