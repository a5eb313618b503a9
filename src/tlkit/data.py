"""Datasets and image decoding: every PIL mode to RGB on purpose, per-part transforms."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

__all__ = ["WithTransform", "to_rgb"]

Background = tuple[int, int, int]
_EXIF_ORIENTATION = 0x0112


def _check_background(background: Sequence[int]) -> Background:
    values = tuple(background)
    if len(values) != 3 or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values
    ):
        raise ValueError(f"background must be three ints in 0..255 (RGB), got {background!r}")
    return (values[0], values[1], values[2])


def _scale_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """High bit-depth or float pixels to 0..255 by their type's range, never by saturation."""
    if array.size == 0:
        return array.astype(np.uint8)
    if not np.isfinite(array).all():
        raise ValueError(f"the {mode} image holds NaN or infinite pixels")
    low, high = float(array.min()), float(array.max())
    if mode == "F" and low >= 0 and high <= 1:
        scaled = array * 255.0
    elif low >= 0 and high <= (255 if mode == "F" else 65535):
        scaled = array if mode == "F" else array / 257.0  # 16-bit: 65535 -> 255
    else:
        raise ValueError(
            f"the {mode} image has pixel values {low:g}..{high:g}, outside the 16-bit range "
            "0..65535 that tlkit scales to 8 bits; rescale it first"
        )
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image, *, background: Sequence[int] = (255, 255, 255)) -> Image.Image:
    """An RGB PIL image from any PIL mode, each handled on purpose.

    - EXIF orientation is applied (photos from phones come out upright).
    - Transparency (RGBA, LA, palette or greyscale with a transparent colour, premultiplied
      modes) is composited onto ``background``: the colours hidden under transparent pixels are
      often noise or black and must not reach the model.
    - 16-bit greyscale (``I;16*``, ``I``) is scaled by its range (65535 -> 255), not clipped;
      float (``F``) in [0, 1] or [0, 255] likewise.
    - Greyscale, bilevel, CMYK, YCbCr, LAB and HSV are converted by PIL.

    Args:
        image: A PIL image.
        background: RGB colour under transparent pixels.

    Raises:
        ValueError: For a bad ``background``, a zero-sized image, or 16-bit/float pixels
            outside the ranges above.

    Examples:
        >>> rgba = Image.new("RGBA", (2, 1), (200, 10, 10, 0))  # red, fully transparent
        >>> to_rgb(rgba).getpixel((0, 0)), to_rgb(rgba, background=(0, 0, 0)).getpixel((0, 0))
        ((255, 255, 255), (0, 0, 0))
        >>> to_rgb(Image.new("I;16", (1, 1), 65535)).getpixel((0, 0))
        (255, 255, 255)
    """
    bg = _check_background(background)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    if image.width == 0 or image.height == 0:
        raise ValueError(f"the image is empty ({image.width}x{image.height} pixels)")
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        grey = Image.fromarray(_scale_to_uint8(np.asarray(image, dtype=np.float64), mode), "L")
        return grey.convert("RGB")
    transparent = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in image.info
    )
    if transparent:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*bg, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


class WithTransform(Dataset[tuple[Any, Any]]):
    """Apply ``transform`` to the input of every ``(input, target)`` item of ``dataset``.

    A split shares one underlying dataset between its parts, but the training part wants random
    augmentation and the validation and test parts a fixed evaluation view. Load the dataset
    without a transform, split it, and wrap each part.

    Args:
        dataset: A map-style dataset of ``(input, target, ...)`` items (e.g. a ``Subset``).
        transform: Applied to the input.
        target_transform: Applied to the target.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> import tlkit
        >>> data = TensorDataset(torch.arange(10.0), torch.arange(10))
        >>> train, val = tlkit.split(data, (0.8, 0.2), seed=0)
        >>> doubled = WithTransform(train, lambda x: x * 2)
        >>> len(doubled), doubled[0][0] == 2 * train[0][0]
        (8, tensor(True))
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        item = self.dataset[index]
        x, y = item[0], item[1]
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def __repr__(self) -> str:
        return f"WithTransform({self.dataset!r}, transform={self.transform!r})"
