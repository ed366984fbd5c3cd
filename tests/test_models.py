"""tuner.models: the paper's networks (shapes, parameter counts) and user factories by name."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from tuner.config import ConfigError, ModelConfig, load_study
from tuner.models import MODELS, CifarResNet, build_model, model_factory, resolve_model
from tuner.references import check_references

SHAPES = {  # model -> input shape of one sample
    "mnist1d_cnn": (1, 40),
    "cifar10_3layer": (3, 32, 32),
    "resnet20": (3, 32, 32),
    "resnet56": (3, 32, 32),
    "lenet": (1, 28, 28),
}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_builtin_nets_map_a_batch_to_class_scores(name: str) -> None:
    model = build_model(name, num_classes=7)
    out = model(torch.randn(2, *SHAPES[name]))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_every_builtin_is_covered() -> None:
    assert set(SHAPES) <= set(MODELS)
    assert {"resnet32", "resnet44", "resnet110"} <= set(MODELS)


@pytest.mark.parametrize(("name", "expected"), [
    ("resnet20", 0.27e6),  # He et al. 2016, Table 6
    ("resnet56", 0.85e6),
    ("cifar10_3layer", 0.1456e6),  # conv 2.4k + 25.6k + 51.3k, fc 65.6k + 0.65k
    ("lenet", 0.431e6),
])
def test_parameter_counts_match_the_papers(name: str, expected: float) -> None:
    assert n_params(build_model(name, 10)) == pytest.approx(expected, rel=0.01)


def test_cifar10_3layer_is_caffes_cifar10_quick() -> None:
    model = build_model("cifar10_3layer", 10)
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (5, 5)), (32, (5, 5)),
                                                                  (64, (5, 5))]
    pools = [type(m).__name__ for m in model if "Pool" in type(m).__name__]
    assert pools == ["MaxPool2d", "AvgPool2d", "AvgPool2d"]
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1024, 64), (64, 10)]


def test_resnet_shortcuts_have_no_parameters_and_depth_is_checked() -> None:
    net = CifarResNet(20)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 2 * 9  # first conv + two per block; no projection shortcuts
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(21)


def test_kwargs_and_num_classes_reach_the_factory() -> None:
    model = model_factory(ModelConfig("cifar10_3layer", kwargs={"in_channels": 1}), 4)()
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 4)
    with pytest.raises(ConfigError, match="does not accept model.kwargs"):
        model_factory(ModelConfig("lenet", kwargs={"width": 3}), 10)()


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ConfigError, match="unknown model model.name='resnet9000'.*resnet56.*"
                                          "module:factory"):
        resolve_model(ModelConfig("resnet9000"))


def write_module(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(text))


def test_module_factory_is_imported_from_the_study_files_folder(tmp_path: Path) -> None:
    write_module(tmp_path / "proj", "tm_user_nets", """
        from torch import nn

        def make(num_classes=10, hidden=8):
            return nn.Sequential(nn.Flatten(), nn.Linear(40, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))
    """)
    study = tmp_path / "proj" / "s.toml"
    study.write_text('[model]\nname = "tm_user_nets:make"\nkwargs = { hidden = 5 }\n')
    cfg = load_study(study)
    assert cfg.model.path == str((tmp_path / "proj").resolve())
    assert cfg.model.kwargs == {"hidden": 5}
    model = model_factory(cfg.model, 3)()
    assert model(torch.randn(2, 1, 40)).shape == (2, 3)
    assert model[1].out_features == 5


@pytest.mark.parametrize(("name", "module_text", "expected"), [
    ("tm_missing_mod:make", None, ["model.name='tm_missing_mod:make'", "cannot import",
                                   "ModuleNotFoundError"]),
    ("tm_broken:make", "import nonexistent_pkg_xyz\n", ["cannot import module 'tm_broken'",
                                                        "nonexistent_pkg_xyz"]),
    ("tm_noattr:make", "def other():\n    pass\n", ["has no 'make'"]),
    ("tm_notcallable:make", "make = 3\n", ["not callable"]),
    ("tm_syntax:make", "def make(:\n", ["SyntaxError"]),
])
def test_module_factory_errors_are_one_line(tmp_path: Path, name: str, module_text: str | None,
                                            expected: list[str]) -> None:
    if module_text is not None:
        (tmp_path / f"{name.split(':')[0]}.py").write_text(module_text)
    study = tmp_path / "s.toml"
    study.write_text(f'[model]\nname = "{name}"\n')
    with pytest.raises(ConfigError) as info:
        check_references(load_study(study))
    message = str(info.value)
    assert "\n" not in message
    for piece in expected:
        assert piece in message


def test_factory_must_return_a_module(tmp_path: Path) -> None:
    write_module(tmp_path, "tm_returns_int", "def make():\n    return 3\n")
    cfg = ModelConfig("tm_returns_int:make", path=str(tmp_path))
    with pytest.raises(ConfigError, match="must return a torch.nn.Module"):
        model_factory(cfg, 10)()
