"""Deprecated: checkpoint files and random state moved to [tlkit.training.checkpoint][]; this
module goes in the release after next."""

from __future__ import annotations

import warnings
from typing import Any

from .training import checkpoint as moved

__all__ = list(moved.__all__)


def __getattr__(name: str) -> Any:
    """Each name of ``tlkit.training.checkpoint``, read from there."""
    return getattr(moved, name)


warnings.warn(
    "tlkit.checkpoint is deprecated and goes in the release after next: import from "
    "tlkit.training.checkpoint",
    DeprecationWarning,
    stacklevel=2,
)
