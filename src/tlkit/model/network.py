"""The network of a trained classifier: one backbone with the recipe's head on it, or several
side by side under one head, read at intermediate layers too; built the same way by
[tlkit.finetune][] and [tlkit.load_model][] (one builder, so saved models keep loading)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import heads
from ..backbones import BackboneInfo, backbone
from ..taps import LayerTaps

__all__ = [
    "HEAD_DROPOUT",
    "StackedBackbones",
    "build_head",
    "build_network",
    "final_linear",
    "load_head",
    "stack",
]


HEAD_DROPOUT = 0.1
"""Dropout before the linear layer of every head tlkit builds (part of the saved format: a model
loads only into the head it was trained with)."""


def build_head(features: int, classes: int) -> nn.Module:
    """The classifier [tlkit.finetune][] puts on a backbone, and [tlkit.load_model][] rebuilds
    to load its weights (one builder, so saved models keep loading)."""
    return heads.linear(features, classes, dropout=HEAD_DROPOUT)


class StackedBackbones(nn.Module):
    """Several pretrained bodies side by side, their pooled features concatenated into one head.

    The input is a normalised ``(N, 3, S, S)`` batch; each body sees it resized to its own
    size (``sizes``), as when its features were computed for the probe.

    Examples:
        >>> bodies = [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) for _ in range(2)]
        >>> model = StackedBackbones(bodies, [8, 4], nn.Linear(6, 2))
        >>> x = torch.zeros(1, 3, 8, 8)
        >>> [f.shape[1] for f in model.features(x)], model(x).shape
        ([3, 3], torch.Size([1, 2]))
    """

    def __init__(self, bodies: Sequence[nn.Module], sizes: Sequence[int], head: nn.Module) -> None:
        super().__init__()
        if len(bodies) != len(sizes) or not bodies:
            raise ValueError(f"one size per body, got {len(bodies)} bodies, sizes {list(sizes)}")
        self.bodies = nn.ModuleList(bodies)
        self.sizes = [int(s) for s in sizes]
        self.head = head

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each body's pooled features ``(N, D_i)``."""
        out = []
        for body, size in zip(self.bodies, self.sizes, strict=True):
            resized = x
            if x.shape[-1] != size or x.shape[-2] != size:
                resized = nn.functional.interpolate(
                    x, size=[size, size], mode="bilinear", align_corners=False, antialias=True
                )
            out.append(body(resized).flatten(1))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat(self.features(x), 1))


def build_network(
    names: Sequence[str],
    sizes: Sequence[int],
    classes: int,
    *,
    weights: str | Path | None = None,
    key_map: Any = "strict",
    taps: Sequence[Sequence[str]] | None = None,
) -> tuple[nn.Module, BackboneInfo]:
    """The network of a result: one backbone with [build_head][tlkit.model.network.build_head]
    on it, or several stacked, or backbones read at intermediate layers too (``taps``: the
    layers of each, [tlkit.LayerTaps][]), in a
    [StackedBackbones][tlkit.model.network.StackedBackbones]. [tlkit.finetune][] and
    [tlkit.load_model][] both build it here."""
    models, infos = [], []
    for name in names:
        model, info = backbone(name, weights, key_map=key_map)
        heads.replace_head(model, lambda n: build_head(n, classes))
        models.append(model)
        infos.append(info)
    if len(models) == 1 and not any(taps or []):
        return models[0], infos[0]
    return stack(models, sizes, classes, taps), infos[0]


def stack(
    models: Sequence[nn.Module],
    sizes: Sequence[int],
    classes: int,
    taps: Sequence[Sequence[str]] | None = None,
) -> StackedBackbones:
    """Networks built by [build_network][tlkit.model.network.build_network] for one backbone
    each, their heads removed, side by side under one new head; each read at its ``taps``
    layers too when given (one list per network, empty for none)."""
    taps = list(taps) if taps is not None else [[] for _ in models]
    if len(taps) != len(models):
        raise ValueError(f"one list of layers per network, got {len(taps)} for {len(models)}")
    bodies: list[nn.Module] = []
    width = 0
    for model, layers, size in zip(models, taps, sizes, strict=True):
        final = heads.find_head(model)[1]
        heads.replace_head(model, lambda n: nn.Identity())
        if layers:
            body = LayerTaps(model, layers)
            width += body.out_features(size)
            bodies.append(body)
        else:
            width += final
            bodies.append(model)
    return StackedBackbones(bodies, sizes, build_head(width, classes))


def load_head(model: nn.Module, layer: nn.Linear) -> None:
    """Copy ``layer``'s weights (a fitted probe's, [tlkit.LinearProbe.to_linear][]) into the
    last ``nn.Linear`` of ``model``'s head."""
    linear = final_linear(model)
    with torch.no_grad():
        linear.weight.copy_(layer.weight)
        linear.bias.copy_(layer.bias)


def final_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of a network's head: where a fitted probe's weights go."""
    if isinstance(model, StackedBackbones):
        head = model.head
    else:
        head = model.get_submodule(heads.find_head(model)[0])
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"the head {type(head).__name__} has no nn.Linear")
    return layers[-1]
