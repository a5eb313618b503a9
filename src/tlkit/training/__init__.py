"""Training: the [Trainer][tlkit.Trainer] loop (``trainer``), the checks and steps it runs on
each batch (``steps``), and checkpoint files with the random state an exact resume needs
(``checkpoint``). The callbacks the loop calls are beside it, in [tlkit.callbacks][]; the record
of a run, [tlkit.History][], is below it (a saved model carries one).

Submodules are imported when first used: the callbacks read checkpoint files without importing
the loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import checkpoint
    from .trainer import Trainer

__all__ = ["Trainer", "checkpoint"]


def __getattr__(name: str) -> Any:
    """``tlkit.training.<name>``, imported on first use."""
    if name == "Trainer":
        return importlib.import_module(".trainer", __name__).Trainer
    if name in ("checkpoint", "steps", "trainer"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
