"""The registry of named (train, eval) transform pairs and the built-in presets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torchvision.transforms import v2

from .._utils import check_positive_int
from ..backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneInfo
from ..registry import Registry
from .pixels import ToRGB

__all__ = [
    "MAX_IMAGE_SIZE",
    "PresetConfig",
    "Transform",
    "get",
    "names",
    "normalisation",
    "register",
]


MAX_IMAGE_SIZE = 4096  # px; past it one training batch alone outgrows a large GPU

Transform = Callable[[Any], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class PresetConfig:
    """The parameters a preset builder receives.

    Attributes:
        image_size: Output side length in pixels.
        mean: Normalisation mean per channel.
        std: Normalisation standard deviation per channel.
        crop_pct: Fraction of the resized image kept by the evaluation centre crop.
        interpolation: Resize interpolation.

    Examples:
        >>> cfg = PresetConfig(image_size=96, mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0,
        ...                    interpolation=v2.InterpolationMode.BILINEAR)
        >>> cfg.image_size
        96
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: v2.InterpolationMode

    def __post_init__(self) -> None:
        check_positive_int("image_size", self.image_size)
        if self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(
                f"image_size={self.image_size} is larger than {MAX_IMAGE_SIZE} pixels: one batch "
                "of such images would need terabytes; pretrained backbones use 224-600"
            )
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) != 3:
                raise ValueError(f"{key} must have 3 values (RGB), got {value!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")


class PresetBuilder(Protocol):
    def __call__(self, cfg: PresetConfig) -> tuple[list[Any], float | None]: ...


_PRESETS: Registry[PresetBuilder] = Registry("preset")


def register(name: str) -> Callable[[PresetBuilder], PresetBuilder]:
    """Register an augmentation preset under ``name``.

    The decorated function receives a [PresetConfig][tlkit.augment.PresetConfig] and returns
    ``(ops, crop_pct)``:
    the train-time augmentations to run on a uint8 3-channel image (from the random crop on; tlkit
    adds [ToRGB][tlkit.augment.ToRGB] in front and float conversion and normalisation after), and
    the preset's
    default evaluation crop fraction (``None`` keeps the caller's or the backbone's).

    Args:
        name: The preset's name; registering a name twice is an error.

    Returns:
        A decorator returning the function unchanged.

    Raises:
        ValueError: If ``name`` is already registered.

    Examples:
        >>> from torchvision.transforms import v2
        >>> @register("vflip_demo")
        ... def vflip_demo(cfg):
        ...     return [v2.RandomResizedCrop(cfg.image_size), v2.RandomVerticalFlip()], None
        >>> "vflip_demo" in names()
        True
    """
    return _PRESETS.register(name)


def names(pattern: str | None = None) -> list[str]:
    """Names of the registered presets, sorted, optionally filtered by a glob pattern.

    Examples:
        >>> names("*augment")
        ['autoaugment', 'randaugment', 'trivialaugment']
    """
    return _PRESETS.names(pattern)


def _finish(cfg: PresetConfig) -> list[Any]:
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(cfg.mean), list(cfg.std)),
        v2.ToPureTensor(),
    ]


def _eval_ops(cfg: PresetConfig) -> list[Any]:
    resize = round(cfg.image_size / cfg.crop_pct)
    return [
        v2.Resize(resize, interpolation=cfg.interpolation, antialias=True),
        v2.CenterCrop(cfg.image_size),
    ]


def _random_crop(cfg: PresetConfig, scale: tuple[float, float] = (0.08, 1.0)) -> Any:
    return v2.RandomResizedCrop(
        cfg.image_size, scale=scale, interpolation=cfg.interpolation, antialias=True
    )


# --------------------------------------------------------------------------- built-in presets
@register("none")
def _none(cfg: PresetConfig) -> tuple[list[Any], float | None]:
    """No augmentation: training sees what evaluation sees."""
    return _eval_ops(cfg), None


@register("flip")
def _flip(cfg: PresetConfig) -> tuple[list[Any], float | None]:
    """The evaluation view plus a random horizontal flip."""
    return [*_eval_ops(cfg), v2.RandomHorizontalFlip()], None


@register("seed")
def _seed(cfg: PresetConfig) -> tuple[list[Any], float | None]:
    """The blog recipe's mild augmentation.

    RandomResizedCrop keeping 80-100% of the area (aspect 3/4-4/3), RandomRotation of up to 15
    degrees, RandomHorizontalFlip (p=0.5). The post named these three but gave no parameters;
    these keep the object in view ("too much augmentation underfits"). Its evaluation view is
    the image itself resized to ``image_size`` (crop_pct 1.0), as the post's test transform was
    ToTensor + Normalize only.
    """
    return [
        _random_crop(cfg, scale=(0.8, 1.0)),
        v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR),
        v2.RandomHorizontalFlip(),
    ], 1.0


@register("standard")
def _standard(cfg: PresetConfig) -> tuple[list[Any], float | None]:
    """ImageNet-style training: RandomResizedCrop (8-100% of the area) and a horizontal flip."""
    return [_random_crop(cfg), v2.RandomHorizontalFlip()], None


def _standard_then(cfg: PresetConfig, policy: Any) -> tuple[list[Any], float | None]:
    return [_random_crop(cfg), v2.RandomHorizontalFlip(), policy], None


_BILINEAR = v2.InterpolationMode.BILINEAR


@register("randaugment")
def _randaugment(cfg: PresetConfig) -> tuple[list[Any], float | None]:
    """Standard crop and flip, then RandAugment with 2 ops at magnitude 9 (timm's rand-m9)."""
    return _standard_then(cfg, v2.RandAugment(num_ops=2, magnitude=9, interpolation=_BILINEAR))


@register("trivialaugment")
def _trivialaugment(cfg: PresetConfig) -> tuple[list[Any], float | None]:
    """Standard crop and flip, then TrivialAugmentWide (one random op, random magnitude)."""
    return _standard_then(cfg, v2.TrivialAugmentWide(interpolation=_BILINEAR))


@register("autoaugment")
def _autoaugment(cfg: PresetConfig) -> tuple[list[Any], float | None]:
    """Standard crop and flip, then AutoAugment with its ImageNet policy."""
    return _standard_then(
        cfg, v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=_BILINEAR)
    )


_ChannelStats = tuple[float, float, float]


def normalisation(
    mean: Sequence[float] | None, std: Sequence[float] | None, info: BackboneInfo | None
) -> tuple[_ChannelStats, _ChannelStats]:
    """The given mean/std, else the backbone's (``info``), else ImageNet's, as tuples.

    Their length is checked by [PresetConfig][tlkit.augment.PresetConfig].
    """
    chosen_mean = tuple(mean if mean is not None else (info.mean if info else IMAGENET_MEAN))
    chosen_std = tuple(std if std is not None else (info.std if info else IMAGENET_STD))
    return cast(_ChannelStats, chosen_mean), cast(_ChannelStats, chosen_std)


def get(
    name: str,
    *,
    image_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_pct: float | None = None,
    interpolation: str | v2.InterpolationMode | None = None,
    info: BackboneInfo | None = None,
) -> tuple[v2.Compose, v2.Compose]:
    """Build a fresh ``(train, eval)`` transform pair of the preset ``name``.

    Args:
        name: A registered preset ([names][tlkit.augment.names] lists them).
        image_size: Output side length; defaults to ``info.input_size``.
        mean: Normalisation mean; defaults to the backbone's (``info``), else ImageNet's.
        std: Normalisation std; defaults to the backbone's (``info``), else ImageNet's.
        crop_pct: Evaluation centre-crop fraction; defaults to the preset's own choice, else the
            backbone's, else 0.875.
        interpolation: Resize interpolation (``"bilinear"``, ``"bicubic"``, ...); defaults to the
            backbone's, else bilinear.
        info: A [BackboneInfo][tlkit.BackboneInfo] from [tlkit.backbone][tlkit.backbone] supplying
            the defaults.

    Returns:
        Two ``v2.Compose`` pipelines mapping an image to a normalised ``float32`` tensor of shape
        ``(3, image_size, image_size)``.

    Raises:
        KeyError: For an unknown preset (with close matches and the available names).
        ValueError: For a missing or bad ``image_size``, ``mean``/``std`` without 3 values or
            ``crop_pct`` outside (0, 1].

    Examples:
        >>> from PIL import Image
        >>> train, test = get("seed", image_size=96)
        >>> train(Image.new("L", (120, 100))).shape
        torch.Size([3, 96, 96])
        >>> get("randaugmnet", image_size=96)
        Traceback (most recent call last):
        ...
        KeyError: "unknown preset 'randaugmnet'; did you mean 'randaugment'? available: ..."
    """
    builder = _PRESETS.get(name)
    if image_size is None:
        if info is None:
            raise ValueError("give image_size (or info=BackboneInfo to use its input size)")
        image_size = info.input_size
    interp = (
        interpolation if interpolation is not None else (info.interpolation if info else "bilinear")
    )
    norm_mean, norm_std = normalisation(mean, std, info)
    cfg = PresetConfig(
        image_size=image_size,
        mean=norm_mean,
        std=norm_std,
        crop_pct=crop_pct if crop_pct is not None else (info.crop_pct if info else 0.875),
        interpolation=v2.InterpolationMode(interp) if isinstance(interp, str) else interp,
    )
    train_ops, preset_crop = builder(cfg)
    if crop_pct is None and preset_crop is not None:
        cfg = PresetConfig(**{**cfg.__dict__, "crop_pct": preset_crop})
    train = v2.Compose([ToRGB(), *train_ops, *_finish(cfg)])
    evaluation = v2.Compose([ToRGB(), *_eval_ops(cfg), *_finish(cfg)])
    return train, evaluation
