"""Image decoding: every PIL mode reaches the model as the picture a person sees."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tlkit import augment, to_rgb

RED = (220, 20, 20)


def noisy_rgba(alpha: int = 0) -> Image.Image:
    """A red square in the middle, noise under a transparent border."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    pixels[..., 3] = alpha
    pixels[2:6, 2:6] = (*RED, 255)
    return Image.fromarray(pixels, "RGBA")


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (10, 200, 30)])
def test_transparency_is_composited_onto_the_background(background) -> None:
    image = noisy_rgba()
    for variant in (image, image.convert("LA"), image.convert("PA")):
        out = np.asarray(to_rgb(variant, background=background))
        inside = out[3, 3]
        assert (out[0, 0] == background).all(), variant.mode
        assert (out[:2].reshape(-1, 3) == background).all(), variant.mode
        assert inside.tolist() != list(background), variant.mode


def test_half_transparent_pixels_blend_and_palette_transparency_is_honoured() -> None:
    half = Image.new("RGBA", (1, 1), (200, 0, 0, 128))
    assert to_rgb(half, background=(0, 0, 0)).getpixel((0, 0)) == (100, 0, 0)
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # index 0 (red) is transparent
    out = to_rgb(palette, background=(0, 255, 0))
    assert out.getpixel((0, 0)) == (0, 255, 0) and out.getpixel((1, 0)) == (0, 0, 255)


def test_sixteen_bit_and_float_images_are_scaled_not_saturated() -> None:
    ramp = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    for mode_image in (Image.fromarray(ramp), Image.fromarray(ramp.astype(np.int32), "I")):
        values = np.asarray(to_rgb(mode_image))[0, :, 0].tolist()
        assert values == [0, 100, 255], mode_image.mode
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="outside the 16-bit range"):
        to_rgb(Image.fromarray(np.array([[-5, 3]], dtype=np.int32), "I"))
    with pytest.raises(ValueError, match="NaN"):
        to_rgb(Image.fromarray(np.array([[np.nan, 1]], dtype=np.float32), "F"))


def test_greyscale_cmyk_and_exif_orientation() -> None:
    assert to_rgb(Image.new("L", (2, 2), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("1", (2, 2), 1)).getpixel((0, 0)) == (255, 255, 255)
    cmyk = to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0)))
    assert cmyk.getpixel((0, 0)) == (255, 0, 0)
    wide = Image.new("RGB", (4, 2), (0, 0, 0))
    wide.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    wide.save(buffer, "JPEG", exif=exif, quality=100)
    upright = to_rgb(Image.open(buffer))
    assert upright.size == (2, 4)


def test_bad_images_and_backgrounds_are_refused() -> None:
    with pytest.raises(ValueError, match="background must be three ints"):
        to_rgb(Image.new("RGB", (1, 1)), background=(0, 0, 256))
    with pytest.raises(ValueError, match="empty"):
        to_rgb(Image.new("RGB", (0, 0)))
    with pytest.raises(TypeError, match="expected a PIL image"):
        to_rgb(np.zeros((2, 2, 3)))  # type: ignore[arg-type]


def test_to_rgb_transform_refuses_what_would_saturate_and_composites_alpha() -> None:
    convert = augment.ToRGB()
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], got values 0\.\.255"):
        convert(torch.linspace(0, 255, 3 * 4 * 4).reshape(3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        convert(torch.full((3, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        convert(torch.zeros(3, 0, 0, dtype=torch.uint8))
    rgba = torch.zeros(4, 2, 2, dtype=torch.uint8)  # black, fully transparent
    assert augment.ToRGB(background=(9, 8, 7))(rgba)[:, 0, 0].tolist() == [9, 8, 7]
    with pytest.raises(ValueError, match="image_size=1000000 is larger than 4096"):
        augment.get("standard", image_size=10**6)
