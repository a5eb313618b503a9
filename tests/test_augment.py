from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.transforms import v2

from tlkit import BackboneInfo, augment, channel_stats

BUILTINS = ["autoaugment", "flip", "none", "randaugment", "seed", "standard", "trivialaugment"]


def _inputs() -> list[object]:
    photo = Image.fromarray(skdata.chelsea()).resize((120, 90))
    return [
        photo,
        photo.convert("L"),
        photo.convert("RGBA"),
        photo.convert("P"),
        torch.from_numpy(np.array(photo)).permute(2, 0, 1).contiguous(),
        torch.from_numpy(np.array(photo.convert("L")))[None],
        np.asarray(photo),
        np.asarray(photo.convert("L")),
    ]


def test_builtins_are_registered() -> None:
    assert set(BUILTINS) <= set(augment.names())


@pytest.mark.parametrize("name", BUILTINS)
def test_every_preset_maps_every_input_kind_to_normalised_rgb(name: str) -> None:
    train, evaluation = augment.get(name, image_size=48)
    for image in _inputs():
        for pipeline in (train, evaluation):
            out = pipeline(image)
            assert out.shape == (3, 48, 48) and out.dtype == torch.float32
            assert type(out) is torch.Tensor
        out = evaluation(image)
        assert out.min() < 0 < out.max()  # normalised, not in [0, 1]


def test_greyscale_becomes_three_equal_channels() -> None:
    _, evaluation = augment.get("none", image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = evaluation(Image.fromarray(skdata.camera()))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_eval_is_deterministic_and_normalises_with_the_given_stats() -> None:
    image = Image.fromarray(skdata.chelsea())
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    _, evaluation = augment.get("standard", image_size=64, mean=mean, std=std, crop_pct=1.0)
    out = evaluation(image)
    assert torch.equal(out, evaluation(image))
    plain = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(64, antialias=True),
            v2.CenterCrop(64),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )(image)
    expected = (plain - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(out, expected)


def test_train_pipelines_are_random_and_fresh_per_call() -> None:
    image = Image.fromarray(skdata.chelsea())
    train, _ = augment.get("randaugment", image_size=64)
    torch.manual_seed(0)
    a, b = train(image), train(image)
    assert not torch.equal(a, b)
    train2, _ = augment.get("randaugment", image_size=64)
    assert train2 is not train and train2.transforms[1] is not train.transforms[1]


def test_defaults_come_from_backbone_info_else_imagenet() -> None:
    info = BackboneInfo(
        name="x",
        source="timm",
        weights="random",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        input_size=40,
        crop_pct=0.8,
        interpolation="bicubic",
    )
    _, evaluation = augment.get("standard", info=info)
    normalize = evaluation.transforms[-2]
    assert list(normalize.mean) == [0.5, 0.5, 0.5] and list(normalize.std) == [0.25, 0.25, 0.25]
    assert (
        evaluation.transforms[1].size == [50]
        and evaluation.transforms[1].interpolation == v2.InterpolationMode.BICUBIC
    )
    _, plain = augment.get("standard", image_size=32)
    assert [round(v, 3) for v in plain.transforms[-2].mean] == [0.485, 0.456, 0.406]


def test_seed_preset_parameters_and_eval_view() -> None:
    train, evaluation = augment.get("seed", image_size=96)
    crop, rotation, flip = train.transforms[1:4]
    assert isinstance(crop, v2.RandomResizedCrop) and crop.scale == (0.8, 1.0)
    assert isinstance(rotation, v2.RandomRotation) and rotation.degrees == [-15.0, 15.0]
    assert isinstance(flip, v2.RandomHorizontalFlip)
    assert evaluation.transforms[1].size == [96]  # crop_pct 1.0: a 96 px image is kept whole


def test_register_custom_preset_and_duplicate_names() -> None:
    @augment.register("test_vflip")
    def _vflip(cfg: augment.PresetConfig):
        return [
            v2.Resize((cfg.image_size, cfg.image_size), antialias=True),
            v2.RandomVerticalFlip(p=1.0),
        ], 1.0

    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    train, evaluation = augment.get("test_vflip", image_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(train(image), evaluation(image).flip(-2))
    with pytest.raises(ValueError, match="already registered"):
        augment.register("test_vflip")
    with pytest.raises(ValueError, match="already registered"):
        augment.register("seed")


def test_unknown_preset_names_close_match_and_available() -> None:
    with pytest.raises(
        KeyError,
        match=r"unknown preset 'randaugmnet'; did you mean 'randaugment'\? available: autoaug",
    ):
        augment.get("randaugmnet", image_size=96)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give image_size"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"image_size": 32, "mean": (0.5, 0.5)}, "mean must have 3 values"),
        ({"image_size": 32, "std": (0.5, 0.0, 0.5)}, "std must be positive"),
        ({"image_size": 32, "crop_pct": 1.5}, r"crop_pct must be in \(0, 1\]"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        augment.get("seed", **kwargs)


def test_to_rgb_rejects_bad_images() -> None:
    with pytest.raises(ValueError, match="1, 3 or 4 channels"):
        augment.ToRGB()(torch.zeros(2, 4, 4, dtype=torch.uint8))
    with pytest.raises(TypeError, match="PIL image"):
        augment.ToRGB()("image.png")


def test_channel_stats_matches_a_direct_computation() -> None:
    photos = [skdata.chelsea(), skdata.coffee(), skdata.astronaut()]
    dataset = [(Image.fromarray(p), 0) for p in photos]
    mean, std = channel_stats(dataset)
    pixels = np.concatenate([p.reshape(-1, 3) for p in photos]).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-9)


def test_channel_stats_with_workers_and_empty_dataset() -> None:
    images = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(6)]
    assert channel_stats(images, num_workers=2) == channel_stats(images)
    with pytest.raises(ValueError, match="empty"):
        channel_stats([])
