"""tuner: hyper-parameters the disciplined way (Smith 2018), with Optuna doing the bookkeeping.

``tune``, ``run`` and ``Result`` are imported on first use: they bring in torch and the
training path, which ``tuner status`` and ``tuner report`` never need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.config import ConfigError, StudyConfig, load_study
from tuner.version import __version__

if TYPE_CHECKING:
    from tuner.api import tune
    from tuner.pipeline import Result, run

_LAZY = {"tune": "tuner.api", "run": "tuner.pipeline", "Result": "tuner.pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")


__all__ = ["ConfigError", "Result", "StudyConfig", "load_study", "run", "tune", "__version__"]
