"""The callback contract: [tlkit.Callback][] with no-op hooks, and
[tlkit.callbacks.TrainerLike][], what a callback may use of the loop. Imports nothing of the
Trainer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from ..history import History

__all__ = ["Callback", "Mode", "Monitor", "TrainerLike", "check_number", "resolve_mode"]


Mode = Literal["min", "max", "auto"]


@runtime_checkable
class TrainerLike(Protocol):
    """What a callback may use of the [tlkit.Trainer][] that calls it (and all it may use).

    Type a callback's ``trainer`` argument with it; a [tlkit.Trainer][] satisfies it.

    Examples:
        >>> import torch
        >>> from tlkit import Trainer
        >>> from tlkit.callbacks import Callback, TrainerLike
        >>> class LogLoss(Callback):
        ...     def on_epoch_end(self, trainer: TrainerLike, *, epoch, metrics, **kwargs):
        ...         trainer.log(f"epoch {epoch}: {metrics['train_loss']:.3f}")
        >>> isinstance(Trainer(torch.nn.Linear(2, 2)), TrainerLike)
        True
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    global_step: int
    epochs_done: int
    max_epochs: int
    batches_per_epoch: int | None
    should_stop: bool
    last_step_taken: bool
    checkpoint_dir: Path

    @property
    def is_global_zero(self) -> bool: ...
    def running_metrics(self) -> dict[str, float]: ...
    def log(self, message: str) -> None: ...
    def barrier(self) -> None: ...
    def refresh_module(self) -> None: ...
    def add_param_group(self, group: dict[str, Any]) -> None: ...
    def save_checkpoint(self, path: str | Path) -> None: ...


class Callback:
    """Base class: override the hooks you need; the rest do nothing.

    Attributes:
        order: Callbacks run in ascending order (default 0).

    Examples:
        >>> class PrintEpoch(Callback):
        ...     def on_epoch_end(self, trainer, *, epoch, metrics, **kwargs):
        ...         print(epoch, round(metrics["train_loss"], 2))
    """

    order: int = 0

    def on_fit_check(self, trainer: TrainerLike, *, metrics: Sequence[str], **kwargs: Any) -> None:
        """At the start of ``fit``, before any work: raise for settings that cannot work.

        ``metrics`` are the keys every epoch's record will have (``val_*`` only with a
        validation loader), so a monitored metric can be checked here, not after an epoch.
        """

    def on_fit_start(self, trainer: TrainerLike, **kwargs: Any) -> None:
        """Before the first epoch (after a resume has restored state)."""

    def on_epoch_start(self, trainer: TrainerLike, *, epoch: int, **kwargs: Any) -> None:
        """Before epoch ``epoch`` (0-based) trains."""

    def on_batch_start(self, trainer: TrainerLike, *, batch: int, **kwargs: Any) -> None:
        """Before training batch ``batch`` of the epoch."""

    def on_batch_end(
        self, trainer: TrainerLike, *, batch: int, optimizer_stepped: bool, **kwargs: Any
    ) -> None:
        """After training batch ``batch``; ``optimizer_stepped`` is false while accumulating."""

    def on_epoch_end(
        self, trainer: TrainerLike, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        """After epoch ``epoch`` trained and validated; ``metrics`` is its history record."""

    def on_fit_end(self, trainer: TrainerLike, **kwargs: Any) -> None:
        """After the last epoch (also after early stopping)."""

    def on_exception(
        self, trainer: TrainerLike, *, exception: BaseException, **kwargs: Any
    ) -> None:
        """When ``fit`` is leaving with an exception (after an interrupted checkpoint)."""

    def on_param_group_added(
        self, trainer: TrainerLike, *, group: dict[str, Any], **kwargs: Any
    ) -> None:
        """After [tlkit.Trainer.add_param_group][] added ``group`` to the optimizer."""

    def on_load_checkpoint(self, trainer: TrainerLike, **kwargs: Any) -> None:
        """On resume, after every callback's ``load_state_dict``, before the optimizer's."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints (tensors, numbers, strings, lists and dicts only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what [tlkit.Callback.state_dict][] returned."""


def resolve_mode(monitor: str, mode: Mode) -> Literal["min", "max"]:
    if mode not in ("min", "max", "auto"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


class Monitor:
    """Tracks the best value of a metric in the history records."""

    def __init__(self, monitor: str, mode: Mode, min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.min_delta = min_delta
        self.best: float | None = None

    def check(self, keys: Sequence[str], who: str) -> None:
        if self.monitor not in keys:
            raise KeyError(
                f"{who}: monitored metric {self.monitor!r} is not among what the epochs will "
                "report; available: "
                f"{', '.join(k for k in keys if k != 'lr')}"
                + (" (val_* needs a val_loader)" if self.monitor.startswith("val_") else "")
            )

    def value(self, metrics: Mapping[str, Any]) -> float:
        if self.monitor not in metrics:
            available = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
            raise KeyError(
                f"monitored metric {self.monitor!r} is not in the epoch's metrics; "
                f"available: {', '.join(available)} (val_* needs a val_loader)"
            )
        return float(metrics[self.monitor])

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


def check_number(name: str, value: Any, *, low: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
