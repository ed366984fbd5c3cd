"""tuner: hyper-parameters the disciplined way (Smith 2018), with Optuna doing the bookkeeping."""

from __future__ import annotations

from tuner.config import ConfigError, StudyConfig, load_study
from tuner.pipeline import Result, run

__version__ = "0.1.0"
__all__ = ["ConfigError", "Result", "StudyConfig", "load_study", "run", "__version__"]
