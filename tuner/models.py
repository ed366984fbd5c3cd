"""Built-in networks, by name. Each factory takes the number of classes."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


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


ModelFactory = Callable[..., nn.Module]
MODELS: dict[str, ModelFactory] = {"mnist1d_cnn": mnist1d_cnn}


def build_model(name: str, num_classes: int) -> nn.Module:
    return MODELS[name](num_classes=num_classes)
