"""Solid shapes on transparent canvases with noise under the transparency, in RGBA, LA and
palette PNGs: the case where dropping alpha instead of compositing ruins the pictures."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")


def draw(shape: str, rng: random.Random, size: int = 48) -> Image.Image:
    noise = np.random.default_rng(rng.randrange(2**32)).integers(0, 256, (size, size, 4))
    noise[..., 3] = 0  # fully transparent noise: what a PNG editor may leave under alpha
    image = Image.fromarray(noise.astype(np.uint8), "RGBA")
    pen = ImageDraw.Draw(image)
    colour = (rng.randrange(0, 120), rng.randrange(0, 120), rng.randrange(0, 120), 255)
    r = rng.randrange(size // 5, size // 3)
    cx, cy = rng.randrange(r + 2, size - r - 2), rng.randrange(r + 2, size - r - 2)
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(2, r // 3)
        pen.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        pen.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    return image


def write(root: Path, per_class: int, *, seed: int = 0, size: int = 48) -> Path:
    """``root/<shape>/<i>.png``, cycling RGBA, LA and palette-with-transparency modes."""
    rng = random.Random(seed)
    for shape in SHAPES:
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = draw(shape, rng, size)
            mode = i % 3
            if mode == 1:
                image = image.convert("LA")
            elif mode == 2:
                image = _palette_with_transparency(image)
            image.save(folder / f"{i}.png")
    return root


def _palette_with_transparency(rgba: Image.Image) -> Image.Image:
    array = np.asarray(rgba)
    transparent = array[..., 3] == 0
    rgb = Image.fromarray(array[..., :3].copy(), "RGB")
    palette = rgb.quantize(colors=255)
    indices = np.asarray(palette).copy()
    indices[transparent] = 255  # a reserved index for "transparent"
    out = Image.fromarray(indices, "P")
    out.putpalette([*palette.getpalette()[: 255 * 3], 0, 0, 0])
    out.info["transparency"] = 255
    return out
