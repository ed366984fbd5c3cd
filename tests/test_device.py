"""tuner.device: CUDA settings only on CUDA; out-of-memory errors recognised."""

from __future__ import annotations

import pytest
import torch

from tuner.device import input_format, is_out_of_memory, prepare_model, resolve_device
from tuner.models import build_model


def test_cpu_gets_no_gpu_settings() -> None:
    cpu = resolve_device("cpu")
    model = build_model("cifar10_3layer", 10)
    assert input_format(model, cpu) is None
    prepared = prepare_model(model, cpu)
    assert prepared.state_dict()["0.weight"].is_contiguous()  # not channels_last


def test_channels_last_only_for_conv_nets_on_cuda() -> None:
    cuda = torch.device("cuda")
    assert input_format(build_model("resnet20", 10), cuda) is torch.channels_last
    assert input_format(build_model("mnist1d_cnn", 10), cuda) is None  # Conv1d: no NHWC


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_cuda_without_one_is_an_error() -> None:
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        resolve_device("cuda")


def test_out_of_memory_errors_are_recognised() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
