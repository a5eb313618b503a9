"""The candidate backbones of [tlkit.finetune][]: each built with its weights and a new head,
at its size, its feature pass timed, and the intermediate layers its probe reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .. import heads
from ..taps import LayerTaps, default_layers
from .compute import Compute
from .measure import time_batches
from .result import build_network
from .settings import AUTO
from .views import Candidate

__all__ = ["load_candidates", "tap_layers"]


def load_candidates(
    names: list[str],
    weights: Any,
    key_map: Any,
    image_size: int | None,
    classes: int,
    n_images: int,
    *,
    rate: Callable[[nn.Module, int], float] | None = None,
    compute: Compute | None = None,
) -> list[Candidate]:
    """Each backbone with its ImageNet weights and a new head, at its pretraining size (or
    ``image_size``), and the seconds its probe features would take on ``compute``'s device
    (``rate`` measures images per second; default the frozen body timed on random input)."""
    rate = rate or (lambda m, s: time_batches(m, s, 16, train=False, channels_last=True, timed=1,
                                              compute=compute))  # fmt: skip
    candidates = []
    for name in names:
        model, info = build_network([name], [0], classes, weights=weights, key_map=key_map)
        size = image_size or info.input_size
        per_second = rate(model, size)
        candidate = Candidate(name, model, size, tuple(info.mean), tuple(info.std),
                              channels_last=True, info=info,
                              seconds=AUTO.probe_views * n_images / per_second)  # fmt: skip
        if AUTO.probe_taps:
            candidate.taps, candidate.tap_dim = tap_layers(model, size)
        candidates.append(candidate)
    return candidates


def tap_layers(model: nn.Module, size: int) -> tuple[list[str], int]:
    """The intermediate layers the probe reads too ([tlkit.taps.default_layers][]) and the
    width they add; none where their outputs cannot be pooled at ``size``."""
    with heads.headless(model):
        layers = default_layers(model)
        if not layers:
            return [], 0
        try:
            width = LayerTaps(model, layers).out_features(size)
        except (RuntimeError, ValueError):  # an output LayerTaps cannot pool: no taps
            return [], 0
    return layers, width - heads.find_head(model)[1]
