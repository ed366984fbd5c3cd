"""The calibration benchmark's sweep logic and checkpoints (no training here)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
from torch import nn

from bench.lr_calibration import (
    BAND,
    EDGES,
    STEPS,
    Choice,
    Readings,
    Result,
    load_results,
    next_step,
    pairs,
    steps_of,
    sweep_from_log,
)


def test_next_step_measures_the_planned_steps_first_lowest_first() -> None:
    assert next_step({}) == STEPS[0]
    assert next_step({k: [0.5] for k in STEPS if k != 2}) == 2


def test_next_step_stops_when_both_edges_lie_below_the_band() -> None:
    peaked = {k: [0.6 - 0.01 * abs(k)] for k in STEPS}  # best in the middle, edges 4 points down
    assert next_step(peaked) is None


def test_next_step_extends_past_the_edge_the_band_reaches_upper_first() -> None:
    rising = {k: [0.5 + 0.01 * k] for k in STEPS}
    assert next_step(rising) == STEPS[-1] + 1
    rising[STEPS[-1] + 1] = [rising[STEPS[-1]][0] - 2 * BAND]  # falls: the top is bracketed
    assert next_step(rising) is None
    falling = {k: [0.5 - 0.01 * k] for k in STEPS}
    assert next_step(falling) == STEPS[0] - 1
    flat = {k: [0.6] for k in STEPS}  # the band reaches both edges: the upper one first
    assert next_step(flat) == STEPS[-1] + 1


def test_next_step_goes_no_further_than_the_edges() -> None:
    flat = {k: [0.6] for k in range(EDGES[0], EDGES[1] + 1)}
    assert next_step(flat) is None


def test_steps_of_accepts_four_digit_lrs_and_refuses_points_off_the_grid() -> None:
    center = 0.008258799387844268
    assert steps_of([0.002065, 0.00292, center], center, "p") == [-4, -3, 0]
    with pytest.raises(SystemExit, match=r"max LR 0\.0025 is not on the grid"):
        steps_of([0.0025], center, "p")


def test_sweep_from_log_reads_the_points_a_run_printed_for_its_pair() -> None:
    log = ("  resnet20_5k: max LR 0.002065: 50.67% (50.6, 50.7, 50.6)\n"
           "  other: max LR 0.1: 90.00% (90.0, 90.0, 90.0)\n"
           "[I 2026-12-03 15:28:09,087] A new study created\n"
           "  resnet20_5k: max LR 0.00292: 52.80% (52.5, 53.0, 52.8)\n")
    result = sweep_from_log(log, "resnet20_5k")
    assert result.readings is None  # measured again when the run resumes
    assert result.lrs == [0.002065, 0.00292]
    assert result.accuracies == [pytest.approx([0.506, 0.507, 0.506]),
                                 pytest.approx([0.525, 0.530, 0.528])]


def test_a_checkpoint_loads_back_as_it_was_saved(tmp_path) -> None:
    readings = Readings(0.01, 1.0, 0.02, 0.003, 0.0004, 0.004)
    choice = Choice(0.01, 0.014, "x1.41", [0.9], 12.0, [[0.014, 0.3]], [[0.014, 0.9]])
    saved = [Result("a", readings, [0.01], [[0.9, 0.91]], 3.0, choice, center=0.008),
             Result("b", None)]  # a pair whose readings were not measured yet
    path = tmp_path / "results.json"
    path.write_text(json.dumps([asdict(r) for r in saved]))
    loaded = load_results(path)
    assert loaded == {"a": saved[0], "b": saved[1]}
    assert load_results(path, with_choice=False)["a"].choice is None


def test_an_older_checkpoint_gets_its_grid_middle_from_its_readings(tmp_path) -> None:
    """A results.json written before ``center`` was kept: its sweep is on the grid of its
    validation-minimum reading, and stays there when the readings are measured again."""
    row = asdict(Result("a", Readings(0.01, 1.0, 0.02, 0.003, 0.0004, 0.004), [0.01], [[0.9]]))
    del row["center"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps([row]))
    assert load_results(path)["a"].center == 0.01


@pytest.mark.parametrize(("name", "plain_name", "shape"),
                         [("mnist1d_cnn_bn", "mnist1d_cnn", (2, 1, 40)),
                          ("mlp_bn", "mlp_wide_deep", (2, 1, 40)),
                          ("digits_cnn_bn", "digits_cnn", (2, 1, 8, 8))])
def test_the_batch_norm_pairs_are_their_plain_nets_with_batch_norm(name, plain_name,
                                                                     shape) -> None:
    """Each batch-norm pair is its plain pair's net with one BatchNorm before every ReLU (the
    range test scores those layers by batch statistics), and takes the pair's inputs."""
    known = pairs(None)
    plain = known[plain_name].model()
    model = known[name].model()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(norms) == len(relus) == sum(isinstance(m, nn.ReLU) for m in plain.modules())
    assert model(torch.randn(shape)).shape == plain(torch.randn(shape)).shape == (2, 10)


def test_more_seeds_on_a_checkpoint_complete_every_point_first(monkeypatch) -> None:
    """A sweep measured with 3 seeds, resumed with 5: seeds 3 and 4 are added to each point
    (the 3 kept), then the band is read off the 5-seed means; the choice is completed too."""
    import bench.lr_calibration as cal

    calls: list[tuple[float, int]] = []

    def fake_accuracy(pair, data, lr, epochs, seed) -> float:
        calls.append((round(lr, 6), seed))
        return 0.9 - abs(math.log2(lr / 0.01)) / 100  # peaks mid-sweep: no edge to extend

    monkeypatch.setattr(cal, "one_cycle_accuracy", fake_accuracy)
    monkeypatch.setattr(cal, "pipeline_choice", lambda *a, **k: None)
    steps = list(STEPS)
    lrs = [0.01 * 2 ** (k / 2) for k in steps]
    before = Result("a", Readings(0.01, 1.0, 0.02, 0.003, 0.0004, 0.004), lrs,
                    [[0.5, 0.5, 0.5] for _ in lrs], center=0.01)
    pair = cal.Pair(data=lambda: None, model=lambda: nn.Linear(1, 1))
    result = cal.calibrate("a", pair, 1, list(range(5)), before)
    assert sorted(calls) == sorted((round(lr, 6), s) for lr in lrs for s in (3, 4))
    assert result.lrs == lrs
    assert all(a[:3] == [0.5, 0.5, 0.5] and len(a) == 5 for a in result.accuracies)


def test_summary_sets_each_choice_beside_the_band_and_the_best() -> None:
    from bench.lr_calibration import summary

    readings = Readings(0.01, 1.0, 0.02, 0.003, 0.0004, 0.004)
    inside = Result("in", readings, [0.01, 0.02, 0.04], [[0.90, 0.90], [0.95, 0.95], [0.80, 0.80]],
                    choice=Choice(0.012, 0.017, "x1.41", [0.949, 0.947], 1.0))
    above = Result("out", readings, [0.01, 0.02, 0.04], [[0.90, 0.90], [0.95, 0.95], [0.80, 0.80]],
                   choice=Choice(0.03, 0.042, "x1.41", [0.79, 0.79], 1.0))
    unmeasured = Result("none", readings, [0.01], [[0.9, 0.9]])
    rows = summary([inside, above, unmeasured]).splitlines()[2:]
    assert len(rows) == 2
    assert rows[0].startswith("| in | 2 |") and "| yes |" in rows[0] and "| -0.20 |" in rows[0]
    assert rows[1].startswith("| out | 2 |") and "| above |" in rows[1] and "| -16.00 |" in rows[1]
