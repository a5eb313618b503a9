"""Trainer callbacks: small classes with no-op hooks named for the moment they run.

Every hook takes the trainer first and keyword arguments after (``**kwargs`` swallows what a
callback does not need). Callbacks run in ascending ``order`` (stable), so an
[LRScheduler][tlkit.LRScheduler] steps before a [ModelCheckpoint][tlkit.ModelCheckpoint] saves its
state.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from ._utils import atomic_write_text, check_positive_int, check_writable_dir, json_safe
from .checkpoint import read_checkpoint
from .freeze import resolve_names, unfreeze

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "EMA",
    "Callback",
    "EarlyStopping",
    "GradualUnfreeze",
    "HistoryLogger",
    "LRScheduler",
    "ModelCheckpoint",
]


def __getattr__(name: str) -> Any:
    if name == "ProgressBar":  # lives in tlkit.progress, which imports Callback from here
        from .progress import ProgressBar

        return ProgressBar
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

    def on_fit_check(self, trainer: Trainer, *, metrics: Sequence[str], **kwargs: Any) -> None:
        """At the start of ``fit``, before any work: raise for settings that cannot work.

        ``metrics`` are the keys every epoch's record will have (``val_*`` only with a
        validation loader), so a monitored metric can be checked here, not after an epoch.
        """

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

    def on_param_group_added(
        self, trainer: Trainer, *, group: dict[str, Any], **kwargs: Any
    ) -> None:
        """After [tlkit.Trainer.add_param_group][] added ``group`` to the optimizer."""

    def on_load_checkpoint(self, trainer: Trainer, **kwargs: Any) -> None:
        """On resume, after every callback's ``load_state_dict``, before the optimizer's."""

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints (tensors, numbers, strings, lists and dicts only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what [tlkit.Callback.state_dict][] returned."""


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
        _check_number("min_delta", min_delta, low=0.0)
        self._monitor = _Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.wait = 0

    def on_fit_check(self, trainer: Trainer, *, metrics: Sequence[str], **kwargs: Any) -> None:
        self._monitor.check(metrics, "EarlyStopping")

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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._monitor.best = state["best"]
        self.wait = state["wait"]


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

    def on_fit_check(self, trainer: Trainer, *, metrics: Sequence[str], **kwargs: Any) -> None:
        if self._monitor is not None:
            self._monitor.check(metrics, "ModelCheckpoint")
        if self.dirpath is None:
            self.dirpath = trainer.checkpoint_dir
        if trainer.is_global_zero:
            check_writable_dir(self.dirpath, "ModelCheckpoint folder")

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
        if not callable(getattr(scheduler, "step", None)):
            raise TypeError(
                f"scheduler must be a torch.optim.lr_scheduler scheduler, got {scheduler!r}"
            )
        self.scheduler = scheduler
        self.interval = interval
        self.monitor = monitor

    def on_fit_check(self, trainer: Trainer, *, metrics: Sequence[str], **kwargs: Any) -> None:
        if getattr(self.scheduler, "optimizer", trainer.optimizer) is not trainer.optimizer:
            raise ValueError(
                "the LRScheduler's scheduler was built on another optimizer than the trainer's; "
                "build it on trainer.optimizer, or it changes learning rates nobody uses"
            )
        if self.monitor is not None:
            _Monitor(self.monitor, "min").check(metrics, "LRScheduler")

    def on_param_group_added(
        self, trainer: Trainer, *, group: dict[str, Any], **kwargs: Any
    ) -> None:
        """Let the scheduler, built before ``add_param_group``, drive the new group too."""
        scheduler, lr = self.scheduler, group["lr"]
        groups = len(scheduler.optimizer.param_groups)
        for attr, value in (("base_lrs", group.get("initial_lr", lr)), ("_last_lr", lr)):
            values = getattr(scheduler, attr, None)
            if isinstance(values, list) and len(values) < groups:
                values.append(value)
        for attr in ("lr_lambdas", "min_lrs"):  # LambdaLR/MultiplicativeLR, ReduceLROnPlateau
            values = getattr(scheduler, attr, None)
            if isinstance(values, list) and values and len(values) < groups:
                values.append(values[0])

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

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])


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

    def on_fit_check(self, trainer: Trainer, *, metrics: Sequence[str], **kwargs: Any) -> None:
        if self.path.is_dir():
            raise IsADirectoryError(f"HistoryLogger path {str(self.path)!r} is a folder")
        if trainer.is_global_zero:
            check_writable_dir(self.path.parent, "HistoryLogger folder")

    def on_epoch_end(
        self, trainer: Trainer, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if not trainer.is_global_zero:
            return
        records = trainer.history.records
        if self.path.suffix == ".json":
            atomic_write_text(json.dumps(json_safe(records), indent=2, allow_nan=False), self.path)
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

    At the start of each scheduled epoch the stage is unfrozen with [tlkit.unfreeze][tlkit.unfreeze]
    (which also releases its BatchNorm layers) and its parameters that the optimizer does not
    hold yet (matched by identity) are added with ``optimizer.add_param_group``. A scheduler
    driven by [LRScheduler][tlkit.LRScheduler] learns the new group's base learning rate. On
    resume the
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
        if not isinstance(schedule, Mapping) or not schedule:
            raise ValueError(
                f"schedule must be a non-empty {{epoch: stage or [stages]}} dict, got {schedule!r}"
            )
        self.schedule: dict[int, tuple[str, ...]] = {}
        for epoch, names in sorted(schedule.items()):
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(f"schedule epochs must be integers >= 0, got {epoch!r}")
            stages = (names,) if isinstance(names, str) else tuple(names)
            if not stages or not all(isinstance(n, str) and n for n in stages):
                raise ValueError(f"schedule[{epoch}] must name layers, got {names!r}")
            self.schedule[epoch] = stages
        if lr is not None:
            _check_number("lr", lr, low=0.0, strict=True)
        _check_number("lr_scale", lr_scale, low=0.0, strict=True)
        self.lr = lr
        self.lr_scale = lr_scale
        self.applied: list[int] = []

    def on_fit_check(self, trainer: Trainer, *, metrics: Sequence[str], **kwargs: Any) -> None:
        for stages in self.schedule.values():
            resolve_names(trainer.model, stages)  # a typo raises now, not epochs later

    def on_epoch_start(self, trainer: Trainer, *, epoch: int, **kwargs: Any) -> None:
        for when, names in self.schedule.items():
            if when <= epoch and when not in self.applied:
                self._unfreeze(trainer, names)
                self.applied.append(when)

    def _unfreeze(self, trainer: Trainer, names: Sequence[str]) -> None:
        optimizer = trainer.optimizer
        unfreeze(trainer.model, list(names))
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        wanted = set(resolve_names(trainer.model, names))
        new = [p for n, p in trainer.model.named_parameters() if n in wanted and id(p) not in held]
        if not new:
            trainer.refresh_module()  # DDP must learn that held parameters now train
            trainer.log(f"unfroze {', '.join(names)} (already in the optimizer)")
            return
        first = optimizer.param_groups[0]
        lr = (
            self.lr if self.lr is not None else first.get("initial_lr", first["lr"]) * self.lr_scale
        )
        trainer.add_param_group({"params": new, "lr": lr, "initial_lr": lr})
        trainer.log(
            f"unfroze {', '.join(names)}: {len(new)} tensors, "
            f"{sum(p.numel() for p in new):,} parameters in a new group at lr {lr:.3g}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"applied": list(self.applied)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = [int(when) for when in state["applied"]]
        unknown = [w for w in self._restored if w not in self.schedule]
        if unknown:
            raise ValueError(
                f"the checkpoint's GradualUnfreeze applied epochs {unknown}, which this schedule "
                f"({sorted(self.schedule)}) does not have; build the same schedule"
            )

    def on_load_checkpoint(self, trainer: Trainer, **kwargs: Any) -> None:
        self.applied = []
        for when in getattr(self, "_restored", []):
            self._unfreeze(trainer, self.schedule[when])
            self.applied.append(when)


def _check_number(name: str, value: Any, *, low: float, strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


class EMA(Callback):
    """Keep an exponential moving average of the weights; load it into the model at the end.

    After every optimizer step (every ``every_n_steps`` steps), each floating-point tensor of
    the model's state (parameters and BatchNorm statistics) moves towards the model's:
    ``ema = decay * ema + (1 - decay) * current``; other tensors (step counters) are copied.
    This is the semantics of timm's ``ModelEmaV3``, warm-up included: with ``warmup=True``
    the decay at update ``t`` is ``1 - (1 + t / warmup_gamma) ** -warmup_power``, clamped to
    ``[min_decay, decay]``, so early averages do not hold on to the random head. The average is
    part of every checkpoint (``state_dict``), so a resume continues it exactly.

    Args:
        decay: The decay once warmed up (0 < decay < 1).
        warmup: Ramp the decay up from ``min_decay``.
        warmup_gamma: Warm-up time scale in updates.
        warmup_power: Warm-up exponent.
        min_decay: Lower bound of the decay.
        every_n_steps: Optimizer steps between updates.
        apply_at_end: Load the average into the model when ``fit`` ends (before
            [tlkit.ModelCheckpoint][]'s ``restore_best``, which would replace it).

    Examples:
        >>> import torch
        >>> ema = EMA(decay=0.9, warmup=False)
        >>> ema.decay_at(100), sorted(ema.state_dict())
        (0.9, ['shadow', 'updates'])
    """

    order = 10  # after LRScheduler, before ModelCheckpoint saves

    def __init__(
        self,
        decay: float = 0.9998,
        *,
        warmup: bool = True,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
        min_decay: float = 0.0,
        every_n_steps: int = 1,
        apply_at_end: bool = True,
    ) -> None:
        for name, value in (("decay", decay), ("min_decay", min_decay)):
            _check_number(name, value, low=0.0)
            if value >= 1:
                raise ValueError(f"{name} must be below 1, got {value!r}")
        if min_decay > decay:
            raise ValueError(f"min_decay ({min_decay}) must not exceed decay ({decay})")
        _check_number("warmup_gamma", warmup_gamma, low=0.0, strict=True)
        _check_number("warmup_power", warmup_power, low=0.0, strict=True)
        check_positive_int("every_n_steps", every_n_steps)
        self.decay, self.warmup, self.min_decay = decay, warmup, min_decay
        self.warmup_gamma, self.warmup_power = warmup_gamma, warmup_power
        self.every_n_steps, self.apply_at_end = every_n_steps, apply_at_end
        self.shadow: dict[str, torch.Tensor] | None = None
        self.updates = 0

    def decay_at(self, update: int) -> float:
        """The decay used for update number ``update`` (0-based)."""
        if not self.warmup:
            return self.decay
        ramp = 1 - (1 + update / self.warmup_gamma) ** -self.warmup_power
        return max(self.min_decay, min(self.decay, ramp))

    def on_fit_start(self, trainer: Trainer, **kwargs: Any) -> None:
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    @torch.no_grad()
    def on_batch_end(
        self, trainer: Trainer, *, batch: int, optimizer_stepped: bool, **kwargs: Any
    ) -> None:
        if not optimizer_stepped or trainer.global_step % self.every_n_steps:
            return
        assert self.shadow is not None
        decay = self.decay_at(self.updates)
        for key, value in trainer.model.state_dict().items():
            average = self.shadow[key]
            if value.is_floating_point():
                average.lerp_(value.to(average.device), 1 - decay)
            else:
                average.copy_(value)
        self.updates += 1

    def on_fit_end(self, trainer: Trainer, **kwargs: Any) -> None:
        if self.apply_at_end:
            self.copy_to(trainer.model)
            trainer.log(f"loaded the weights' moving average ({self.updates} updates)")

    def copy_to(self, model: nn.Module) -> None:
        """Load the average into ``model``."""
        if self.shadow is None:
            raise ValueError("the EMA has no average yet: fit first")
        model.load_state_dict(self.shadow)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow = state["shadow"]
        self.updates = int(state["updates"])
