"""tuner.stages.base: the Stage and Decision types, and the registry as the one place a stage is
added (a throw-away stage runs through the whole pipeline, storage and run handle)."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import pydantic
import pytest
from optuna.trial import Trial, TrialState

import tuner
import tuner.budget  # the modules that import the registry by name: loaded before it is replaced
import tuner.pipeline
import tuner.storage
from tuner.stages import NAMES, STAGES, stage
from tuner.stages.base import Decision, HParams, Stage, epoch_steps, find
from tuner.stages.batch_size import BatchSizeDecision
from tuner.stages.final import FinalDecision
from tuner.stages.lr_check import LRDecision
from tuner.stages.lr_range import RangeDecision
from tuner.stages.lr_recheck import RecheckDecision
from tuner.stages.momentum import MomentumDecision
from tuner.stages.refine import RefineDecision
from tuner.stages.weight_decay import WeightDecayDecision
from tuner.storage import Run, read_decision, study_name
from tuner.trials import run_grid

from .conftest import tiny_config

if TYPE_CHECKING:
    from tuner.context import Context

HP = HParams(min_lr=0.015, max_lr=0.15, max_momentum=0.9, min_momentum=0.85,
             weight_decay=1e-4, batch_size=64)
# One record of each registered stage's decision type, every field set.
SAMPLES: dict[type[Decision], Decision] = {
    RangeDecision: RangeDecision(min_lr=0.02, max_lr=0.2, batch_size=64,
                                 stop_reason="loss above 4x its minimum", capped=True,
                                 suggestions={"valley": 0.05, "minimum": 0.03},
                                 why="the validation minimum", seconds=1.5),
    LRDecision: LRDecision(min_lr=0.0282, max_lr=0.282, factor=1.41, reading=0.2, batch_size=64,
                           why="lowest", seconds=1.75),
    RecheckDecision: RecheckDecision(min_lr=0.04, max_lr=0.4, factor=2.0, reading=0.2,
                                     weight_decay=1e-3, ran=True, why="again", seconds=2.75),
    MomentumDecision: MomentumDecision(max_momentum=0.95, min_momentum=0.85, why="lowest",
                                       seconds=2.0),
    WeightDecayDecision: WeightDecayDecision(weight_decay=1e-5, why="lowest", seconds=2.5),
    BatchSizeDecision: BatchSizeDecision(batch_size=128, min_lr=0.03, max_lr=0.3,
                                         final_epochs=6, budget_s=4.25, why="equal time",
                                         seconds=3.0),
    RefineDecision: RefineDecision(values=dataclasses.replace(HP, max_lr=0.2, min_lr=0.02),
                                   staged=HP, trials=5, why="confirmed", seconds=4.0),
    FinalDecision: FinalDecision(values=HP, epochs=3, scored_on="test", loss=0.3, loss_sd=0.02,
                                 losses=[0.28, 0.32], seeds=[0, 1], optimizer="adamw",
                                 metric_name="accuracy", metric=0.9, metric_sd=0.01,
                                 metrics=[0.89, 0.91], why="two seeds", seconds=5.0),
}


def test_every_registered_stage_has_a_sample_record() -> None:
    assert set(SAMPLES) == {s.decision for s in STAGES}


@pytest.mark.parametrize("st", STAGES, ids=lambda s: s.name)
def test_decision_round_trips_through_json(st: Stage) -> None:
    decision = SAMPLES[st.decision]
    data = json.loads(json.dumps(decision.to_json()))  # what the storage keeps
    assert data["why"] == decision.why and data["seconds"] == decision.seconds
    back = st.read(data)
    assert type(back) is st.decision
    assert back == decision
    assert st.decision.from_json(data) == decision
    assert decision.summary() and "\n" not in decision.summary()


def test_decision_from_json_checks_its_fields() -> None:
    data = SAMPLES[MomentumDecision].to_json()
    with pytest.raises(pydantic.ValidationError):
        MomentumDecision.from_json({k: v for k, v in data.items() if k != "max_momentum"})
    with pytest.raises(pydantic.ValidationError):
        MomentumDecision.from_json({**data, "max_momentum": "high"})


def test_decision_without_budget_round_trips() -> None:
    decision = dataclasses.replace(SAMPLES[BatchSizeDecision], budget_s=None)
    assert BatchSizeDecision.from_json(json.loads(json.dumps(decision.to_json()))) == decision


def test_timed_sets_the_seconds_on_a_copy() -> None:
    decision = SAMPLES[WeightDecayDecision]
    timed = decision.timed(7.5)
    assert timed.seconds == 7.5 and decision.seconds == 2.5
    assert dataclasses.replace(timed, seconds=2.5) == decision
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.why = "changed"  # type: ignore[misc]


def test_find_the_one_decision_of_a_type() -> None:
    decisions = {"lr_range": SAMPLES[RangeDecision], "momentum": SAMPLES[MomentumDecision]}
    assert find(decisions, MomentumDecision) is decisions["momentum"]


def test_find_refuses_none_with_what_was_decided() -> None:
    with pytest.raises(LookupError, match=r"expected one MomentumDecision .* got 0 "
                                          r"\(decided: lr_range\)"):
        find({"lr_range": SAMPLES[RangeDecision]}, MomentumDecision)
    with pytest.raises(LookupError, match=r"got 0 \(decided: none\)"):
        find({}, MomentumDecision)


def test_find_refuses_two() -> None:
    decisions = {"a": SAMPLES[MomentumDecision], "b": SAMPLES[MomentumDecision]}
    with pytest.raises(LookupError, match=r"expected one MomentumDecision .* got 2 "
                                          r"\(decided: a, b\)"):
        find(decisions, MomentumDecision)


def _never(_ctx: Context, _study: optuna.Study) -> Decision:
    raise AssertionError("not run")


@pytest.mark.parametrize("name", ["a/b", "/", ""])
def test_stage_refuses_a_name_that_is_empty_or_has_a_slash(name: str) -> None:
    with pytest.raises(ValueError, match="without '/'"):
        Stage(name=name, title="T", decision=MomentumDecision, run=_never)


def test_stage_refuses_an_unknown_direction() -> None:
    with pytest.raises(ValueError, match="direction must be one of"):
        Stage(name="x", title="T", decision=MomentumDecision, run=_never,
              direction="sideways")  # type: ignore[arg-type]


def test_stage_by_name() -> None:
    assert stage("momentum") is STAGES[2]
    with pytest.raises(KeyError, match="no stage 'nope'; stages: lr_range, lr_check, momentum"):
        stage("nope")


def test_epoch_steps() -> None:
    assert epoch_steps(1000, 128) == 7
    assert epoch_steps(128, 128) == 1
    with pytest.raises(ValueError, match="exceeds"):
        epoch_steps(100, 128)


# --- a stage added in its own module and the registry only ---------------------------------


@dataclass(frozen=True, kw_only=True)
class ProbeDecision(Decision):
    value: float
    batch_size: int  # what the stages before it decided, read through the context

    def summary(self) -> str:
        return f"probe {self.value:g}"


def probe_run(ctx: Context, study: optuna.Study) -> ProbeDecision:
    """One trial whose value is a grid point; the decision reads an earlier stage's record."""

    def objective(trial: Trial) -> float:
        return trial.suggest_categorical("x", [0.5])

    (trial,) = run_grid(study, [{"x": 0.5}], objective)
    return ProbeDecision(value=trial.value, batch_size=ctx.decision(BatchSizeDecision).batch_size,
                         why="the one probe trial")


PROBE = Stage(name="probe", title="Probe", decision=ProbeDecision, run=probe_run,
              metric="probe value")


def register(monkeypatch: pytest.MonkeyPatch, stages: tuple[Stage, ...]) -> list[str]:
    """Replace the registry (``STAGES`` and ``NAMES``) in ``tuner.stages`` and in every loaded
    tuner module that imported it by name; returns those modules."""
    names = tuple(s.name for s in stages)
    patched = []
    for module_name, module in list(sys.modules.items()):
        if not (module_name == "tuner" or module_name.startswith("tuner.")) or module is None:
            continue
        for attr, old, new in (("STAGES", STAGES, stages), ("NAMES", NAMES, names)):
            if getattr(module, attr, None) is old:
                monkeypatch.setattr(module, attr, new)
                patched.append(f"{module_name}.{attr}")
    return patched


def test_a_new_stage_needs_only_its_module_and_the_registry(
        tmp_path: Path, mnist1d_splits, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    order = [s.name for s in STAGES]
    at = order.index("batch_size") + 1
    stages = (*STAGES[:at], PROBE, *STAGES[at:])
    patched = register(monkeypatch, stages)
    for module in ("tuner.stages", "tuner.pipeline", "tuner.storage", "tuner.budget"):
        assert f"{module}.STAGES" in patched
    assert stage("probe") is PROBE

    url = f"sqlite:///{tmp_path}/t.db"
    cfg = tiny_config(batch_size=dataclasses.replace(tiny_config().batch_size, values=(64,)))
    result = tuner.run(cfg, storage=url, splits=mnist1d_splits)
    expected_order = [*order[:at], "probe", *order[at:]]
    assert list(result.decisions) == expected_order
    probe = result.decisions["probe"]
    assert probe == ProbeDecision(value=0.5, batch_size=64, why="the one probe trial",
                                  seconds=probe.seconds)
    assert probe.seconds > 0

    # its study exists, with its one trial and its metric, after the batch-size study
    assert study_name(result.run, "probe") in optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=study_name(result.run, "probe"), storage=url)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.COMPLETE and trial.params == {"x": 0.5}
    assert study.metric_names == ["probe value"]
    # its decision is stored as JSON and read back as its typed record
    assert study.user_attrs["decision"] == probe.to_json()
    assert read_decision(PROBE, study) == probe
    handle = Run.find(url)
    assert list(handle.studies()) == expected_order
    decisions = handle.decisions()
    assert list(decisions) == expected_order
    assert type(decisions["probe"]) is ProbeDecision and decisions["probe"] == probe
    assert decisions == dict(result.decisions)
    # the stages after it still find theirs by type, the probe's beside them
    assert result.final.values == result.decisions["refine"].values
