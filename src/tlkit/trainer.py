"""Deprecated: the Trainer moved to [tlkit.training][] (``tlkit.training.trainer``); this module
goes in the release after next. ``tlkit.Trainer`` is unchanged."""

from __future__ import annotations

import warnings

from .training.trainer import Trainer

__all__ = ["Trainer"]

warnings.warn(
    "tlkit.trainer is deprecated and goes in the release after next: use tlkit.Trainer (or "
    "tlkit.training.Trainer)",
    DeprecationWarning,
    stacklevel=2,
)
