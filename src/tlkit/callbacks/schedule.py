"""Learning-rate schedules stepped by the loop: [tlkit.LRScheduler][]."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from .base import Callback, Monitor, TrainerLike

__all__ = ["LRScheduler"]


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

    def on_fit_check(self, trainer: TrainerLike, *, metrics: Sequence[str], **kwargs: Any) -> None:
        if getattr(self.scheduler, "optimizer", trainer.optimizer) is not trainer.optimizer:
            raise ValueError(
                "the LRScheduler's scheduler was built on another optimizer than the trainer's; "
                "build it on trainer.optimizer, or it changes learning rates nobody uses"
            )
        if self.monitor is not None:
            Monitor(self.monitor, "min").check(metrics, "LRScheduler")

    def on_param_group_added(
        self, trainer: TrainerLike, *, group: dict[str, Any], **kwargs: Any
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
        self, trainer: TrainerLike, *, batch: int, optimizer_stepped: bool, **kwargs: Any
    ) -> None:
        if self.interval == "step" and optimizer_stepped and trainer.last_step_taken:
            self.scheduler.step()

    def on_epoch_end(
        self, trainer: TrainerLike, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
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
