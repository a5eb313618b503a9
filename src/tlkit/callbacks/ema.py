"""An exponential moving average of the weights: [tlkit.EMA][]."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._utils import check_positive_int
from .base import Callback, TrainerLike, check_number

__all__ = ["EMA"]


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
            check_number(name, value, low=0.0)
            if value >= 1:
                raise ValueError(f"{name} must be below 1, got {value!r}")
        if min_decay > decay:
            raise ValueError(f"min_decay ({min_decay}) must not exceed decay ({decay})")
        check_number("warmup_gamma", warmup_gamma, low=0.0, strict=True)
        check_number("warmup_power", warmup_power, low=0.0, strict=True)
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

    def on_fit_start(self, trainer: TrainerLike, **kwargs: Any) -> None:
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    @torch.no_grad()
    def on_batch_end(
        self, trainer: TrainerLike, *, batch: int, optimizer_stepped: bool, **kwargs: Any
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

    def on_fit_end(self, trainer: TrainerLike, **kwargs: Any) -> None:
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
