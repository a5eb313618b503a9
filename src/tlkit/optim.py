"""Parameter groups for discriminative (layer-wise) learning rates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .freeze import get_layer

__all__ = ["discriminative_param_groups"]


def discriminative_param_groups(
    model: nn.Module,
    lr: float,
    *,
    decay: float = 0.5,
    stages: Sequence[str] | None = None,
    include_frozen: bool = False,
) -> list[dict[str, Any]]:
    """Parameter groups whose learning rate shrinks with depth from the output.

    The last stage (usually the head) trains at ``lr``, the one before at ``lr * decay``, the
    one before that at ``lr * decay**2``, and so on: early layers hold general features and
    should move least (ULMFiT's discriminative fine-tuning, fastai's ``slice(lo, hi)``).

    Args:
        model: The model.
        lr: Learning rate of the last stage.
        decay: Factor between consecutive stages, in (0, 1].
        stages: Module names in input-to-output order; default the model's top-level children
            that hold parameters. Parameters outside every stage join the first group.
        include_frozen: Also put frozen parameters in the groups (so a later ``unfreeze``
            trains them at their depth's rate without touching the optimizer).

    Returns:
        A list of ``{"params", "lr", "name"}`` dicts for any ``torch.optim`` optimizer; stages
        without (trainable) parameters are left out.

    Raises:
        KeyError: For an unknown stage name.
        ValueError: For ``decay`` outside (0, 1] or ``lr <= 0``.

    Examples:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18()
        >>> groups = discriminative_param_groups(model, 1e-3, decay=0.5)
        >>> [(g["name"], g["lr"]) for g in groups][-3:]
        [('layer3', 0.00025), ('layer4', 0.0005), ('fc', 0.001)]
        >>> optimizer = torch.optim.AdamW(groups)
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay!r}")
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if stages is None:
        stages = [
            name for name, child in model.named_children() if any(True for _ in child.parameters())
        ]
    else:
        for name in stages:
            get_layer(model, name)
    stages = list(stages)
    assigned: dict[str, list[nn.Parameter]] = {name: [] for name in stages}
    leftovers: list[nn.Parameter] = []
    for pname, param in model.named_parameters():
        if not (param.requires_grad or include_frozen):
            continue
        owner = next((s for s in reversed(stages) if pname.startswith(s + ".")), None)
        (assigned[owner] if owner is not None else leftovers).append(param)
    if stages and leftovers:
        assigned[stages[0]] = leftovers + assigned[stages[0]]
    depth = len(stages)
    groups = [
        {"params": assigned[name], "lr": lr * decay ** (depth - 1 - i), "name": name}
        for i, name in enumerate(stages)
        if assigned[name]
    ]
    if not stages and leftovers:
        groups.append({"params": leftovers, "lr": lr, "name": "model"})
    return groups
