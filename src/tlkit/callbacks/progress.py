"""A progress bar callback: loss, accuracy and images/s per epoch, through tqdm."""

from __future__ import annotations

import sys
import time
from typing import Any

from .base import Callback, TrainerLike

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """A tqdm bar per epoch showing loss, accuracy and images/s (rank 0 only).

    Args:
        refresh_every: Batches between metric refreshes (each refresh is one host sync).
        enable: ``None`` shows the bar only when stderr is a terminal.
        deadline: A ``time.perf_counter()`` time; the bar then shows the time left until it.

    Examples:
        >>> ProgressBar(enable=False).enabled
        False
    """

    order = 50

    def __init__(
        self,
        *,
        refresh_every: int = 20,
        enable: bool | None = None,
        deadline: float | None = None,
    ) -> None:
        self.refresh_every = max(1, refresh_every)
        self.enabled = sys.stderr.isatty() if enable is None else enable
        self.deadline = deadline
        self._bar: Any = None

    def on_epoch_start(self, trainer: TrainerLike, *, epoch: int, **kwargs: Any) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=trainer.batches_per_epoch,
            desc=f"epoch {epoch + 1}/{trainer.max_epochs}",
            leave=True,
        )

    def on_batch_end(
        self, trainer: TrainerLike, *, batch: int, optimizer_stepped: bool, **kwargs: Any
    ) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if (batch + 1) % self.refresh_every == 0:
            running = trainer.running_metrics()
            shown = {
                "loss": f"{running.get('loss', float('nan')):.4f}",
                "acc": f"{running.get('accuracy', float('nan')):.3f}",
                "img_s": f"{running.get('images_per_sec', 0.0):.0f}",
            }
            if self.deadline is not None:
                shown["left"] = f"{max(0.0, self.deadline - time.perf_counter()):.0f}s"
            self._bar.set_postfix(shown)

    def on_epoch_end(
        self, trainer: TrainerLike, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if self._bar is None:
            return
        shown = {"loss": f"{metrics['train_loss']:.4f}", "acc": f"{metrics['train_accuracy']:.3f}"}
        if "val_loss" in metrics:
            shown.update(
                val_loss=f"{metrics['val_loss']:.4f}", val_acc=f"{metrics['val_accuracy']:.3f}"
            )
        shown["img_s"] = f"{metrics['images_per_sec']:.0f}"
        self._bar.set_postfix(shown)
        self._bar.close()
        self._bar = None

    def on_fit_end(self, trainer: TrainerLike, **kwargs: Any) -> None:
        self._close()

    def on_exception(
        self, trainer: TrainerLike, *, exception: BaseException, **kwargs: Any
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
