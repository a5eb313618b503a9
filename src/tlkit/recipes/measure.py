"""This machine's speed for a backbone, measured on random input before any image is read, and
what the images look like (their median side) before they are decoded."""

from __future__ import annotations

import statistics
import time

import torch
from PIL import Image
from torch import nn

from ..data import ImageDataset
from .settings import AUTO

__all__ = ["choose_batch_size", "measure", "sample_median_side", "time_batches"]


def time_batches(
    model: nn.Module,
    size: int,
    batch: int,
    *,
    train: bool,
    channels_last: bool = False,
    timed: int = 2,
) -> float:
    """Images per second of ``model`` at ``size`` px on random input: one warm-up batch, then the
    median of ``timed`` batches.

    The model's state (BatchNorm statistics included) and memory format are restored afterwards.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(batch, 3, size, size)
    y = torch.zeros(batch, dtype=torch.long)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    rates = []
    for i in range(1 + timed):
        start = time.perf_counter()
        if train:
            model.train()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model.eval()(x)
        if i:
            rates.append(batch / (time.perf_counter() - start))
    model.to(memory_format=torch.contiguous_format)
    model.load_state_dict(saved)
    model.eval()
    return statistics.median(rates)


def choose_batch_size(n_train: int) -> int:
    """Images per step: fewer for small datasets (more steps), more from ``AUTO.large_from``
    images (CPUs run larger batches faster per image)."""
    return AUTO.large_batch_size if n_train >= AUTO.large_from else AUTO.batch_size


def measure(model: nn.Module, size: int, batch: int) -> tuple[float, float, bool, str]:
    """``(inference img/s, training img/s, channels_last, reason)`` on this machine, training
    timed at the batch size it will use: both memory formats are timed and the faster kept
    (channels-last convolutions are often much faster on CPUs, sometimes slower)."""
    # one timed batch after the warm-up: these steps come out of the budget (about 4 s each for
    # EfficientNet-Lite1 at 240 px on 2 cores), and the formats differ by far more than the noise
    rates = {
        cl: time_batches(model, size, batch, train=True, channels_last=cl, timed=1)
        for cl in (False, True)
    }
    channels_last = rates[True] > 1.05 * rates[False]
    infer = time_batches(model, size, 32, train=False, channels_last=channels_last, timed=1)
    layout = "channels-last" if channels_last else "channels-first"
    reason = (
        f"{layout} memory format: {max(rates.values()) / min(rates.values()):.1f}x the training "
        f"speed of the other on this machine"
    )
    return infer, max(rates.values()), channels_last, reason


def sample_median_side(data: ImageDataset, sample: int = 64) -> int:
    sides = []
    step = max(1, len(data) // sample)
    for path in data.files[::step][:sample]:
        with Image.open(path) as image:  # reads the header only
            sides.append(min(image.size))
    return int(statistics.median(sides))
