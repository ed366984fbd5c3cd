"""Built-in networks, by name, and user factories named ``"package.module:factory"``.

Each built-in factory takes the number of classes (and keyword arguments a study file may set
in ``[model.kwargs]``). The networks are those of Smith's paper and of MNIST-1D:

* ``cifar10_3layer``: Caffe's ``cifar10_quick`` (the paper's 3-layer CIFAR-10 net);
* ``resnet20``, ``resnet56`` (and ``resnet32``, ``resnet44``, ``resnet110``): the CIFAR ResNets
  of He et al. 2016, section 4.2: 3 stages of 16/32/64 channels, parameter-free shortcuts;
* ``lenet``: Caffe's LeNet for MNIST, as in the paper's MNIST runs;
* ``mnist1d_cnn``: the MNIST-1D paper's CNN.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuner.config import ConfigError, ModelConfig
from tuner.imports import import_callable
from tuner.text import first_line


def mnist1d_cnn(num_classes: int = 10) -> nn.Module:
    """The MNIST-1D paper's CNN (Greydanus 2020): three stride-2 Conv1d + ReLU, one Linear.

    Input (N, 1, 40) -> 25 channels x lengths 19, 10, 5 -> 125 features.
    """
    return nn.Sequential(
        nn.Conv1d(1, 25, kernel_size=5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, kernel_size=3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(25, 25, kernel_size=3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(125, num_classes),
    )


def cifar10_3layer(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Caffe's ``cifar10_quick``: conv 32 5x5 -> max-pool -> conv 32 5x5 -> avg-pool -> conv 64
    5x5 -> avg-pool -> fc 64 -> fc 10 (145k parameters for 32x32 inputs).

    As in Caffe: 'same' padding, 3x3 stride-2 pooling with Caffe's ceil rounding (32 -> 16 -> 8
    -> 4), ReLU after each convolution (after the first pooling, which commutes with it), and
    no non-linearity between the two fully connected layers.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 64),
        nn.Linear(64, num_classes),
    )


def lenet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Caffe's LeNet for 28x28 MNIST: conv 20 5x5 -> max-pool -> conv 50 5x5 -> max-pool ->
    fc 500 -> ReLU -> fc 10 (431k parameters)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500), nn.ReLU(),
        nn.Linear(500, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; the shortcut is the identity, or (option A of He et al.) a
    stride-2 subsampling with zero-padded extra channels: no parameters."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (He et al. 2016, section 4.2): a 3x3 conv, then three
    stages of n blocks with 16, 32, 64 channels (stride 2 between stages), global average
    pooling and one fully connected layer."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110), but got "
                             f"{depth=}.")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, 2 if stage and i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(depth: int) -> Callable[..., nn.Module]:
    def factory(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return CifarResNet(depth, num_classes, in_channels)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2016)."
    return factory


ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {
    "mnist1d_cnn": mnist1d_cnn,
    "cifar10_3layer": cifar10_3layer,
    "lenet": lenet,
    **{f"resnet{d}": cifar_resnet(d) for d in (20, 32, 44, 56, 110)},
}


def resolve_model(cfg: ModelConfig) -> ModelFactory:
    """The factory ``cfg.name`` names; a ``module:factory`` is imported (with ``cfg.path`` on
    ``sys.path``). Raises ``ConfigError`` with one line naming the key when it cannot."""
    name = cfg.name
    if ":" not in name:
        if name not in MODELS:
            raise ConfigError(f"unknown model model.name={name!r}; valid: "
                              f"{', '.join(sorted(MODELS))}, or 'package.module:factory'.")
        return MODELS[name]
    if not all(name.partition(":")[::2]):
        raise ConfigError(f"model.name={name!r} must be a built-in name or "
                          f"'package.module:factory'.")
    return import_callable(name, "model.name", cfg.path, "model.path")


def _accepts(factory: Callable[..., Any], param: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return param in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def model_factory(cfg: ModelConfig, num_classes: int) -> Callable[[], nn.Module]:
    """A no-argument factory for the configured model; ``num_classes`` is passed to factories
    that take it (unless ``[model.kwargs]`` sets it)."""
    factory = resolve_model(cfg)
    kwargs = dict(cfg.kwargs)
    if num_classes and "num_classes" not in kwargs and _accepts(factory, "num_classes"):
        kwargs["num_classes"] = num_classes
    return functools.partial(_build, factory, kwargs, cfg.name)


def _build(factory: ModelFactory, kwargs: dict[str, Any], name: str) -> nn.Module:
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.name={name!r} does not accept model.kwargs={kwargs!r}: "
                          f"{first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name={name!r} must return a torch.nn.Module, but got "
                          f"{type(model).__name__}.")
    return model


def build_model(name: str | ModelConfig, num_classes: int) -> nn.Module:
    cfg = name if isinstance(name, ModelConfig) else ModelConfig(name=name)
    return model_factory(cfg, num_classes)()
