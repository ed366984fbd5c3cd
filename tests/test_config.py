"""tuner.config: defaults, study files, and one-line errors naming the key and what is valid."""

from __future__ import annotations

import ast
import dataclasses
import math
import tomllib
from pathlib import Path

import pytest

from tuner.config import (
    BatchSizeConfig,
    ConfigError,
    DataConfig,
    LRRangeConfig,
    MomentumConfig,
    RefineConfig,
    StudyConfig,
    TrainConfig,
    WeightDecayConfig,
    from_dict,
    load_study,
)
from tuner.references import check_references

REPO = Path(__file__).resolve().parents[1]
SECTIONS = [f.name for f in dataclasses.fields(StudyConfig) if f.name != "name"]


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_study(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message, message
    return message


def reference_error(tmp_path: Path, text: str) -> str:
    config = load_study(write(tmp_path, text))  # the values are valid ...
    with pytest.raises(ConfigError) as info:
        check_references(config)  # ... what they name is not
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_defaults_build() -> None:
    cfg = StudyConfig()
    assert cfg.name
    for section in SECTIONS:
        assert dataclasses.is_dataclass(getattr(cfg, section)), section
    assert cfg.lr_range.start_lr < cfg.lr_range.end_lr
    assert len(cfg.momentum.values) > 0


def test_defaults_round_trip_through_a_dict() -> None:
    cfg = StudyConfig()
    assert from_dict(StudyConfig, cfg.to_dict()) == cfg


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        StudyConfig().name = "x"  # type: ignore[misc]


def test_replace() -> None:
    cfg = StudyConfig().replace(name="other")
    assert cfg.name == "other"
    assert cfg.lr_range == StudyConfig().lr_range


def test_load_study_overrides_nested_values(tmp_path: Path) -> None:
    cfg = load_study(write(tmp_path, """
[lr_range]
start_lr = 1e-4
num_iters = 50
mode = "linear"

[momentum]
values = [0.95, 0.9]

[train]
nesterov = true
"""))
    defaults = StudyConfig()
    assert cfg.name == "study"  # the file's stem
    assert cfg.lr_range.start_lr == 1e-4
    assert cfg.lr_range.num_iters == 50
    assert cfg.lr_range.mode == "linear"
    assert cfg.lr_range.end_lr == defaults.lr_range.end_lr  # untouched keys keep defaults
    assert cfg.momentum.values == (0.95, 0.9)  # a list becomes a tuple
    assert cfg.momentum.min_momentum == defaults.momentum.min_momentum
    assert cfg.train.nesterov is True
    assert cfg.weight_decay == defaults.weight_decay


def test_name_in_the_file_wins_over_the_stem(tmp_path: Path) -> None:
    assert load_study(write(tmp_path, 'name = "mine"\n')).name == "mine"


def test_int_for_a_float_is_accepted(tmp_path: Path) -> None:
    cfg = load_study(write(tmp_path, "[lr_range]\nend_lr = 5\n"))
    assert cfg.lr_range.end_lr == 5.0
    assert isinstance(cfg.lr_range.end_lr, float)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "bogus = 1\n")
    assert "'bogus'" in message
    for section in SECTIONS:
        assert section in message


def test_unknown_nested_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[momentum]\nvaluez = [0.9]\n")
    assert "momentum.valuez" in message
    for key in (f.name for f in dataclasses.fields(MomentumConfig)):
        assert key in message


def test_unknown_dataset(tmp_path: Path) -> None:
    message = reference_error(tmp_path, '[data]\nname = "mnist2d"\n')
    assert "data.name" in message and "mnist2d" in message
    assert "mnist1d" in message


def test_unknown_model(tmp_path: Path) -> None:
    message = reference_error(tmp_path, '[model]\nname = "resnet9000"\n')
    assert "model.name" in message and "resnet9000" in message
    assert "mnist1d_cnn" in message


def test_missing_npz_file(tmp_path: Path) -> None:
    message = reference_error(tmp_path, f'[data]\nname = "npz:{tmp_path}/nope.npz"\n')
    assert "data.name" in message and "does not exist" in message


def test_references_are_checked_only_on_request() -> None:
    # Building and replacing never touch the file system or import user code.
    cfg = StudyConfig(data=DataConfig(name="npz:/no/such.npz"))
    assert cfg.replace(name="other").data.name == "npz:/no/such.npz"
    with pytest.raises(ConfigError, match="does not exist"):
        check_references(cfg)
    check_references(StudyConfig())


def test_config_imports_no_other_tuner_module() -> None:
    tree = ast.parse((REPO / "tuner" / "config.py").read_text())
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.split(".")[0] == "tuner"], imported


def test_negative_start_lr(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[lr_range]\nstart_lr = -0.001\n")
    assert "start_lr" in message


def test_end_lr_below_start_lr(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[lr_range]\nstart_lr = 1.0\nend_lr = 0.5\n")
    assert "end_lr" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[train]\nbatch_size = "128"\n', "train.batch_size"),
        ("[train]\nbatch_size = 12.5\n", "train.batch_size"),
        ("[train]\nbatch_size = true\n", "train.batch_size"),
        ('[lr_range]\nend_lr = "ten"\n', "lr_range.end_lr"),
        ('[train]\nnesterov = "yes"\n', "train.nesterov"),
        ("[lr_range]\nmode = 3\n", "lr_range.mode"),
        ("[momentum]\nvalues = 0.9\n", "momentum.values"),
        ('[momentum]\nvalues = [0.9, "x"]\n', "momentum.values"),
        ("name = 5\n", "name"),
        ("data = 5\n", "data"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key: str) -> None:
    assert key in config_error(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[momentum]\nvalues = [0.99, 0.8]\n", "momentum.values"),  # below min_momentum
        ("[momentum]\nvalues = []\n", "momentum.values"),
        ("[data]\nval_fraction = 1.5\n", "data.val_fraction"),
        ("[schedule]\ncycle_fraction = 0\n", "schedule.cycle_fraction"),
        ("[pruner]\nmargin = -1\n", "pruner.margin"),
        ('[train]\ndevice = "tpu"\n', "train.device"),
        ('name = "a/b"\n', "name"),
        ("[batch_size]\nbudget_s = -1.0\n", "batch_size.budget_s"),
        ("[batch_size]\nbudget_s = inf\n", "batch_size.budget_s"),
        ("[momentum]\nrepeats = 0\n", "momentum.repeats"),
        ("[weight_decay]\nrepeats = -2\n", "weight_decay.repeats"),
    ],
)
def test_out_of_range(tmp_path: Path, text: str, key: str) -> None:
    assert key in config_error(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_study(tmp_path / "nope.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    assert "not valid TOML" in config_error(tmp_path, "[lr_range\nstart_lr = \n")


def test_dataclass_validation_without_a_file() -> None:
    with pytest.raises(ConfigError, match="num_iters"):
        LRRangeConfig(num_iters=0)


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: StudyConfig(name="x/y"), r"^name must be a non-empty string without '/', "
                                          r"but got name='x/y'\.$"),
        (lambda: MomentumConfig(values=()), r"^momentum\.values must not be empty"),
        (lambda: MomentumConfig(values=(0.9, 1.0)), r"^momentum\.values\[1\] must be < 1"),
        (lambda: LRRangeConfig(start_lr=1.0, end_lr=0.5), r"^lr_range\.end_lr must be > start_lr"),
        (lambda: LRRangeConfig(mode="log"),
         r"^lr_range\.mode must be one of \['exp', 'linear'\], but got mode='log'\.$"),
        (lambda: BatchSizeConfig(values=(32, 64.0)), r"batch_size\.values\[1\] must be an integer"),
        (lambda: TrainConfig(batch_size=True), r"train\.batch_size must be an integer"),
        (lambda: TrainConfig(threads=1.5), r"train\.threads must be an integer"),
        (lambda: LRRangeConfig(momentum=False), r"lr_range\.momentum must be a number"),
        (lambda: LRRangeConfig(start_lr=math.nan), r"lr_range\.start_lr must be a finite"),
        (lambda: DataConfig(num_classes=1), r"data\.num_classes must be 0 .* or >= 2"),
        (lambda: RefineConfig(replaces=("momentum",)),
         r"^refine\.replaces=\['momentum'\] needs total_s > 0 .*, but got total_s=0\.0\.$"),
        (lambda: RefineConfig(total_s=60, replaces=("final",)),
         r"^refine\.replaces\[0\] must be one of \['lr_check', 'momentum', 'weight_decay'\], "
         r"but got replaces\[0\]='final'\.$"),
        (lambda: StudyConfig(train={"bogus": 1}),
         r"^unknown key 'train\.bogus'; valid keys in \[train\]: batch_size, "),
    ],
)
def test_construction_raises_a_one_line_config_error(build, pattern: str) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match=pattern) as info:
        build()
    assert "\n" not in str(info.value)


def test_replace_validates_again() -> None:
    cfg = StudyConfig()
    assert dataclasses.replace(cfg.train, threads=2).threads == 2
    gpu = dataclasses.replace(cfg.train, device="cuda:1")
    assert cfg.replace(train=gpu).train.device == "cuda:1"
    with pytest.raises(ConfigError, match="train.threads must be >= 0"):
        dataclasses.replace(cfg.train, threads=-1)
    with pytest.raises(ConfigError, match="train.device must be one of auto, cpu, cuda"):
        dataclasses.replace(cfg.train, device="tpu")
    with pytest.raises(ConfigError, match="^name must"):
        cfg.replace(name="")


def test_lists_become_tuples_and_ints_become_floats() -> None:
    cfg = WeightDecayConfig(values=[1, 0])  # type: ignore[arg-type]
    assert cfg.values == (1.0, 0.0) and all(isinstance(v, float) for v in cfg.values)


def test_from_dict_names_the_section_or_the_given_prefix() -> None:
    with pytest.raises(ConfigError, match="^unknown key 'momentum.valuez'; valid keys in "
                                          r"\[momentum\]: values, min_momentum"):
        from_dict(MomentumConfig, {"valuez": [0.9]})
    with pytest.raises(ConfigError, match=r"^base\.momentum\.epochs must be an integer, "
                                          r"but got epochs=1\.5\.$"):
        from_dict(MomentumConfig, {"epochs": 1.5}, prefix="base.momentum.")


def test_default_study_file_loads() -> None:
    path = REPO / "studies" / "mnist1d_cnn.toml"
    cfg = load_study(path)
    assert cfg.name == "mnist1d_cnn"
    table = tomllib.loads(path.read_text())
    for section, values in table.items():
        if not isinstance(values, dict):
            assert getattr(cfg, section) == values
            continue
        for key, value in values.items():
            got = getattr(getattr(cfg, section), key)
            assert got == (tuple(value) if isinstance(value, list) else value), (section, key)


def test_default_study_file_shows_the_code_defaults() -> None:
    # The file documents the defaults (those the optimizer sets, for SGD); a default changed in
    # code must be changed there too.
    assert load_study(REPO / "studies" / "mnist1d_cnn.toml").resolved() == StudyConfig().resolved()


def test_weight_decays_follow_the_optimizer_unless_set() -> None:
    sgd, adamw = StudyConfig().resolved(), StudyConfig(train=TrainConfig(optimizer="adamw"))
    assert sgd.weight_decay.values == (1e-3, 1e-4, 1e-5, 0.0) and sgd.momentum.weight_decay == 1e-4
    assert adamw.resolved().weight_decay.values == (1e-1, 1e-2, 1e-3, 0.0)
    assert adamw.resolved().momentum.weight_decay == 1e-2
    mine = adamw.replace(weight_decay=WeightDecayConfig(values=(0.5, 0.0)))
    assert mine.resolved().weight_decay.values == (0.5, 0.0)
    assert adamw.resolved().resolved() == adamw.resolved()


@pytest.mark.parametrize(("train", "expected"), [
    ({"optimizer": "lion"}, ["train.optimizer", "'sgd', 'adamw', 'adam'", "lion"]),
    ({"loss": "hinge"}, ["train.loss", "cross_entropy", "mse", "module:callable", "hinge"]),
    ({"metric": "auc"}, ["train.metric", "accuracy", "none", "module:callable", "auc"]),
    ({"loss": "mse", "metric": "accuracy"}, ["train.metric", "regression", "mse", "'none'"]),
    ({"step": "nocolon"}, ["train.step", "module:callable", "nocolon"]),
])
def test_bad_training_settings_are_one_line(train: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(StudyConfig, {"train": train})
    message = str(info.value)
    assert "\n" not in message
    for piece in expected:
        assert piece in message


def test_metric_names() -> None:
    assert TrainConfig().metric_name() == "accuracy"
    assert TrainConfig(loss="mse").metric_name() is None
    assert TrainConfig(loss="bce_with_logits", metric="accuracy").metric_name() == "accuracy"
    assert TrainConfig(loss="mse", metric="mymetrics:r2").metric_name() == "r2"
