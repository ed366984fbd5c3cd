"""tuner.train: evaluation by the batches' own BatchNorm statistics (the range test's default)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuner.data import TensorData
from tuner.train import batch_statistics, evaluate


def _data(n: int, seed: int = 0) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g) * 3 + 1  # far from the running stats' (0, 1) start
    return TensorData(x, (x[:, 0] > 1).long())


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(8, 2))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_batch_statistics_normalize_by_the_batch_and_leave_the_model_as_it_was() -> None:
    model, data = _bn_model(), _data(64)
    model.train()
    before = _state(model)
    result = evaluate(model, data, batch_size=64, norm_stats="batch")
    # by hand: BatchNorm on the batch's own statistics, Dropout off
    model.eval()
    model[1].train()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(data.x), data.y).item()
    model.load_state_dict(before)
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.loss != pytest.approx(evaluate(model, data, 64).loss, rel=1e-3)  # running
    model.train()
    evaluate(model, data, batch_size=64, norm_stats="batch")
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. num_batches_tracked
    assert model.training and model[1].training and model[3].training


def test_batch_statistics_restore_modes_set_by_the_caller() -> None:
    model = _bn_model().eval()
    with batch_statistics(model) as norms:
        assert norms == 1 and model[1].training and not model[3].training  # Dropout stays off
    assert not model[1].training


def test_a_model_without_batchnorm_scores_the_same_either_way() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))
    data = _data(50)
    assert evaluate(model, data, 16, norm_stats="batch") == evaluate(model, data, 16)


def test_batches_are_made_equal_so_none_is_a_lone_sample() -> None:
    """65 samples in batches of up to 64: 33 + 32, not 64 + 1 (BatchNorm cannot normalize one
    sample by its own statistics)."""
    model, data = _bn_model(), _data(65)
    with pytest.raises(ValueError, match="more than 1 value"):
        with batch_statistics(model):
            model(data.x[64:])
    assert evaluate(model, data, batch_size=64, norm_stats="batch").loss > 0
