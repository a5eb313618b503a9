"""Saving the model during training: [tlkit.ModelCheckpoint][]."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._utils import check_positive_int, check_writable_dir
from ..training.checkpoint import read_checkpoint
from .base import Callback, Mode, Monitor, TrainerLike

__all__ = ["ModelCheckpoint"]


class ModelCheckpoint(Callback):
    """Save ``last.pt`` every epoch and ``best.pt`` when the monitored metric improves.

    Files hold the full training state (see [save_checkpoint][tlkit.Trainer.save_checkpoint]), are
    written
    atomically (temporary file, then rename), only by rank 0, and load with
    ``torch.load(path, weights_only=True)``. Runs after every other callback so that their
    state is current in the file.

    Args:
        dirpath: Folder for the files; defaults to the trainer's ``checkpoint_dir``.
        monitor: History key deciding "best"; ``None`` saves only ``last.pt``.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
        save_last: Write ``last.pt`` at the end of every epoch.
        every_n_steps: Also write ``last.pt`` every this many optimizer steps, inside epochs:
            a run killed mid-epoch then resumes from at most this many steps back, exactly where
            that checkpoint stopped (for long epochs; each write costs a full save).
        restore_best: Load the best weights into the model when ``fit`` ends.

    Examples:
        >>> ModelCheckpoint("runs/x", monitor="val_accuracy").state_dict()
        {'best': None, 'best_epoch': None}
    """

    order = 100

    def __init__(
        self,
        dirpath: str | Path | None = None,
        *,
        monitor: str | None = "val_loss",
        mode: Mode = "auto",
        save_last: bool = True,
        every_n_steps: int | None = None,
        restore_best: bool = False,
    ) -> None:
        if every_n_steps is not None:
            check_positive_int("every_n_steps", every_n_steps)
        self.every_n_steps = every_n_steps
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self._monitor = Monitor(monitor, mode) if monitor else None
        self.save_last = save_last
        self.restore_best = restore_best
        self.best_epoch: int | None = None
        if restore_best and monitor is None:
            raise ValueError("restore_best=True needs a monitored metric")

    @property
    def best_path(self) -> Path:
        assert self.dirpath is not None
        return self.dirpath / "best.pt"

    @property
    def last_path(self) -> Path:
        assert self.dirpath is not None
        return self.dirpath / "last.pt"

    def on_fit_check(self, trainer: TrainerLike, *, metrics: Sequence[str], **kwargs: Any) -> None:
        if self._monitor is not None:
            self._monitor.check(metrics, "ModelCheckpoint")
        if self.dirpath is None:
            self.dirpath = trainer.checkpoint_dir
        if trainer.is_global_zero:
            check_writable_dir(self.dirpath, "ModelCheckpoint folder")

    def on_batch_end(
        self, trainer: TrainerLike, *, batch: int, optimizer_stepped: bool, **kwargs: Any
    ) -> None:
        every = self.every_n_steps
        if every is not None and optimizer_stepped and trainer.global_step % every == 0:
            trainer.save_checkpoint(self.last_path)

    def on_epoch_end(
        self, trainer: TrainerLike, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if self._monitor is not None:
            value = self._monitor.value(metrics)
            if self._monitor.improved(value):
                self._monitor.best = value
                self.best_epoch = int(metrics.get("epoch", epoch + 1))
                trainer.save_checkpoint(self.best_path)
        if self.save_last:
            trainer.save_checkpoint(self.last_path)

    def on_fit_end(self, trainer: TrainerLike, **kwargs: Any) -> None:
        if self.restore_best and self.best_epoch is not None:
            trainer.barrier()
            state = read_checkpoint(self.best_path)
            trainer.model.load_state_dict(state["model"])
            trainer.log(
                f"restored the best weights (epoch {self.best_epoch}) from {self.best_path}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self._monitor.best if self._monitor else None,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._monitor is not None:
            self._monitor.best = state["best"]
        self.best_epoch = state["best_epoch"]
