"""Where [tlkit.finetune][] computes: the device, its mixed precision, and how batches get there."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed
from ..devices import autocast_factory, describe, resolve_device, resolve_precision

__all__ = ["CPU", "Compute", "process_batch"]


@dataclass(frozen=True)
class Compute:
    """A device and the precision used on it (``"fp32"``, ``"bf16"`` or ``"fp16"``).

    Examples:
        >>> Compute.resolve("cpu").precision
        'fp32'
    """

    device: torch.device
    precision: str

    @classmethod
    def resolve(cls, device: str | torch.device = "auto") -> Compute:
        """``device`` (``"auto"``: CUDA, else MPS, else the CPU; under ``torchrun`` this
        process's local rank's GPU, made current) with its automatic precision (bf16 where the
        GPU supports it, else fp16, fp32 off CUDA).

        Raises:
            ValueError: For an unknown device or one this machine does not have.
        """
        resolved = resolve_device(device, distributed.world()[1], select=True)
        return cls(resolved, resolve_precision("auto", resolved))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The mixed-precision context for forward passes."""
        return autocast_factory(self.precision, self.device)()

    @property
    def feature_batch(self) -> int:
        """Images per forward pass of the probe's feature passes and of their speed checks:
        16 on a CPU, where a pass over 64 at a time took 1.5-2x longer per image
        (``benchmarks/feature_batch.py``: the activations of a small batch stay in the
        caches), 64 on a GPU."""
        return 16 if self.device.type == "cpu" else 64

    @property
    def pin(self) -> bool:
        """Whether loaders should pin memory (for asynchronous copies to a GPU)."""
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        """Wait for the device's queued work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __str__(self) -> str:
        return describe(self.device, self.precision)


CPU = Compute(torch.device("cpu"), "fp32")  # the default of every stage given no compute


def process_batch(batch: int) -> int:
    """This process's share of a global batch of ``batch`` images (all of it in one process).

    Examples:
        >>> process_batch(32)
        32
    """
    return -(-batch // distributed.world()[2])
