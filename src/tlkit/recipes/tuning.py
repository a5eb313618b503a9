"""The fine-tuning stage: everything trained at layer-wise rates on the training images less a
held-out fold, then judged against the probe on that fold (the keep rule)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed, heads
from ..augment import BatchAugment
from ..backbones import BackboneInfo
from ..history import History
from ..probe import balancing_weights
from ..splits import kfold
from ..tta import flip_average
from .budget import shared_clock
from .compute import CPU, Compute
from .judge import right_per_image
from .keep import fine_tuning_wins
from .measure import choose_batch_size, measure
from .plan import choose_size, plan_finetune, too_few
from .probing import ProbeStage
from .result import Recipe, build_head, load_head
from .settings import AUTO
from .stages import process_batch, train_full
from .store import Decoded, ImageStore, to_model_input
from .views import Candidate

__all__ = ["TunedStage", "predict_probs", "run_finetune"]


@dataclass
class TunedStage:
    """The fine-tuned network and how it did on the images that judged it."""

    name: str
    info: BackboneInfo
    model: nn.Module
    size: int
    history: History
    images: ImageStore  # the judging images (as decoded; this process's under torchrun)
    labels: torch.Tensor  # of every judging image (all processes')
    probs: torch.Tensor
    judged: torch.Tensor | None = None  # which training images judged it (``None``: val)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    images: ImageStore,
    size: int,
    mean: Any,
    std: Any,
    *,
    batch: int = 128,
    compute: Compute | None = None,
    multi_label: bool = False,
) -> torch.Tensor:
    """Probabilities (on the CPU) of decoded images resized to ``size``, each averaged with its
    mirror image's, computed on ``compute``'s device (default the CPU); each label's own
    (sigmoid) when ``multi_label``."""
    compute = compute or CPU
    model.eval().to(compute.device)
    parts = []
    for chunk in images.batches(batch):
        x = to_model_input(chunk, size, mean, std, compute.device)
        with compute.autocast():
            if multi_label:
                both = model(torch.cat([x, x.flip(-1)])).float().sigmoid()
                parts.append(both.view(2, len(x), -1).mean(0).cpu())
            else:
                parts.append(flip_average(model, x, log_probs=False).exp().float().cpu())
    return torch.cat(parts)


def run_finetune(
    name: str,
    plan: Recipe,
    best: Candidate,
    probe: ProbeStage | None,
    sets: Decoded,
    *,
    median_side: int,
    image_size: int | None,
    classes: int,
    seed: int,
    deadline: float | None,
    log: Callable[[str], None],
    compute: Compute | None = None,
) -> TunedStage | None:
    """Fine-tune ``best`` when the plan says so (``None`` when it does not), and keep it over
    the probe only when the keep rule says it is better on the same held-out images."""
    assert best.info is not None
    if name == "auto" and too_late(best, deadline, plan):
        return None
    # the probe stage's untouched copy, or (no probe) the candidate's own network: both are
    # this stage's alone to train
    model = probe.tuning_start if probe is not None else best.model
    size, why = (
        (image_size, f"{image_size} px: given")
        if image_size is not None
        else choose_size(best.info.input_size, median_side)
    )
    train_at, held = _held_out_fold(sets, probe, seed)
    if name == "auto" and too_few(plan, len(train_at), classes):  # before any speed check
        return None
    plan.batch_size = choose_batch_size(len(train_at))
    processes = distributed.world()[2]  # each takes its part of every batch
    infer, train_rate, plan.channels_last, layout = measure(
        model, size, process_batch(plan.batch_size), compute
    )
    infer, train_rate = infer * processes, train_rate * processes
    n_val = len(held) if sets.val_images is None else sets.counts[1]
    remaining = None if deadline is None else deadline - shared_clock()
    plan_finetune(name, plan, n_train=len(train_at), n_val=n_val, classes=classes,  # type: ignore[arg-type]
                  infer_rate=infer, train_rate=train_rate, remaining=remaining,
                  multi_label=sets.labels.dim() == 2)  # fmt: skip
    if not plan.finetune_epochs:
        return None
    plan.name = "lp-ft" if name == "lp-ft" else "full"
    plan.reasons += [f"fine-tuning {best.name} at {why}", layout]
    if plan.sampler == "balanced":
        plan.reasons.append(
            "each epoch draws its images with replacement, each with a chance in proportion to "
            "its class weight (every class about as often with balanced weights); the loss "
            "unweighted"
        )
    judge_x, judge_y, where, total = sets.judging(held)
    judged = held if sets.val_images is None else None
    _start_head(model, name, probe, best.name, classes, seed)
    augment = BatchAugment(size, scale=(plan.crop_scale, 1.0), info=best.info)
    split = (*sets.part(train_at)[:2], judge_x, judge_y)
    history = train_full(model, split, augment, plan, deadline, log, size=size, compute=compute)
    multi = judge_y.dim() == 2
    probs = predict_probs(model, judge_x, size, best.mean, best.std, compute=compute,
                          multi_label=multi)  # fmt: skip
    if sets.rows is not None:  # every process's judging images, in order
        probs, judge_y = (distributed.gather_rows(t, where, total) for t in (probs, judge_y))
    plan.kept = "fine-tuned"
    if probe is not None:
        probe_probs = probe.val_probs if sets.val_images is not None else probe.val_probs[held]
        weights = None
        if plan.class_weight is not None and not multi:
            weights = balancing_weights(judge_y, classes)
        keep, verdict = fine_tuning_wins(
            right_per_image(probe_probs, judge_y), right_per_image(probs, judge_y), weights=weights
        )
        plan.kept = "fine-tuned" if keep else "probe"
        plan.reasons.append(verdict)
    return TunedStage(best.name, best.info, model.eval(), size, history, judge_x, judge_y, probs,
                      judged)  # fmt: skip


def too_late(best: Candidate, deadline: float | None, plan: Recipe) -> bool:
    """Whether ``AUTO.min_finetune_epochs`` epochs clearly cannot fit the time left, by the
    estimate the plan made before the probe (an epoch ``AUTO.train_slowdown`` times one view
    of the feature pass): then even the speed check, several training steps, is not spent."""
    if deadline is None:
        return False
    epoch = AUTO.train_slowdown * best.seconds / AUTO.probe_views
    left = deadline - shared_clock()
    if AUTO.min_finetune_epochs * epoch <= left:
        return False
    plan.reasons.append(
        f"no fine-tuning: {AUTO.min_finetune_epochs} epochs would take about "
        f"{AUTO.min_finetune_epochs * epoch:.0f} s here (estimated from the feature pass), more "
        f"than the {max(left, 0):.0f} s left"
    )
    return True


def _held_out_fold(
    sets: Decoded, probe: ProbeStage | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(training indices, held-out indices)``: one fold of about ``AUTO.val_fraction`` of
    the images (near-duplicates kept together), or none when validation images are given."""
    labels = sets.train_labels()
    if sets.val_images is not None:
        return torch.arange(len(labels)), torch.arange(0)
    groups = probe.choice.groups if probe is not None else None
    held = kfold(labels, round(1 / AUTO.val_fraction), groups=groups, seed=seed)[0]
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[held] = False
    return rest.nonzero().flatten(), held


def _start_head(
    model: nn.Module, name: str, probe: ProbeStage | None, backbone: str, classes: int, seed: int
) -> None:
    """``lp-ft`` starts from the probe's head (of this backbone alone); the others from a new
    one."""
    if name == "lp-ft" and probe is not None:
        load_head(model, probe.tuning_head())
    else:
        torch.manual_seed(seed)
        heads.replace_head(model, lambda n: build_head(n, classes))
