"""Unfreezing a network stage by stage: [tlkit.GradualUnfreeze][]."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..freeze import resolve_names, unfreeze
from .base import Callback, TrainerLike, check_number

__all__ = ["GradualUnfreeze"]


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
            check_number("lr", lr, low=0.0, strict=True)
        check_number("lr_scale", lr_scale, low=0.0, strict=True)
        self.lr = lr
        self.lr_scale = lr_scale
        self.applied: list[int] = []

    def on_fit_check(self, trainer: TrainerLike, *, metrics: Sequence[str], **kwargs: Any) -> None:
        for stages in self.schedule.values():
            resolve_names(trainer.model, stages)  # a typo raises now, not epochs later

    def on_epoch_start(self, trainer: TrainerLike, *, epoch: int, **kwargs: Any) -> None:
        for when, names in self.schedule.items():
            if when <= epoch and when not in self.applied:
                self._unfreeze(trainer, names)
                self.applied.append(when)

    def _unfreeze(self, trainer: TrainerLike, names: Sequence[str]) -> None:
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

    def on_load_checkpoint(self, trainer: TrainerLike, **kwargs: Any) -> None:
        self.applied = []
        for when in getattr(self, "_restored", []):
            self._unfreeze(trainer, self.schedule[when])
            self.applied.append(when)
