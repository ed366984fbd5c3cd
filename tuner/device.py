"""Device choice and the settings that only pay off on a GPU."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error.
    On CUDA, cuDNN may benchmark its kernels (input shapes repeat batch after batch)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was asked for, but torch sees no CUDA device; "
                           "use device='auto' or 'cpu'.")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing on the CPU (where it would only slow small nets down)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a wall-clock reading means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_conv_net(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def input_format(model: nn.Module, device: torch.device) -> torch.memory_format | None:
    """``channels_last`` for 2-D conv nets on CUDA (tensor cores want NHWC); None elsewhere."""
    if device.type == "cuda" and is_conv_net(model):
        return torch.channels_last
    return None


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device``, in channels_last memory format where that pays off."""
    model = model.to(device)
    if input_format(model, device) is not None:
        model = model.to(memory_format=torch.channels_last)
    return model


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, whatever its class."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_memory(device: torch.device) -> None:
    """Hand cached blocks back after an out-of-memory error, so the next trial starts clean."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
