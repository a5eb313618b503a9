"""Where computation runs: the device ``"auto"`` means, the mixed precision that is safe there,
and the loader settings that suit the machine. Used by [tlkit.Trainer][],
[tlkit.rank_backbones][] and [tlkit.finetune][] alike."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

__all__ = [
    "autocast_factory",
    "cores",
    "describe",
    "loader_workers",
    "resolve_device",
    "resolve_precision",
]

DEVICES = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(
    device: str | torch.device, local_rank: int = 0, *, select: bool = False
) -> torch.device:
    """The device ``"auto"`` or ``device`` means: ``"auto"`` is CUDA (this process's local
    rank's GPU under ``torchrun``), else Apple's MPS, else the CPU. ``select`` makes a CUDA
    device current.

    Raises:
        ValueError: For a name torch does not know, or a device this machine does not have
            (``"cuda"`` without a CUDA GPU, ``"cuda:3"`` on a machine with two).

    Examples:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("gpu")
        Traceback (most recent call last):
        ...
        ValueError: device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'
    """
    resolved = _resolve_device(device, local_rank)
    _check_available(resolved, device)
    if select and resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    return resolved


def _resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be {DEVICES}, got {device!r}") from exc
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be {DEVICES}, got {device!r}")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank)
    return resolved


def _check_available(resolved: torch.device, asked: str | torch.device) -> None:
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            built = "without CUDA" if torch.version.cuda is None else "with CUDA, but sees no GPU"
            raise ValueError(
                f"device {str(asked)!r}: this machine has no CUDA GPU (torch {torch.__version__} "
                f"built {built}); pass device 'auto' or 'cpu'"
            )
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(
                f"device {str(asked)!r}: this machine has {count} CUDA GPU(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(asked)!r}: MPS is not available here; pass 'auto' or 'cpu'")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bf16 mixed precision on a CUDA GPU that supports it, fp16 (with a gradient
    scaler) on one that does not, fp32 elsewhere (CPUs gain little from autocast and MPS lacks
    some mixed-precision kernels). Any other choice is kept as given.

    Examples:
        >>> cpu = torch.device("cpu")
        >>> resolve_precision("auto", cpu), resolve_precision("bf16", cpu)
        ('fp32', 'bf16')
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast_factory(
    precision: str, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A function returning the autocast context of ``precision`` on ``device`` (a context
    doing nothing for fp32).

    Examples:
        >>> with autocast_factory("bf16", torch.device("cpu"))():
        ...     torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype
        torch.bfloat16
    """
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def describe(device: torch.device, precision: str) -> str:
    """The device and precision in words, for a plan or a log.

    Examples:
        >>> describe(torch.device("cpu"), "fp32")  # doctest: +ELLIPSIS
        'cpu (... cores), fp32'
    """
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu":
        where = f"cpu ({cores()} cores)"
    else:
        where = str(device)
    return f"{where}, {precision if precision == 'fp32' else precision + ' mixed precision'}"


def cores() -> int:
    """CPU cores this process may use (its affinity, where the system has one).

    Examples:
        >>> cores() >= 1
        True
    """
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(limit: int = 8) -> int:
    """Decoding workers for a loader: the cores this process may use, at most ``limit`` (more
    rarely pay: the workers then wait on the disk or the model).

    Examples:
        >>> 1 <= loader_workers(4) <= 4
        True
    """
    return max(1, min(limit, cores()))
