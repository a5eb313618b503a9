"""Stopping early: when a metric stops improving ([tlkit.EarlyStopping][]) or before a deadline
([tlkit.callbacks.Deadline][])."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .._utils import check_positive_int
from .base import Callback, Mode, Monitor, TrainerLike, check_number

__all__ = ["Deadline", "EarlyStopping"]


class EarlyStopping(Callback):
    """Stop when a monitored metric has not improved for ``patience`` epochs.

    Args:
        monitor: A history key such as ``"val_loss"`` or ``"val_accuracy"``.
        patience: Epochs without improvement before stopping.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (``max`` for accuracies, else ``min``).
        min_delta: Smallest change that counts as an improvement.

    Examples:
        >>> EarlyStopping(monitor="val_accuracy", patience=2).state_dict()
        {'best': None, 'wait': 0}
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        patience: int = 3,
        mode: Mode = "auto",
        min_delta: float = 0.0,
    ) -> None:
        check_positive_int("patience", patience)
        check_number("min_delta", min_delta, low=0.0)
        self._monitor = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0

    def on_fit_check(self, trainer: TrainerLike, *, metrics: Sequence[str], **kwargs: Any) -> None:
        self._monitor.check(metrics, "EarlyStopping")

    def on_epoch_end(
        self, trainer: TrainerLike, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        value = self._monitor.value(metrics)
        if self._monitor.improved(value):
            self._monitor.best = value
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.should_stop = True
                trainer.log(
                    f"early stopping at epoch {epoch}: {self._monitor.monitor} has not improved "
                    f"for {self.patience} epochs (best {self._monitor.best:.4g})"
                )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self._monitor.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._monitor.best = state["best"]
        self.wait = state["wait"]


class Deadline(Callback):
    """Stop after the epoch that leaves too little time for another one.

    Args:
        deadline: A ``time.perf_counter()`` time, or ``None`` for no limit.
        clock: The clock ``deadline`` is on (injectable for tests).

    Examples:
        >>> import time
        >>> from tlkit.callbacks import Deadline
        >>> stop = Deadline(time.perf_counter() + 600)  # no new epoch that would end past 10 min
        >>> Deadline(None).deadline is None  # no limit
        True
    """

    def __init__(self, deadline: float | None, *, clock: Any = time.perf_counter) -> None:
        self.deadline, self.clock = deadline, clock

    def on_epoch_end(
        self, trainer: TrainerLike, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if self.deadline is not None and self.clock() + metrics["seconds"] > self.deadline:
            trainer.should_stop = True
