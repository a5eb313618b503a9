from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.transforms import v2

from tlkit import BackboneInfo, augment, channel_stats, to_rgb
from tlkit.backbones import IMAGENET_MEAN, IMAGENET_STD

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


# --------------------------------------------------------------------------- BatchAugment
def _uint8_batch(n: int = 6, size: int = 32) -> torch.Tensor:
    photo = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)
    return torch.stack([photo[:, 40 * i : 40 * i + size, 100 : 100 + size] for i in range(n)])


def _normalised(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def test_batch_augment_whole_image_crop_is_exact_and_flip_mirrors() -> None:
    batch = _uint8_batch()
    keep = augment.BatchAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)
    torch.testing.assert_close(keep(batch), _normalised(batch), rtol=0, atol=1e-5)
    mirror = augment.BatchAugment(32, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=1.0)
    torch.testing.assert_close(mirror(batch), _normalised(batch).flip(-1), rtol=0, atol=1e-5)


def test_batch_augment_crop_reproduces_a_pixel_aligned_box() -> None:
    batch = _uint8_batch().float()
    aug = augment.BatchAugment(12)
    boxes = torch.tensor([[3.0, 5.0, 12.0, 12.0]] * len(batch))
    flips = torch.tensor([False, True] * (len(batch) // 2))
    out = aug.crop(batch, boxes, flips)
    expected = batch[:, :, 5:17, 3:15]
    expected[1::2] = expected[1::2].flip(-1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_batch_augment_boxes_follow_random_resized_crop_rules() -> None:
    aug = augment.BatchAugment(32, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    torch.manual_seed(0)
    boxes = aug.sample_boxes(4000, 48, 64)
    left, top, w, h = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + w <= 64 + 1e-4).all() and (top + h <= 48 + 1e-4).all()
    area = w * h / (48 * 64)
    assert area.min() >= 0.2 - 1e-4 and area.max() <= 0.6 + 1e-4
    assert (w / h).min() >= 0.5 - 1e-4 and (w / h).max() <= 2.0 + 1e-4
    # independent per image, covering the allowed ranges
    assert area.max() - area.min() > 0.35 and left.std() > 3 and top.std() > 3
    # a crop that can never fit falls back to the centre crop of the nearest allowed ratio
    wide = augment.BatchAugment(8, scale=(1.0, 1.0), ratio=(3.0, 4.0)).sample_boxes(3, 40, 40)
    torch.testing.assert_close(wide, torch.tensor([[0.0, (40 - 40 / 3) / 2, 40.0, 40 / 3]] * 3))


def test_batch_augment_is_random_in_train_mode_and_fixed_in_eval_mode() -> None:
    batch = _uint8_batch()
    aug = augment.BatchAugment(24, scale=(0.3, 1.0))
    torch.manual_seed(0)
    first = aug(batch)
    assert not torch.equal(first, aug(batch))
    torch.manual_seed(0)
    assert torch.equal(first, aug(batch))  # the global RNG drives it
    aug.eval()
    expected = torch.nn.functional.interpolate(
        batch.float() / 255, size=24, mode="bilinear", antialias=True
    )
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(aug(batch), (expected - mean) / std)
    aug.crop_pct = 0.75  # the central 24 of 32 pixels, already 24 px: no resampling
    torch.testing.assert_close(aug(batch), _normalised(batch[:, :, 4:28, 4:28]), rtol=0, atol=1e-5)


def test_batch_augment_channels_dtypes_statistics_and_bad_input() -> None:
    batch = _uint8_batch(4)
    aug = augment.BatchAugment(16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).eval()
    grey = aug(batch[:, :1])
    assert grey.shape == (4, 3, 16, 16) and torch.equal(grey[:, 0], grey[:, 2])
    rgba = torch.cat([batch, torch.full_like(batch[:, :1], 255)], 1)
    assert torch.equal(aug(rgba), aug(batch))
    torch.testing.assert_close(aug(batch.float() / 255), aug(batch))
    assert aug(torch.zeros(1, 3, 16, 16)).eq(-1).all()  # (0 - 0.5) / 0.5
    info = BackboneInfo(
        name="x", source="timm", weights="none", mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0)
    )
    assert augment.BatchAugment(16, info=info).mean.flatten().tolist() == pytest.approx(
        [0.1, 0.2, 0.3]
    )
    with pytest.raises(ValueError, match="1, 3 or 4 channels, got 2"):
        aug(batch[:, :2])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) batch, got \(3, 32, 32\)"):
        aug(batch[0])
    with pytest.raises(ValueError, match="scale"):
        augment.BatchAugment(16, scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="ratio"):
        augment.BatchAugment(16, ratio=(0.0, 1.0))
    with pytest.raises(ValueError, match="flip"):
        augment.BatchAugment(16, flip=1.5)
    with pytest.raises(ValueError, match="image_size"):
        augment.BatchAugment(0)


def test_zero_size_images_are_refused_with_their_shape() -> None:
    with pytest.raises(ValueError, match=r"zero size: shape \(2, 3, 0, 0\)"):
        augment.BatchAugment(32)(torch.zeros(2, 3, 0, 0, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"empty batch"):
        augment.BatchAugment(32)(torch.zeros(0, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        augment.ToRGB()(torch.zeros(3, 0, 5, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty"):
        to_rgb(Image.new("RGB", (0, 0)))
