"""The fine-tuning stage: everything trained at layer-wise rates on the training images less a
held-out fold, then judged against the probe on that fold (the keep rule)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import heads
from .._steps import flip_average
from ..augment import BatchAugment
from ..backbones import BackboneInfo
from ..history import History
from ..splits import kfold
from .images import normalise, resize_square
from .keep import fine_tuning_wins
from .measure import choose_batch_size, measure
from .plan import choose_size, plan_finetune
from .probing import Candidate, ProbeStage
from .result import Recipe, build_head, final_linear
from .settings import AUTO
from .stages import train_full

__all__ = ["TunedStage", "predict_probs", "run_finetune"]


@dataclass
class TunedStage:
    """The fine-tuned network and how it did on the images that judged it."""

    name: str
    info: BackboneInfo
    model: nn.Module
    size: int
    history: History
    images: torch.Tensor  # the judging images at ``size`` (uint8)
    labels: torch.Tensor
    probs: torch.Tensor


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images: torch.Tensor,
    mean: Any,
    std: Any,
    *,
    batch: int = 128,
) -> torch.Tensor:
    """Probabilities of uint8 ``(N, 3, S, S)`` images, each averaged with its mirror image's."""
    model.eval()
    parts = [
        flip_average(model, normalise(images[i : i + batch], mean, std), log_probs=False).exp()
        for i in range(0, len(images), batch)
    ]
    return torch.cat(parts)


def run_finetune(
    name: str,
    plan: Recipe,
    best: Candidate,
    probe: ProbeStage | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    val_images: torch.Tensor | None,
    val_labels: torch.Tensor | None,
    *,
    median_side: int,
    image_size: int | None,
    classes: int,
    seed: int,
    deadline: float | None,
    log: Callable[[str], None],
    remaining: Callable[[], float | None],
) -> TunedStage | None:
    """Fine-tune ``best`` when the plan says so (``None`` when it does not), and keep it over
    the probe only when the keep rule says it is better on the same held-out images."""
    assert best.info is not None
    model = copy.deepcopy(probe.tuning_start if probe is not None else best.model)
    if image_size is not None:
        size, why = image_size, f"{image_size} px: given"
    else:
        size, why = choose_size(best.info.input_size, median_side)
    if val_images is None:
        groups = probe.choice.groups if probe is not None else None
        held = kfold(labels, round(1 / AUTO.val_fraction), groups=groups, seed=seed)[0]
        rest = torch.ones(len(labels), dtype=torch.bool)
        rest[held] = False
        train_at = rest.nonzero().flatten()
    else:
        held, train_at = torch.arange(0), torch.arange(len(labels))
    plan.batch_size = choose_batch_size(len(train_at))
    infer, train_rate, plan.channels_last, layout = measure(model, size, plan.batch_size)
    n_val = len(held) if val_images is None else len(val_images)
    plan_finetune(name, plan, n_train=len(train_at), n_val=n_val, classes=classes,  # type: ignore[arg-type]
                  infer_rate=infer, train_rate=train_rate, remaining=remaining())  # fmt: skip
    if not plan.finetune_epochs:
        return None
    plan.name = "lp-ft" if name == "lp-ft" else "full"
    plan.reasons += [f"fine-tuning {best.name} at {why}", layout]
    x = resize_square(images, size)
    if val_images is None:
        judge_x, judge_y = x[held], labels[held]
    else:
        assert val_labels is not None
        judge_x, judge_y = resize_square(val_images, size), val_labels
    if name == "lp-ft" and probe is not None:
        fitted = probe.choice.probes[best.name].to_linear()
        with torch.no_grad():
            final_linear(model).weight.copy_(fitted.weight)
            final_linear(model).bias.copy_(fitted.bias)
    else:
        torch.manual_seed(seed)
        heads.replace_head(model, lambda n: build_head(n, classes))
    augment = BatchAugment(size, scale=(plan.crop_scale, 1.0), info=best.info)
    split = (x[train_at], labels[train_at], judge_x, judge_y)
    history = train_full(model, split, augment, plan, deadline, log)
    probs = predict_probs(model, judge_x, best.mean, best.std)
    plan.kept = "fine-tuned"
    if probe is not None:
        probe_probs = probe.val_probs if val_images is not None else probe.val_probs[held]
        keep, verdict = fine_tuning_wins(
            probe_probs.argmax(1) == judge_y, probs.argmax(1) == judge_y
        )
        plan.kept = "fine-tuned" if keep else "probe"
        plan.reasons.append(verdict)
    return TunedStage(best.name, best.info, model.eval(), size, history, judge_x, judge_y, probs)
