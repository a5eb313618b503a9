"""Pixels in, pixels out: any PIL mode, array or tensor to a 3-channel uint8 image, alpha
composited."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data import to_rgb

__all__ = ["ToRGB", "composite"]


class ToRGB(nn.Module):
    """Convert a PIL image, array or tensor to a 3-channel uint8 ``tv_tensors.Image``.

    PIL images go through [tlkit.to_rgb][]: transparency composited onto ``background``, 16-bit
    scaled, EXIF orientation applied. Arrays are HWC (as NumPy and PIL store them), tensors CHW
    (or HW); one channel is repeated to three, a fourth (alpha) is composited onto
    ``background``. Float data must lie in [0, 1]: values above 1 (0..255 floats) or NaN are an
    error, never clipped.

    Args:
        background: RGB colour under transparent pixels.

    Examples:
        >>> import torch
        >>> ToRGB()(torch.zeros(1, 5, 4, dtype=torch.uint8)).shape
        torch.Size([3, 5, 4])
        >>> import numpy as np
        >>> ToRGB()(np.zeros((5, 4, 4), dtype=np.uint8)).shape
        torch.Size([3, 5, 4])
    """

    def __init__(self, background: Sequence[int] = (255, 255, 255)) -> None:
        super().__init__()
        self.background = tuple(background)
        to_rgb(Image.new("RGB", (1, 1)), background=self.background)  # checks the colour

    def forward(self, image: Any) -> tv_tensors.Image:
        if isinstance(image, Image.Image):
            return v2.functional.to_image(to_rgb(image, background=self.background))
        if hasattr(image, "__array__") and not isinstance(image, torch.Tensor):  # NumPy, HWC
            array = torch.tensor(np.asarray(image))  # a copy: arrays from PIL are read-only
            tensor = (array[..., None] if array.ndim == 2 else array).permute(2, 0, 1)
        elif isinstance(image, torch.Tensor):
            tensor = image.as_subclass(torch.Tensor)
            tensor = tensor[None] if tensor.ndim == 2 else tensor
        else:
            raise TypeError(
                f"expected a PIL image, NumPy array or tensor, got {type(image).__name__}"
            )
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
            raise ValueError(
                f"expected an image with 1, 3 or 4 channels, got shape {tuple(tensor.shape)}"
            )
        if tensor.shape[1] == 0 or tensor.shape[2] == 0:
            raise ValueError(f"the image is empty (shape {tuple(tensor.shape)})")
        if tensor.is_floating_point():
            tensor = _float_to_uint8(tensor)
        elif tensor.dtype != torch.uint8:
            raise TypeError(
                f"expected uint8 or float image data in [0, 1], got {tensor.dtype}; for 16-bit "
                "data pass a PIL image (scaled by tlkit.to_rgb) or divide by 257 first"
            )
        if tensor.shape[0] == 4:
            tensor = composite(tensor[None], self.background)[0]
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1)
        return tv_tensors.Image(tensor.contiguous())


def _float_to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError("the float image holds NaN or infinite pixels")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"float images must lie in [0, 1], got values {low:g}..{high:g}; divide 0..255 data "
            "by 255 (or pass uint8)"
        )
    return (tensor.clamp(0, 1) * 255).round().to(torch.uint8)


def composite(images: torch.Tensor, background: Sequence[int] = (255, 255, 255)) -> torch.Tensor:
    """Composite uint8 RGBA (or grey+alpha) batches ``(N, C, H, W)`` onto a background colour.

    Returns uint8 ``(N, 3, H, W)`` (or ``(N, 1, H, W)`` for grey+alpha with a grey background).

    Examples:
        >>> rgba = torch.tensor([255, 0, 0, 0], dtype=torch.uint8).view(1, 4, 1, 1)
        >>> composite(rgba, (0, 0, 255)).flatten().tolist()
        [0, 0, 255]
    """
    colour, alpha = images[:, :-1].float(), images[:, -1:].float() / 255.0
    bg = torch.tensor(list(background), dtype=torch.float32, device=images.device)
    bg = bg[: colour.shape[1]] if colour.shape[1] == 3 else bg.mean(0, keepdim=True)
    out = colour * alpha + bg.view(1, -1, 1, 1) * (1 - alpha)
    return out.round().clamp(0, 255).to(torch.uint8)
