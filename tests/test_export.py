"""The deployable module: preprocessing inside, any channel count and size."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from tlkit import to_rgb
from tlkit.export import Deployable
from tlkit.model.images import normalise, square


def identity_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))


def test_preprocessing_inside_matches_the_python_path_on_rgba_grey_and_odd_sizes() -> None:
    torch.manual_seed(0)
    net = identity_net().eval()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    deployable = torch.jit.script(Deployable(net, ["a", "b"], 8, mean, std, (10, 200, 30)))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (13, 21, 4), dtype=np.uint8)
    pixels[..., 3] = np.where(rng.random((13, 21)) < 0.5, 0, 255)
    image = Image.fromarray(pixels, "RGBA")
    expected = net(normalise(square(to_rgb(image, background=(10, 200, 30)), 8)[None], mean, std))
    got = deployable(torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous())
    torch.testing.assert_close(got, expected.softmax(1), atol=0.02, rtol=0)
    grey = torch.full((3, 1, 30, 9), 77, dtype=torch.uint8)
    as_rgb = grey.expand(-1, 3, -1, -1).contiguous()
    torch.testing.assert_close(deployable(grey), deployable(as_rgb))
    assert deployable.classes == ["a", "b"]


def test_letterboxing_and_mirror_averaging_inside_match_the_python_path() -> None:
    torch.manual_seed(0)
    net = identity_net().eval()
    mean, std, background = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), (10, 200, 30)
    deployable = torch.jit.script(
        Deployable(net, ["a", "b"], 8, mean, std, background, pad=True, mirror=True)
    )
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (9, 27, 3), dtype=np.uint8)  # wide: padded above and below
    image = Image.fromarray(pixels, "RGB")
    x = normalise(square(image, 8, "pad", background)[None], mean, std)
    expected = (net(x).softmax(1) + net(x.flip(3)).softmax(1)) / 2
    got = deployable(torch.from_numpy(pixels).permute(2, 0, 1)[None].contiguous())
    torch.testing.assert_close(got, expected, atol=0.02, rtol=0)
    plain = torch.jit.script(Deployable(net, ["a", "b"], 8, mean, std, background, pad=True))
    assert not torch.allclose(plain(torch.from_numpy(pixels).permute(2, 0, 1)[None]), got)
