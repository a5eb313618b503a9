"""Per-channel statistics of a dataset: [tlkit.augment.channel_stats][]."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .pixels import ToRGB

__all__ = ["channel_stats"]


def channel_stats(
    dataset: Dataset[Any], *, num_workers: int = 0
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of a dataset's images, in [0, 1] units.

    Streams over the images once and accumulates sums and sums of squares in float64 (the blog
    recipe's per-channel statistics, without holding the dataset in memory). Items may be images
    or ``(image, label)`` tuples; images are converted with [ToRGB][tlkit.augment.ToRGB], so pass
    the dataset
    without a normalising transform.

    Args:
        dataset: A map-style dataset of images (PIL, arrays or tensors, any sizes).
        num_workers: DataLoader workers used to read the images.

    Returns:
        ``(mean, std)``, each a tuple of 3 floats (population standard deviation).

    Raises:
        ValueError: If the dataset is empty.

    Examples:
        >>> import torch
        >>> images = [torch.full((3, 2, 2), v, dtype=torch.uint8) for v in (0, 255)]
        >>> channel_stats(images)
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("cannot compute channel statistics of an empty dataset")
    to_rgb = ToRGB()
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity)
    for item in loader:
        image = item[0] if isinstance(item, (tuple, list)) else item
        x = to_rgb(image).as_subclass(torch.Tensor).to(torch.float64).div_(255.0).flatten(1)
        total += x.sum(dim=1)
        total_sq += (x * x).sum(dim=1)
        pixels += x.shape[1]
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(0).sqrt()
    return _triple(mean), _triple(std)


def _identity(item: Any) -> Any:
    return item


def _triple(values: torch.Tensor) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
