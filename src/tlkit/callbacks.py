"""Trainer callbacks: small classes with no-op hooks named for the moment they run.

Every hook takes the trainer first and keyword arguments after (``**kwargs`` swallows what a
callback does not need). Callbacks run in ascending ``order`` (stable), so an
:class:`LRScheduler` steps before a :class:`ModelCheckpoint` saves its state.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ._utils import atomic_write_text, check_positive_int
from .freeze import unfreeze

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "Callback",
    "EarlyStopping",
    "GradualUnfreeze",
    "HistoryLogger",
    "LRScheduler",
    "ModelCheckpoint",
    "ProgressBar",
]

Mode = Literal["min", "max", "auto"]


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

    def on_fit_start(self, trainer: Trainer, **kwargs: Any) -> None:
        """Before the first epoch (after a resume has restored state)."""

    def on_epoch_start(self, trainer: Trainer, *, epoch: int, **kwargs: Any) -> None:
        """Before epoch ``epoch`` (0-based) trains."""

    def on_batch_start(self, trainer: Trainer, *, batch: int, **kwargs: Any) -> None:
        """Before training batch ``batch`` of the epoch."""

    def on_batch_end(
        self, trainer: Trainer, *, batch: int, optimizer_stepped: bool, **kwargs: Any
    ) -> None:
        """After training batch ``batch``; ``optimizer_stepped`` is false while accumulating."""

    def on_epoch_end(
        self, trainer: Trainer, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        """After epoch ``epoch`` trained and validated; ``metrics`` is its history record."""

    def on_fit_end(self, trainer: Trainer, **kwargs: Any) -> None:
        """After the last epoch (also after early stopping)."""

    def on_exception(self, trainer: Trainer, *, exception: BaseException, **kwargs: Any) -> None:
        """When ``fit`` is leaving with an exception (after an interrupted checkpoint)."""

    def on_load_checkpoint(self, trainer: Trainer, *, state: dict[str, Any], **kwargs: Any) -> None:
        """On resume, with what :meth:`state_dict` returned; before the optimizer is restored."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints (tensors, numbers, strings, lists and dicts only)."""
        return {}


def _resolve_mode(monitor: str, mode: Mode) -> Literal["min", "max"]:
    if mode not in ("min", "max", "auto"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    if mode != "auto":
        return mode
    return "max" if "acc" in monitor else "min"


class _Monitor:
    """Tracks the best value of a metric in the history records."""

    def __init__(self, monitor: str, mode: Mode, min_delta: float = 0.0) -> None:
        self.monitor = monitor
        self.mode = _resolve_mode(monitor, mode)
        self.min_delta = min_delta
        self.best: float | None = None

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
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self._monitor = _Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0

    def on_epoch_end(
        self, trainer: Trainer, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
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

    def on_load_checkpoint(self, trainer: Trainer, *, state: dict[str, Any], **kwargs: Any) -> None:
        self._monitor.best = state["best"]
        self.wait = state["wait"]


class ModelCheckpoint(Callback):
    """Save ``last.pt`` every epoch and ``best.pt`` when the monitored metric improves.

    Files hold the full training state (see :meth:`Trainer.save_checkpoint`), are written
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
        self._monitor = _Monitor(monitor, mode) if monitor else None
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

    def on_fit_start(self, trainer: Trainer, **kwargs: Any) -> None:
        if self.dirpath is None:
            self.dirpath = trainer.checkpoint_dir

    def on_batch_end(
        self, trainer: Trainer, *, batch: int, optimizer_stepped: bool, **kwargs: Any
    ) -> None:
        every = self.every_n_steps
        if every is not None and optimizer_stepped and trainer.global_step % every == 0:
            trainer.save_checkpoint(self.last_path)

    def on_epoch_end(
        self, trainer: Trainer, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if self._monitor is not None:
            value = self._monitor.value(metrics)
            if self._monitor.improved(value):
                self._monitor.best = value
                self.best_epoch = int(metrics.get("epoch", epoch + 1))
                trainer.save_checkpoint(self.best_path)
        if self.save_last:
            trainer.save_checkpoint(self.last_path)

    def on_fit_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if self.restore_best and self.best_epoch is not None:
            trainer.barrier()
            state = trainer.load_checkpoint(self.best_path)
            trainer.model.load_state_dict(state["model"])
            trainer.log(
                f"restored the best weights (epoch {self.best_epoch}) from {self.best_path}"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self._monitor.best if self._monitor else None,
            "best_epoch": self.best_epoch,
        }

    def on_load_checkpoint(self, trainer: Trainer, *, state: dict[str, Any], **kwargs: Any) -> None:
        if self._monitor is not None:
            self._monitor.best = state["best"]
        self.best_epoch = state["best_epoch"]


class LRScheduler(Callback):
    """Step a ``torch.optim.lr_scheduler`` scheduler every optimizer step or every epoch.

    Args:
        scheduler: Any scheduler built on the trainer's optimizer.
        interval: ``"step"`` (after each optimizer step, e.g. OneCycleLR) or ``"epoch"``.
        monitor: For ``ReduceLROnPlateau``: the history key passed to ``step``.

    Examples:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> cb = LRScheduler(torch.optim.lr_scheduler.StepLR(opt, step_size=1), interval="epoch")
        >>> sorted(cb.state_dict())
        ['scheduler']
    """

    order = -10

    def __init__(
        self,
        scheduler: Any,
        *,
        interval: Literal["step", "epoch"] = "epoch",
        monitor: str | None = None,
    ) -> None:
        if interval not in ("step", "epoch"):
            raise ValueError(f"interval must be 'step' or 'epoch', got {interval!r}")
        plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if plateau and monitor is None:
            raise ValueError("ReduceLROnPlateau needs monitor=, e.g. monitor='val_loss'")
        self.scheduler = scheduler
        self.interval = interval
        self.monitor = monitor

    def on_batch_end(
        self, trainer: Trainer, *, batch: int, optimizer_stepped: bool, **kwargs: Any
    ) -> None:
        if self.interval == "step" and optimizer_stepped and trainer.last_step_taken:
            self.scheduler.step()

    def on_epoch_end(
        self, trainer: Trainer, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if self.interval != "epoch":
            return
        if self.monitor is not None:
            self.scheduler.step(metrics[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict()}

    def on_load_checkpoint(self, trainer: Trainer, *, state: dict[str, Any], **kwargs: Any) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


class ProgressBar(Callback):
    """A tqdm bar per epoch showing loss, accuracy and images/s (rank 0 only).

    Args:
        refresh_every: Batches between metric refreshes (each refresh is one host sync).
        enable: ``None`` shows the bar only when stderr is a terminal.

    Examples:
        >>> ProgressBar(enable=False).enabled
        False
    """

    order = 50

    def __init__(self, *, refresh_every: int = 20, enable: bool | None = None) -> None:
        self.refresh_every = max(1, refresh_every)
        self.enabled = sys.stderr.isatty() if enable is None else enable
        self._bar: Any = None

    def on_epoch_start(self, trainer: Trainer, *, epoch: int, **kwargs: Any) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=trainer.batches_per_epoch,
            desc=f"epoch {epoch + 1}/{trainer.max_epochs}",
            leave=True,
        )

    def on_batch_end(
        self, trainer: Trainer, *, batch: int, optimizer_stepped: bool, **kwargs: Any
    ) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        if (batch + 1) % self.refresh_every == 0:
            running = trainer.running_metrics()
            self._bar.set_postfix(
                loss=f"{running.get('loss', float('nan')):.4f}",
                acc=f"{running.get('accuracy', float('nan')):.3f}",
                img_s=f"{running.get('images_per_sec', 0.0):.0f}",
            )

    def on_epoch_end(
        self, trainer: Trainer, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
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

    def on_fit_end(self, trainer: Trainer, **kwargs: Any) -> None:
        self._close()

    def on_exception(self, trainer: Trainer, *, exception: BaseException, **kwargs: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class HistoryLogger(Callback):
    """Write the history to a CSV or JSON file after every epoch (rank 0, atomically).

    Args:
        path: ``*.csv`` or ``*.json``.

    Examples:
        >>> HistoryLogger("runs/history.csv").path.suffix
        '.csv'
    """

    order = 90

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.suffix not in (".csv", ".json"):
            raise ValueError(f"history file must end in .csv or .json, got {str(self.path)!r}")

    def on_epoch_end(
        self, trainer: Trainer, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if not trainer.is_global_zero:
            return
        records = trainer.history.records
        if self.path.suffix == ".json":
            atomic_write_text(json.dumps(records, indent=2), self.path)
            return
        rows = [_flatten(r) for r in records]
        fields = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(buffer.getvalue(), self.path)


def _flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                out[f"{key}_{i}"] = v
        else:
            out[key] = value
    return out


class GradualUnfreeze(Callback):
    """Unfreeze named stages at given epochs and train them in new parameter groups.

    At the start of each scheduled epoch the stage is unfrozen with :func:`tlkit.unfreeze`
    (which also releases its BatchNorm layers) and its parameters that the optimizer does not
    hold yet (matched by identity) are added with ``optimizer.add_param_group``. A scheduler
    driven by :class:`LRScheduler` learns the new group's base learning rate. On resume the
    stages unfrozen before the checkpoint are unfrozen again, before the optimizer state loads.

    Args:
        schedule: ``{epoch: stage or [stages]}``, e.g. ``{1: "layer4", 3: ["layer3"]}``.
        lr: Learning rate of each new group; default ``lr_scale`` times the first group's.
        lr_scale: Used when ``lr`` is ``None``.

    Examples:
        >>> GradualUnfreeze({2: "layer4", 4: ["layer3", "layer2"]}).schedule
        {2: ('layer4',), 4: ('layer3', 'layer2')}
    """

    def __init__(
        self,
        schedule: Mapping[int, str | Sequence[str]],
        *,
        lr: float | None = None,
        lr_scale: float = 0.1,
    ) -> None:
        self.schedule = {
            int(epoch): (names,) if isinstance(names, str) else tuple(names)
            for epoch, names in sorted(schedule.items())
        }
        if any(epoch < 0 for epoch in self.schedule):
            raise ValueError(f"schedule epochs must be >= 0, got {sorted(self.schedule)}")
        self.lr = lr
        self.lr_scale = lr_scale
        self.applied: list[int] = []

    def on_epoch_start(self, trainer: Trainer, *, epoch: int, **kwargs: Any) -> None:
        for when, names in self.schedule.items():
            if when <= epoch and when not in self.applied:
                self._unfreeze(trainer, names)
                self.applied.append(when)

    def _unfreeze(self, trainer: Trainer, names: Sequence[str]) -> None:
        optimizer = trainer.optimizer
        unfreeze(trainer.model, list(names))
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for p in _params_of(trainer.model, names) if id(p) not in held]
        if not new:
            trainer.log(f"unfroze {', '.join(names)} (already in the optimizer)")
            return
        first = optimizer.param_groups[0]
        lr = (
            self.lr if self.lr is not None else first.get("initial_lr", first["lr"]) * self.lr_scale
        )
        optimizer.add_param_group({"params": new, "lr": lr, "initial_lr": lr})
        for callback in trainer.callbacks:
            if isinstance(callback, LRScheduler):
                _extend_scheduler(callback.scheduler, lr)
        trainer.refresh_module()  # DDP must learn about the new trainable parameters
        trainer.log(
            f"unfroze {', '.join(names)}: {len(new)} tensors, "
            f"{sum(p.numel() for p in new):,} parameters in a new group at lr {lr:.3g}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"applied": list(self.applied)}

    def on_load_checkpoint(self, trainer: Trainer, *, state: dict[str, Any], **kwargs: Any) -> None:
        self.applied = []
        for when in state["applied"]:
            self._unfreeze(trainer, self.schedule[when])
            self.applied.append(when)


def _params_of(model: nn.Module, names: Sequence[str]) -> list[nn.Parameter]:
    from .freeze import _resolve_names

    wanted = set(_resolve_names(model, names))
    return [p for n, p in model.named_parameters() if n in wanted]


def _extend_scheduler(scheduler: Any, lr: float) -> None:
    """Let a scheduler built before ``add_param_group`` drive the new group too.

    Lists already as long as the optimizer's groups (a scheduler state loaded on resume) are
    left alone.
    """
    groups = len(scheduler.optimizer.param_groups)
    for attr, value in (("base_lrs", lr), ("_last_lr", lr)):
        values = getattr(scheduler, attr, None)
        if isinstance(values, list) and len(values) < groups:
            values.append(value)
    for attr in ("lr_lambdas", "min_lrs"):  # LambdaLR/MultiplicativeLR, ReduceLROnPlateau
        values = getattr(scheduler, attr, None)
        if isinstance(values, list) and values and len(values) < groups:
            values.append(values[0])
