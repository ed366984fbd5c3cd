"""What a study names outside its own numbers: the dataset, the model and any
``module:callable`` (loss, metric, training step, collate) must exist.

``tuner.config`` validates values only (no torch, no file system), so that building, replacing
and reloading a configuration is cheap and free of side effects. Call ``check_references`` once
a study is loaded, before any training: it reports a missing npz file or image folder, an
unknown built-in name, or a ``module:factory`` that does not import as a one-line
``ConfigError`` naming the key.
"""

from __future__ import annotations

from tuner.config import StudyConfig
from tuner.imports import import_callable
from tuner.models import resolve_model
from tuner.sources import check_source


def check_references(config: StudyConfig) -> None:
    """Raise ``ConfigError`` unless ``config``'s dataset, model and callables can be found."""
    check_source(config.data)  # a built-in name, npz:/imagefolder: paths that exist, a callable
    resolve_model(config.model)  # a built-in name, or a module:factory that imports
    train = config.train
    for key in ("loss", "metric", "step"):
        spec = getattr(train, key)
        if ":" in spec:
            import_callable(spec, f"train.{key}", train.path, "train.path")
    if config.data.collate:
        import_callable(config.data.collate, "data.collate", config.data.path, "data.path")
