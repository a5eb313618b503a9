"""Training stages: the linear probe on cached features and fine-tuning at layer-wise rates,
each through [tlkit.Trainer][], and the evaluator that scores the kept model."""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .. import heads
from .._utils import plural
from ..augment import BatchAugment
from ..callbacks import LRScheduler, ModelCheckpoint
from ..features import FeatureBatches, extract_features
from ..freeze import FreezePolicy, unfreeze
from ..history import History
from ..optim import discriminative_param_groups
from ..progress import ProgressBar
from ..trainer import Trainer
from .budget import Deadline
from .result import Recipe
from .settings import AUTO

__all__ = [
    "layer_stages",
    "make_evaluator",
    "stage_records",
    "tensor_loader",
    "train_full",
    "train_probe",
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


def tensor_loader(
    images: torch.Tensor, labels: torch.Tensor, batch: int, shuffle: bool
) -> DataLoader:
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    return DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=shuffle,
                      generator=generator)  # fmt: skip


def stage_records(history: History, stage: str) -> list[dict[str, Any]]:
    return [{"stage": stage, **record} for record in history.records]


def train_probe(
    model: nn.Module,
    head_path: str,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    augment: BatchAugment,
    recipe: Recipe,
    log: Any,
) -> History:
    train_x, train_y, val_x, val_y = data
    FreezePolicy(train_only=[head_path], bn="eval").apply(model)
    augment.eval()
    layout = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model.to(memory_format=layout)

    def transform(x: torch.Tensor) -> torch.Tensor:
        return augment(x).contiguous(memory_format=layout)

    with heads.headless(model) as (_, head):
        train_f = extract_features(model, tensor_loader(train_x, train_y, 128, False),
                                   batch_transform=transform)  # fmt: skip
        val_f = extract_features(model, tensor_loader(val_x, val_y, 256, False),
                                 batch_transform=transform)  # fmt: skip
    model.to(memory_format=torch.contiguous_format)
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=AUTO.probe_lr, weight_decay=AUTO.probe_weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.probe_epochs)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            head,
            optimizer=optimizer,
            device="cpu",
            verbose=False,
            callbacks=[
                LRScheduler(schedule),
                ModelCheckpoint(folder, monitor="val_accuracy", restore_best=True, save_last=False),
            ],
        )
        history = trainer.fit(FeatureBatches(train_f, 64, shuffle=True),
                              FeatureBatches(val_f, 512), epochs=recipe.probe_epochs)  # fmt: skip
    best = max(history["val_accuracy"])
    log(f"probe: linear head on {train_f.tensors[0].shape[1]}-d features, best val {best:.4f}")
    return history


def train_full(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    augment: BatchAugment,
    recipe: Recipe,
    deadline: float | None,
    log: Any,
) -> History:
    train_x, train_y, val_x, val_y = data
    unfreeze(model)
    stages = layer_stages(model)
    groups = discriminative_param_groups(model, recipe.lr, decay=recipe.layer_decay, stages=stages)
    optimizer = torch.optim.AdamW(groups, weight_decay=AUTO.weight_decay)
    train = tensor_loader(train_x, train_y, recipe.batch_size, True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=recipe.finetune_epochs * len(train),
        pct_start=AUTO.warmup,
    )
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            model,
            optimizer=optimizer,
            loss=nn.CrossEntropyLoss(label_smoothing=AUTO.label_smoothing),
            device="cpu",
            verbose=False,
            batch_transform=augment,
            channels_last=recipe.channels_last,
            callbacks=[
                LRScheduler(schedule, interval="step"),
                ModelCheckpoint(folder, monitor="val_accuracy", restore_best=True, save_last=False),
                Deadline(deadline),
                ProgressBar(deadline=deadline),
            ],
        )
        history = trainer.fit(train, tensor_loader(val_x, val_y, 256, False),
                              epochs=recipe.finetune_epochs)  # fmt: skip
    model.to(memory_format=torch.contiguous_format)
    log(f"fine-tuned {plural(len(history), 'epoch')}, best val {max(history['val_accuracy']):.4f}")
    return history


def make_evaluator(model: nn.Module, augment: BatchAugment) -> Trainer:
    """A Trainer that scores ``model`` on the validation images through the eval transform."""
    return Trainer(model, device="cpu", verbose=False, batch_transform=augment.eval())
