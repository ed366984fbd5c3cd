"""The default study, end to end, as `make tune` runs it (slow: about two minutes)."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import tuner
from tuner.stages import NAMES


@pytest.mark.slow
def test_default_study_reaches_the_accuracy_target(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tuner.db"
    t0 = time.perf_counter()
    result = tuner.run(tuner.load_study("studies/mnist1d_cnn.toml"), storage=url)
    seconds = time.perf_counter() - t0
    print(f"default study: {seconds:.0f} s, test accuracy {100 * result.test_accuracy:.2f}% "
          f"± {100 * result.final.metric_sd:.2f} over seeds "
          f"{result.final.seeds}; LR {result.min_lr:.3g}-{result.max_lr:.3g} "
          f"({result.decisions['lr_check'].summary()}), "
          f"momentum {result.momentum}, wd {result.weight_decay}, batch {result.batch_size}")
    assert seconds < 600
    assert result.test_accuracy >= 0.945  # published CNN baseline: 94%
    assert len(result.final.seeds) == 3
    names = set(optuna.get_all_study_names(url))
    assert names == {f"mnist1d_cnn/{s}" for s in NAMES}
    for name in names:
        study = optuna.load_study(study_name=name, storage=url)
        if name.endswith(("lr_check", "momentum", "weight_decay", "lr_recheck", "batch_size")):
            finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
            assert all(t.intermediate_values for t in finished), name
