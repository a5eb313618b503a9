"""Augmentation of whole batches on their device: [tlkit.augment.BatchAugment][]."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2

from ..backbones import BackboneInfo
from .presets import PresetConfig, normalisation

__all__ = ["BatchAugment"]


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
        norm_mean, norm_std = normalisation(mean, std, info)
        # PresetConfig validates image_size, mean, std and crop_pct with the presets' messages.
        PresetConfig(
            image_size=image_size,
            mean=norm_mean,
            std=norm_std,
            crop_pct=crop_pct,
            interpolation=v2.InterpolationMode.BILINEAR,
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
