"""Shared pieces of the subprocess jobs: a deterministic tiny dataset and model."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class ColourDataset(Dataset[tuple[torch.Tensor, int]]):
    """Tiny 3-class images whose class is the brightest channel, with optional random flips."""

    def __init__(self, n: int = 96, *, seed: int = 0, augment: bool = False, size: int = 8) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.images = torch.rand(n, 3, size, size, generator=g) * 0.5
        for i, label in enumerate(self.labels.tolist()):
            self.images[i, label] += 0.5
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment and torch.rand(()) < 0.5:  # global RNG, as torchvision transforms use
            image = image.flip(-1)
        return image, int(self.labels[index])


def small_net(*, dropout: float = 0.0, bn: bool = True) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(8))
    layers += [
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(8, 3),
    ]
    return nn.Sequential(*layers)
