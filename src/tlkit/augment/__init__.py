"""Augmentation presets: named (train, eval) transform pairs on ``torchvision.transforms.v2``.

A preset is a builder registered under a name; [tlkit.augment.get][] calls it and returns a *new*
pair of pipelines each time. Every pipeline starts with [tlkit.augment.ToRGB][] (PIL images in
any mode, uint8 tensors or arrays; greyscale, RGB or RGBA, transparency composited) and ends
with a normalised 3-channel float tensor. Augmentations
run on uint8 images, where torchvision's kernels are fastest.

The evaluation pipeline of every preset is the same: resize the short side to
``image_size / crop_pct``, centre-crop ``image_size``, normalise.
"""

from .batch import BatchAugment
from .pixels import ToRGB, composite
from .presets import PresetConfig, get, names, register
from .stats import channel_stats

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
