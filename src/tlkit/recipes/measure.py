"""This machine's speed for a backbone, measured on random input before any image is read, and
what the images look like (their median side) before they are decoded."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from PIL import Image
from torch import nn

from ..data import ImageDataset
from ..model.images import DecodedImages, Geometry
from .budget import shared_clock
from .compute import CPU, Compute
from .settings import AUTO
from .store import ImageStore

__all__ = [
    "choose_batch_size",
    "measure",
    "pilot",
    "sample_median_side",
    "time_batches",
]


def time_batches(
    model: nn.Module,
    size: int,
    batch: int,
    *,
    train: bool,
    channels_last: bool = False,
    timed: int = 2,
    compute: Compute | None = None,
) -> float:
    """Images per second of ``model`` at ``size`` px on random input on ``compute``'s device
    and precision (default the CPU, fp32): one warm-up batch, then the median of ``timed``
    batches. The model is left on that device.

    The model's state (BatchNorm statistics included) and memory format are restored afterwards.
    """
    compute = compute or CPU
    model.to(compute.device)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(batch, 3, size, size, device=compute.device)
    y = torch.zeros(batch, dtype=torch.long, device=compute.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    rates = []
    for i in range(1 + timed):
        compute.synchronize()
        start = shared_clock()
        if train:
            model.train()
            with compute.autocast():
                loss = nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad(), compute.autocast():
                model.eval()(x)
        compute.synchronize()
        if i:
            rates.append(batch / (shared_clock() - start))
    model.to(memory_format=torch.contiguous_format)
    model.load_state_dict(saved)
    model.eval()
    return statistics.median(rates)


def choose_batch_size(n_train: int) -> int:
    """Images per step: fewer for small datasets (more steps), more from ``AUTO.large_from``
    images (CPUs run larger batches faster per image)."""
    return AUTO.large_batch_size if n_train >= AUTO.large_from else AUTO.batch_size


def measure(
    model: nn.Module, size: int, batch: int, compute: Compute | None = None
) -> tuple[float, float, bool, str]:
    """``(inference img/s, training img/s, channels_last, reason)`` on ``compute``'s device,
    training timed at the batch size it will use: both memory formats are timed and the faster
    kept (channels-last convolutions are often much faster on CPUs and under mixed precision on
    GPUs, sometimes slower)."""
    # one timed batch after the warm-up: these steps come out of the budget (about 4 s each for
    # EfficientNet-Lite1 at 240 px on 2 cores), and the formats differ by far more than the noise
    rates = {}
    for cl in (False, True):
        rates[cl] = time_batches(
            model, size, batch, train=True, channels_last=cl, timed=1, compute=compute
        )
    channels_last = rates[True] > 1.05 * rates[False]
    infer = time_batches(
        model, size, 32, train=False, channels_last=channels_last, timed=1, compute=compute
    )
    layout = "channels-last" if channels_last else "channels-first"
    reason = (
        f"{layout} memory format: {max(rates.values()) / min(rates.values()):.1f}x the training "
        f"speed of the other on {_where(compute)}"
    )
    return infer, max(rates.values()), channels_last, reason


def _where(compute: Compute | None) -> str:
    if compute is None or compute.device.type == "cpu":
        return "this machine"
    return str(compute.device)


def sample_median_side(data: ImageDataset, sample: int = 64) -> int:
    sides = []
    step = max(1, len(data) // sample)
    for path in data.files[::step][:sample]:
        with Image.open(path) as image:  # reads the header only
            sides.append(min(image.size))
    return int(statistics.median(sides))


def pilot(
    data: ImageDataset,
    size: int,
    geometry: Geometry,
    passes: Callable[[ImageStore], object],
    *,
    images: int = 32,
    clock: Callable[[], float] = shared_clock,
) -> tuple[float, float]:
    """A real pass over a part of the folder: ``(seconds to decode one image into a ``size``
    px square, seconds of ``passes`` per image)``, on ``images`` images spread over ``data``
    (decoded as [tlkit.recipes.store.Decoded][] will, then given to ``passes`` as one store).
    Unlike a speed check on random input, it counts what a real pass does besides the network:
    reading, resizing and normalising the images, reading intermediate layers, mirroring."""
    step = max(1, len(data) // images)
    chosen = list(range(0, len(data), step))[:images]
    decoded = DecodedImages(data, size, geometry)
    store = ImageStore.empty(len(chosen), size)
    start = clock()
    for row, index in enumerate(chosen):
        store.write(row, decoded[index][None])
    decoding = clock() - start
    passes(store)
    return decoding / len(chosen), (clock() - start - decoding) / len(chosen)
