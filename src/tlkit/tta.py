"""Test-time augmentation: a prediction averaged over an image and its mirror image."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["flip_average"]


def flip_average(module: nn.Module, x: torch.Tensor, *, log_probs: bool) -> torch.Tensor:
    """Log of the mean probabilities over ``x`` and its mirror image (test-time augmentation):
    a loss on log-probabilities or on logits then scores the mean prediction. ``log_probs``
    says whether ``module`` returns log-probabilities (else logits).

    Examples:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> x = torch.randn(2, 3, 1, 4)
        >>> flip_average(net, x, log_probs=False).exp().sum(1).round(decimals=4).tolist()
        [1.0, 1.0]
    """
    both = module(torch.cat([x, x.flip(-1)])).float()
    probs = both.exp() if log_probs else both.softmax(1)
    return probs.view(2, len(x), -1).mean(0).clamp_min(1e-12).log()
