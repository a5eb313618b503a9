"""Deprecated: the trained model's result, save format and loading moved to [tlkit.model][]
(``tlkit.model.result``); this module goes in the release after next. ``tlkit.FinetuneResult``,
``tlkit.Recipe`` and ``tlkit.load_model`` are unchanged."""

from __future__ import annotations

import warnings

from ..model.checks import check_confidence
from ..model.network import (
    StackedBackbones,
    build_head,
    build_network,
    final_linear,
    load_head,
    stack,
)
from ..model.result import FinetuneResult, Recipe, load_model

__all__ = [
    "FinetuneResult",
    "Recipe",
    "StackedBackbones",
    "build_head",
    "build_network",
    "check_confidence",
    "final_linear",
    "load_head",
    "load_model",
    "stack",
]

warnings.warn(
    "tlkit.recipes.result is deprecated and goes in the release after next: import "
    "FinetuneResult, Recipe and load_model from tlkit (or tlkit.model)",
    DeprecationWarning,
    stacklevel=2,
)
