"""``"package.module:callable"`` names in a study file (a model factory, a loss, a metric, a
training step, a collate function), imported with one-line errors that name the key."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from tuner.config import ConfigError
from tuner.text import first_line


def import_callable(spec: str, key: str, path: str = "", path_key: str = "") -> Callable[..., Any]:
    """The callable ``spec`` names, imported with ``path`` on ``sys.path``; ``key`` is the
    study-file key that gave it (for the message), ``path_key`` the one that gave ``path``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}={spec!r} must be 'package.module:callable'.")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 -- any error while importing user code
        where = f" (looked in {path_key}={path!r} and sys.path)" if path else ""
        raise ConfigError(f"{key}={spec!r}: cannot import module {module_name!r}{where}: "
                          f"{type(exc).__name__}: {first_line(exc)}") from None
    found: Any = module
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ConfigError(f"{key}={spec!r}: module {module_name!r} "
                              f"({getattr(module, '__file__', '?')}) has no {attr!r}.")
    if not callable(found):
        raise ConfigError(f"{key}={spec!r}: {attr!r} is not callable, but got "
                          f"{type(found).__name__}.")
    return found
