"""Multi-label classification: 5 labels, each a noisy function of 20 random inputs, and an MLP
with one logit per label, trained on binary cross-entropy; the metric is per-label accuracy.

Study file: ``multilabel.toml`` beside this module (``loss = "bce_with_logits"``, ``metric =
"accuracy"``). From Python::

    import tuner
    from multilabel import data, make_model

    train, val, test = data()
    result = tuner.tune(make_model, train, val, tuner.load_study("multilabel.toml"),
                        test_set=test)
    print(result.test_loss, result.metric)  # BCE, and the share of labels right

The data is generated (seeded), so nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

Pair = tuple[torch.Tensor, torch.Tensor]
INPUTS, LABELS = 20, 5


def data(n: int = 3000, seed: int = 0, noise: float = 0.5) -> tuple[Pair, Pair, Pair]:
    """``data.name = "multilabel:data"``: (train, val, test) as ``(x, y)`` pairs, x N x 20
    standard normal, y N x 5 of 0.0/1.0 (60% / 20% / 20%).

    Label k is on when a linear function of the inputs plus a quadratic term in input k plus
    Gaussian noise is positive: learnable, but neither linearly nor without error.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, INPUTS, generator=g)
    w = torch.randn(INPUTS, LABELS, generator=g) / INPUTS**0.5
    score = x @ w + (x[:, :LABELS] ** 2 - 1) + noise * torch.randn(n, LABELS, generator=g)
    y = (score > 0).float()
    n_val = n_test = n // 5
    n_train = n - n_val - n_test
    return ((x[:n_train], y[:n_train]), (x[n_train:n_train + n_val], y[n_train:n_train + n_val]),
            (x[n_train + n_val:], y[n_train + n_val:]))


def make_model(hidden: int = 64) -> nn.Module:
    """``model.name = "multilabel:make_model"``: 20 inputs -> 5 logits (one per label)."""
    return nn.Sequential(nn.Linear(INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, LABELS))
