"""The stages of the pipeline, in the paper's order (the optional refinement before the end)."""

from __future__ import annotations

from tuner.stages import batch_size, final, lr_range, momentum, refine, weight_decay

STAGES = (lr_range, momentum, weight_decay, batch_size, refine, final)
