"""Augmentation presets: named (train, eval) transform pairs on ``torchvision.transforms.v2``.

A preset is a builder registered under a name; [tlkit.augment.get][] calls it and returns a *new*
pair of pipelines each time. Every pipeline starts with [tlkit.augment.ToRGB][] (PIL images in
any mode, uint8 tensors or arrays; greyscale, RGB or RGBA, transparency composited) and ends
with a normalised 3-channel float tensor. Augmentations
run on uint8 images, where torchvision's kernels are fastest.

The evaluation pipeline of every preset is the same: resize the short side to
``image_size / crop_pct``, centre-crop ``image_size``, normalise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ._utils import check_positive_int
from .backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneInfo
from .data import to_rgb
from .registry import Registry

__all__ = [
    "BatchAugment",
    "PresetConfig",
    "ToRGB",
    "channel_stats",
    "composite",
    "get",
    "names",
    "register",
]

MAX_IMAGE_SIZE = 4096

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


# --------------------------------------------------------------------------- input conversion
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


def _normalisation(
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
    norm_mean, norm_std = _normalisation(mean, std, info)
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


# --------------------------------------------------------------------------- batched, on device
class BatchAugment(nn.Module):
    """Random resized crop, horizontal flip and normalisation of a whole batch, on its device.

    The ``standard`` preset's augmentation for when per-image CPU transforms cannot keep a GPU
    fed: the loader only decodes and batches uint8 images of one size, and this module, given
    to ``Trainer(batch_transform=...)``, augments the batch after it reached the device. Crop
    boxes are drawn as ``torchvision.transforms.v2.RandomResizedCrop`` draws them (up to 10
    tries per image, then the centre crop of the nearest allowed aspect ratio), independently
    for every image, with torch's random generator of the batch's device, so a ``Trainer``
    checkpoint captures its state; one ``grid_sample`` call then resamples the whole batch.

    In eval mode the module is deterministic: it keeps the central ``crop_pct`` of each side,
    resizes to ``image_size`` (antialiased) and normalises, like the presets' eval pipeline on
    square images.

    Inputs are ``(N, C, H, W)`` batches, uint8 in [0, 255] or float in [0, 1], with 1 (repeated
    to 3), 3 or 4 (alpha dropped) channels. Outputs are normalised ``float32`` batches of shape
    ``(N, 3, image_size, image_size)``. The random crop interpolates bilinearly without
    antialiasing (as ``grid_sample`` does): fine when crops are upsampled or resized by less
    than about 2x, as with STL10-sized images; give the loader images near the output size.

    Args:
        image_size: Output side length in pixels.
        scale: Range of the crop's area as a fraction of the image's.
        ratio: Range of the crop's aspect ratio (width / height).
        flip: Probability of a horizontal flip.
        mean: Normalisation mean; defaults to ``info.mean``, else ImageNet's.
        std: Normalisation std; defaults to ``info.std``, else ImageNet's.
        crop_pct: Fraction of each side kept by the eval-mode centre crop.
        info: A [BackboneInfo][tlkit.BackboneInfo] supplying mean and std.

    Raises:
        ValueError: For a bad ``image_size``, ``scale``, ``ratio``, ``flip`` or ``crop_pct``,
            or (when called) a batch that is not ``(N, C, H, W)`` with 1, 3 or 4 channels.

    Examples:
        >>> import torch
        >>> augment = BatchAugment(64, scale=(0.25, 1.0))
        >>> batch = torch.randint(0, 256, (8, 3, 96, 96), dtype=torch.uint8)
        >>> augment(batch).shape
        torch.Size([8, 3, 64, 64])
        >>> _ = augment.eval()
        >>> torch.equal(augment(batch), augment(batch))
        True
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        image_size: int,
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_pct: float = 1.0,
        info: BackboneInfo | None = None,
    ) -> None:
        super().__init__()
        norm_mean, norm_std = _normalisation(mean, std, info)
        # PresetConfig validates image_size, mean, std and crop_pct with the presets' messages.
        PresetConfig(
            image_size=image_size,
            mean=norm_mean,
            std=norm_std,
            crop_pct=crop_pct,
            interpolation=_BILINEAR,
        )
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
        if not 0 <= flip <= 1:
            raise ValueError(f"flip is a probability in [0, 1], got {flip}")
        self.image_size = image_size
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip = float(flip)
        self.crop_pct = float(crop_pct)
        self.register_buffer("mean", torch.tensor(norm_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm_std).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"image_size={self.image_size}, scale={self.scale}, ratio={self.ratio}, "
            f"flip={self.flip}, crop_pct={self.crop_pct}"
        )

    def sample_boxes(self, n: int, height: int, width: int, device: Any = None) -> torch.Tensor:
        """Draw ``n`` crop boxes ``(left, top, width, height)`` in pixels, as a ``(n, 4)`` tensor.

        Examples:
            >>> boxes = BatchAugment(32, scale=(0.5, 0.5), ratio=(1.0, 1.0)).sample_boxes(4, 40, 40)
            >>> [round(float(w * h)) for w, h in boxes[:, 2:]]
            [800, 800, 800, 800]
        """
        tries = 10
        area = height * width
        target = area * torch.empty(n, tries, device=device).uniform_(*self.scale)
        log_ratio = torch.empty(n, tries, device=device).uniform_(
            math.log(self.ratio[0]), math.log(self.ratio[1])
        )
        aspect = log_ratio.exp()
        w = (target * aspect).sqrt()
        h = (target / aspect).sqrt()
        fits = (w <= width) & (h <= height)
        first = torch.where(fits.any(1), fits.int().argmax(1), -1)
        # fallback, as torchvision: the whole image, cut to the nearest allowed aspect ratio
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fallback = (float(width), width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fallback = (height * self.ratio[1], float(height))
        else:
            fallback = (float(width), float(height))
        pick = first.clamp(min=0)[:, None]
        found = first >= 0
        w = torch.where(found, w.gather(1, pick)[:, 0], fallback[0])
        h = torch.where(found, h.gather(1, pick)[:, 0], fallback[1])
        u = torch.rand(n, 2, device=device)
        left = torch.where(found, u[:, 0] * (width - w), (width - w) / 2)
        top = torch.where(found, u[:, 1] * (height - h), (height - h) / 2)
        return torch.stack([left, top, w, h], 1)

    def crop(self, images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """Resample each image's box ``(left, top, width, height)`` to ``image_size`` squared.

        ``images`` are float ``(N, C, H, W)``; ``flips`` is a boolean ``(N,)`` mirror mask.
        A box on pixel boundaries with the output's size reproduces those pixels exactly.

        Examples:
            >>> import torch
            >>> x = torch.arange(64.0).view(1, 1, 8, 8)
            >>> box, flip = torch.tensor([[2.0, 1.0, 4.0, 4.0]]), torch.tensor([False])
            >>> out = BatchAugment(4).crop(x, box, flip)
            >>> torch.equal(out, x[:, :, 1:5, 2:6])
            True
        """
        n, _, height, width = images.shape
        left, top, w, h = boxes.to(images.dtype).unbind(1)
        theta = images.new_zeros(n, 2, 3)
        theta[:, 0, 0] = torch.where(flips, -w, w) / width
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        size = (n, images.shape[1], self.image_size, self.image_size)
        grid = nn.functional.affine_grid(theta, list(size), align_corners=False)
        return nn.functional.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"BatchAugment expects an (N, C, H, W) batch, got {shape}")
        channels = images.shape[1]
        if channels not in (1, 3, 4):
            raise ValueError(
                f"BatchAugment expects 1, 3 or 4 channels, got {channels} "
                f"(batch shape {tuple(images.shape)})"
            )
        if 0 in images.shape:
            raise ValueError(
                f"BatchAugment got an empty batch or images of zero size: shape "
                f"{tuple(images.shape)}; every image needs at least one pixel"
            )
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        x = x.expand(-1, 3, -1, -1) if channels == 1 else x[:, :3]
        n, _, height, width = x.shape
        if self.training:
            boxes = self.sample_boxes(n, height, width, device=x.device)
            flips = torch.rand(n, device=x.device) < self.flip
            x = self.crop(x, boxes, flips)
        else:
            keep_h, keep_w = round(height * self.crop_pct), round(width * self.crop_pct)
            top, left = (height - keep_h) // 2, (width - keep_w) // 2
            x = x[:, :, top : top + keep_h, left : left + keep_w]
            if x.shape[-2:] != (self.image_size, self.image_size):
                x = nn.functional.interpolate(
                    x, size=self.image_size, mode="bilinear", antialias=True, align_corners=False
                )
        return (x - self.mean) / self.std


# --------------------------------------------------------------------------- statistics
def channel_stats(
    dataset: Dataset[Any], *, num_workers: int = 0
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of a dataset's images, in [0, 1] units.

    Streams over the images once and accumulates sums and sums of squares in float64 (the blog
    recipe's per-channel statistics, without holding the dataset in memory). Items may be images
    or ``(image, label)`` tuples; images are converted with [ToRGB][tlkit.augment.ToRGB], so pass
    the dataset
    without a normalising transform.

    Args:
        dataset: A map-style dataset of images (PIL, arrays or tensors, any sizes).
        num_workers: DataLoader workers used to read the images.

    Returns:
        ``(mean, std)``, each a tuple of 3 floats (population standard deviation).

    Raises:
        ValueError: If the dataset is empty.

    Examples:
        >>> import torch
        >>> images = [torch.full((3, 2, 2), v, dtype=torch.uint8) for v in (0, 255)]
        >>> channel_stats(images)
        ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    """
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("cannot compute channel statistics of an empty dataset")
    to_rgb = ToRGB()
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity)
    for item in loader:
        image = item[0] if isinstance(item, (tuple, list)) else item
        x = to_rgb(image).as_subclass(torch.Tensor).to(torch.float64).div_(255.0).flatten(1)
        total += x.sum(dim=1)
        total_sq += (x * x).sum(dim=1)
        pixels += x.shape[1]
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(0).sqrt()
    return _triple(mean), _triple(std)


def _identity(item: Any) -> Any:
    return item


def _triple(values: torch.Tensor) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
