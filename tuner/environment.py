"""What a run ran on: versions and hardware, recorded with each stage as it is decided."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import optuna

from tuner.version import __version__

if TYPE_CHECKING:
    import torch

ENVIRONMENT_ATTR = "environment"


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions and hardware of this process (imports torch: a reader that only shows a stored
    environment need not call it)."""
    import torch

    env: dict[str, Any] = {
        "tuner": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "optuna": optuna.__version__, "platform": platform.platform(terse=True),
        "cpu_threads": torch.get_num_threads(),
    }
    if device is not None:
        env["device"] = str(device)
        if torch.device(device).type == "cuda" and torch.cuda.is_available():
            env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return env
