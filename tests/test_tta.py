"""Test-time augmentation: the mean of an image's and its mirror image's probabilities."""

from __future__ import annotations

import torch
from torch import nn

from tlkit.tta import flip_average


def test_flip_average_is_the_mean_of_both_views_probabilities() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 5, 4))
    x = torch.randn(3, 3, 2, 5)
    expected = (net(x).softmax(1) + net(x.flip(-1)).softmax(1)) / 2
    assert torch.allclose(flip_average(net, x, log_probs=False).exp(), expected, atol=1e-6)
    as_log_probs = nn.Sequential(net, nn.LogSoftmax(1))
    assert torch.allclose(flip_average(as_log_probs, x, log_probs=True).exp(), expected, atol=1e-6)
    symmetric = x + x.flip(-1)  # its own mirror image: the average changes nothing
    assert torch.allclose(flip_average(net, symmetric, log_probs=False).exp(),
                          net(symmetric).softmax(1), atol=1e-6)  # fmt: skip
