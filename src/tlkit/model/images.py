"""Images to tensors the way a trained model sees them: decoding, the square geometry and the
normalisation, the same in training, prediction and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..data import ImageDataset, read_image, to_rgb

__all__ = [
    "GEOMETRIES",
    "DecodedImages",
    "Geometry",
    "Images",
    "decode",
    "normalise",
    "resize_square",
    "square",
]


class Images(Protocol):
    """Decoded images, uint8 ``(3, S, S)`` each, read one at a time: a tensor, a
    [DecodedImages][tlkit.model.images.DecodedImages], or the store [tlkit.finetune][] decodes
    large folders into."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> torch.Tensor: ...


Geometry = Literal["pad", "crop"]
GEOMETRIES = ("pad", "crop")


def square(
    image: Image.Image,
    size: int,
    geometry: Geometry = "crop",
    background: Sequence[int] = (255, 255, 255),
) -> torch.Tensor:
    """uint8 ``(3, size, size)`` from an RGB image.

    ``"pad"`` (letterboxing): the long side resized to ``size``, the rest filled with
    ``background``, so nothing of the image is lost. ``"crop"``: the short side resized to
    ``size`` and the centre cut out (what ImageNet models are evaluated with; it cuts off the
    ends of long objects).

    Examples:
        >>> wide = Image.new("RGB", (40, 20), (0, 0, 0))
        >>> padded = square(wide, 10, "pad", (255, 255, 255))
        >>> padded.shape, padded[:, 0, 5].tolist(), padded[:, 5, 5].tolist()
        (torch.Size([3, 10, 10]), [255, 255, 255], [0, 0, 0])
        >>> square(wide, 10, "crop")[:, 0, 5].tolist()
        [0, 0, 0]
    """
    tensor = v2.functional.to_image(image)
    if geometry == "crop":
        tensor = v2.functional.resize(tensor, size, antialias=True)
        return v2.functional.center_crop(tensor, size).as_subclass(torch.Tensor)
    height, width = tensor.shape[-2:]
    long = max(height, width)  # the exported models size it the same way
    new = (max(1, height * size // long), max(1, width * size // long))
    tensor = v2.functional.resize(tensor, list(new), antialias=True).as_subclass(torch.Tensor)
    canvas = torch.tensor(list(background), dtype=torch.uint8).view(3, 1, 1).repeat(1, size, size)
    top, left = (size - new[0]) // 2, (size - new[1]) // 2
    canvas[:, top : top + new[0], left : left + new[1]] = tensor
    return canvas


class DecodedImages(Dataset[torch.Tensor]):
    """The images of ``data`` as uint8 ``(3, S, S)`` squares, as ``square`` makes them."""

    def __init__(self, data: ImageDataset, size: int, geometry: Geometry = "crop") -> None:
        self.data, self.size = data.with_min_side(size), size  # JPEGs decoded at a reduced scale
        self.geometry = geometry

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return square(self.data.load(index), self.size, self.geometry, self.data.background)


def decode(
    images: Sequence[Image.Image | str | Path],
    size: int,
    background: Sequence[int],
    geometry: Geometry = "crop",
) -> torch.Tensor:
    rgb = [
        to_rgb(item, background=background)
        if isinstance(item, Image.Image)
        else read_image(item, background=background, min_side=size)
        for item in images
    ]
    return torch.stack([square(image, size, geometry, background) for image in rgb])


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(N, 3, size, size)`` from square uint8 images of another size (antialiased)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return v2.functional.resize(images, [size, size], antialias=True)


def normalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Float batch from uint8 ``(N, 3, S, S)``: scaled to [0, 1], then ``(x - mean) / std``."""
    m = torch.tensor(list(mean), device=batch.device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), device=batch.device).view(1, 3, 1, 1)
    return (batch.float() / 255 - m) / s
