"""Fine-tuning everything at layer-wise decaying learning rates through [tlkit.Trainer][]: the
stages of a network and the training loop's set-up."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import distributed
from .._utils import plural
from ..augment import BatchAugment
from ..callbacks import Deadline, LRScheduler, ProgressBar
from ..freeze import unfreeze
from ..history import History
from ..model.result import Recipe
from ..optim import discriminative_param_groups
from ..training.trainer import Trainer
from .budget import shared_clock
from .compute import CPU, Compute, process_batch
from .settings import AUTO
from .store import ImageStore, store_loader

__all__ = [
    "layer_stages",
    "train_full",
]


def layer_stages(model: nn.Module) -> list[str]:
    """Input-to-output stages for layer-wise learning rates: top-level children, with long
    Sequential/ModuleList children (timm's ``blocks``, torchvision's ``features``) opened up."""
    stages = []
    for name, child in model.named_children():
        if not has_params(child):
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) >= 3:
            stages += [f"{name}.{i}" for i, sub in enumerate(child) if has_params(sub)]
        else:
            stages.append(name)
    return stages


def has_params(module: nn.Module) -> bool:
    """Whether ``module`` holds any parameter."""
    return any(True for _ in module.parameters())


def loss_of(recipe: Recipe, *, multi_label: bool) -> nn.Module:
    """Cross-entropy with label smoothing and the recipe's class weights (none when its sampler
    draws images by them); for multi-hot targets, binary cross-entropy per label with the class
    weights on positives."""
    weighed = recipe.class_weight is not None and recipe.sampler != "balanced"
    weights = torch.tensor(recipe.class_weight) if weighed else None
    if multi_label:
        return nn.BCEWithLogitsLoss(pos_weight=weights)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=AUTO.label_smoothing)


def train_full(
    model: nn.Module,
    data: tuple[ImageStore, torch.Tensor, ImageStore, torch.Tensor],
    augment: BatchAugment,
    recipe: Recipe,
    deadline: float | None,
    log: Any,
    *,
    size: int,
    compute: Compute | None = None,
) -> History:
    """Fine-tune all of ``model`` at ``size`` px for ``recipe.finetune_epochs`` (fewer when
    ``deadline`` comes first) on ``compute``'s device and precision (default the CPU, fp32):
    AdamW at layer-wise decaying rates, one-cycle schedule, label smoothing (binary
    cross-entropy per label for multi-hot labels); the last epoch's
    weights are kept (no epoch is picked on the images that judge the model)."""
    compute = compute or CPU
    train_x, train_y, val_x, val_y = data
    unfreeze(model)
    stages = layer_stages(model)
    groups = discriminative_param_groups(model, recipe.lr, decay=recipe.layer_decay, stages=stages)
    optimizer = torch.optim.AdamW(groups, weight_decay=AUTO.weight_decay)
    batch = process_batch(recipe.batch_size)  # under torchrun each trains on its own images
    most = distributed.most(len(train_x))  # as many batches in every process
    draw = None  # each image's chance of being drawn, with a balanced sampler
    if recipe.sampler == "balanced" and recipe.class_weight is not None:
        draw = torch.tensor(recipe.class_weight, dtype=torch.float64)[train_y]
    train = store_loader(
        train_x, train_y, batch, True, size=size, pin=compute.pin, samples=most, weights=draw
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=recipe.finetune_epochs * len(train),
        pct_start=AUTO.warmup,
    )
    trainer = Trainer(
        model,
        optimizer=optimizer,
        loss=loss_of(recipe, multi_label=train_y.dim() == 2),
        device=compute.device,
        precision=compute.precision,  # type: ignore[arg-type]
        verbose=False,
        batch_transform=augment,
        channels_last=recipe.channels_last,
        callbacks=[
            LRScheduler(schedule, interval="step"),
            Deadline(deadline, clock=shared_clock),
            ProgressBar(deadline=deadline),
        ],
    )
    val = store_loader(val_x, val_y, 256, False, size=size, pin=compute.pin)
    history = trainer.fit(train, val, epochs=recipe.finetune_epochs, sharded=True)
    model.to(memory_format=torch.contiguous_format)
    last = history["val_accuracy"][-1]
    log(f"fine-tuned {plural(len(history), 'epoch')}, last epoch's val {last:.4f}")
    return history
