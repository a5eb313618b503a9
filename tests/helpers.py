"""Loaders and trainers shared by the Trainer, callback, checkpoint and feature tests."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlkit import Trainer

from .jobs.common import ColourDataset


def loader(
    n: int = 96, *, seed: int = 0, batch_size: int = 16, shuffle: bool = True, **kw
) -> DataLoader:
    return DataLoader(ColourDataset(n, seed=seed, **kw), batch_size=batch_size, shuffle=shuffle)


def trainer_for(model: nn.Module, lr: float = 0.05, **kwargs) -> Trainer:
    params = [p for p in model.parameters() if p.requires_grad]
    return Trainer(
        model, optimizer=torch.optim.Adam(params, lr=lr), device="cpu", verbose=False, **kwargs
    )


def uint8_loader(n: int, *, seed: int = 0, shuffle: bool = True, size: int = 12) -> DataLoader:
    data = ColourDataset(n, seed=seed, size=size)
    images = (data.images * 255).round().to(torch.uint8)
    return DataLoader(TensorDataset(images, data.labels), batch_size=16, shuffle=shuffle)


class Recording(nn.Module):
    """Wraps a batch transform and records the mode and input of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, x.dtype))
        return self.inner(x)
