"""Decoding one image on purpose: every PIL mode to RGB ([tlkit.to_rgb][]), files read with
clear errors and, for JPEG, at reduced scale ([tlkit.read_image][])."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

from ._utils import check_positive_int

__all__ = ["Background", "check_background", "read_image", "to_rgb"]

Background = tuple[int, int, int]
_EXIF_ORIENTATION = 0x0112


def check_background(background: Sequence[int]) -> Background:
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
    bg = check_background(background)
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


def read_image(
    path: str | os.PathLike[str],
    *,
    background: Sequence[int] = (255, 255, 255),
    min_side: int | None = None,
) -> Image.Image:
    """Decode an image file to RGB with [tlkit.to_rgb][] (transparency onto ``background``).

    Args:
        path: The image file.
        background: RGB colour under transparent pixels.
        min_side: For a caller that resizes the short side to this anyway: a JPEG is decoded
            at a reduced scale (libjpeg's DCT scaling, 1/2 to 1/8) where its short side stays at
            least ``min_side``, several times faster on camera photos
            (`benchmarks/decode_speed.py`). Other formats are decoded whole.

    Raises:
        ValueError: If the file cannot be decoded (naming it), or for a bad ``min_side``.

    Examples:
        >>> import tempfile
        >>> path = tempfile.mkdtemp() + "/a.png"
        >>> Image.new("LA", (2, 2), (0, 0)).save(path)
        >>> read_image(path, background=(9, 8, 7)).getpixel((0, 0))
        (9, 8, 7)
        >>> photo = path.replace("a.png", "b.jpg")
        >>> Image.new("RGB", (2000, 1000), (200, 30, 30)).save(photo)
        >>> read_image(photo, min_side=224).size  # 1/4 scale: the short side stays >= 224
        (500, 250)
    """
    if min_side is not None:
        check_positive_int("min_side", min_side)
    try:
        with Image.open(path) as image:
            if min_side is not None and image.format == "JPEG" and min(image.size) > min_side:
                scale = min_side / min(image.size)  # the same for either EXIF orientation
                width, height = image.size
                image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
            image.load()
            return to_rgb(image, background=background)
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"cannot decode image {str(path)!r}: {exc} (Pillow's limit, "
            "PIL.Image.MAX_IMAGE_PIXELS; raise it only for files you trust)"
        ) from exc
    except (OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode image {str(path)!r}: {exc}") from exc
