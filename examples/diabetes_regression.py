"""Regression: scikit-learn's diabetes data (442 patients, 10 features, a disease-progression
score) and a small MLP, trained on mean squared error with no metric.

Study file: ``diabetes_regression.toml`` beside this module (``loss = "mse"``, ``metric =
"none"``, ``optimizer = "adamw"``). From Python::

    import tuner
    from diabetes_regression import data, make_model

    train, val, test = data()
    result = tuner.tune(make_model, train, val, tuner.load_study("diabetes_regression.toml"),
                        test_set=test)
    print(result.test_loss)  # mean squared error of the standardised target

The data ships with scikit-learn (``sklearn.datasets.load_diabetes``): nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

Pair = tuple[torch.Tensor, torch.Tensor]


def data(seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.2
         ) -> tuple[Pair, Pair, Pair]:
    """``data.name = "diabetes_regression:data"``: (train, val, test) as ``(x, y)`` pairs of
    float tensors, x N x 10 and y N, both standardised with the training split's statistics
    (a target of mean 0 and variance 1: predicting the mean scores an MSE of about 1)."""
    from sklearn.datasets import load_diabetes  # the raw values, not sklearn's pre-scaled ones

    raw = load_diabetes(scaled=False)
    x = torch.tensor(raw.data, dtype=torch.float32)
    y = torch.tensor(raw.target, dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    n_val = round(val_fraction * (len(x) - n_test))
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    x_mean, x_std = x[train].mean(0), x[train].std(0)
    y_mean, y_std = y[train].mean(), y[train].std()

    def split(index: torch.Tensor) -> Pair:
        return (x[index] - x_mean) / x_std, (y[index] - y_mean) / y_std

    return split(train), split(val), split(test)


def make_model(hidden: int = 16) -> nn.Module:
    """``model.name = "diabetes_regression:make_model"``: 10 features -> one value."""
    return nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))
