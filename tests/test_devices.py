"""The device "auto" means, the devices a machine lacks, and the precision used on each."""

from __future__ import annotations

import pytest
import torch

from tlkit import devices


def test_auto_is_the_cpu_without_a_gpu_and_the_local_rank_gpu_with_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("auto", 1) == torch.device("cuda", 1)
    assert devices.resolve_device("cuda", 1) == torch.device("cuda", 1)  # under torchrun
    with pytest.raises(ValueError, match=r"has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        devices.resolve_device("cuda:2")


def test_a_device_the_machine_lacks_or_a_wrong_name_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for asked in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(ValueError, match="this machine has no CUDA GPU"):
            devices.resolve_device(asked)
    with pytest.raises(ValueError, match="MPS is not available here"):
        devices.resolve_device("mps")
    for bad in ("gpu", "xla", "cuda:x", 3.5):
        with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda', 'cuda:N'"):
            devices.resolve_device(bad)  # type: ignore[arg-type]


def test_auto_precision_is_bf16_where_supported_else_fp16_on_cuda_and_fp32_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert devices.resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert devices.resolve_precision("auto", cuda) == "fp16"
    assert devices.resolve_precision("auto", cpu) == "fp32"
    assert devices.resolve_precision("auto", torch.device("mps")) == "fp32"
    assert devices.resolve_precision("bf16", cpu) == "bf16"  # asked for: given
    with pytest.raises(ValueError, match="precision must be 'auto', 'fp32', 'bf16', 'fp16'"):
        devices.resolve_precision("fp8", cpu)
    assert devices.describe(cpu, "fp32") == f"cpu ({devices.cores()} cores), fp32"
    assert devices.describe(cpu, "bf16").endswith("bf16 mixed precision")


def test_bf16_autocast_runs_a_layer_in_bf16_on_the_cpu() -> None:
    layer = torch.nn.Linear(4, 2)
    with devices.autocast_factory("bf16", torch.device("cpu"))():
        assert layer(torch.randn(3, 4)).dtype == torch.bfloat16
    with devices.autocast_factory("fp32", torch.device("cpu"))():
        assert layer(torch.randn(3, 4)).dtype == torch.float32
