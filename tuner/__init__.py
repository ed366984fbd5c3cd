"""tuner: hyper-parameters the disciplined way (Smith 2018), with Optuna doing the bookkeeping."""

from __future__ import annotations

from tuner.api import tune
from tuner.config import ConfigError, StudyConfig, load_study
from tuner.pipeline import Result, run
from tuner.version import __version__

__all__ = ["ConfigError", "Result", "StudyConfig", "load_study", "run", "tune", "__version__"]
