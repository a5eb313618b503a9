"""The fine-tuning stage: everything trained at layer-wise rates on the training images less a
held-out fold, then judged against the probe on that fold (the keep rule)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from .. import distributed, heads
from ..augment import BatchAugment
from ..backbones import BackboneInfo
from ..history import History
from ..model.network import build_head, load_head
from ..model.result import Recipe
from ..probe import balancing_weights
from ..splits import kfold
from ..tta import flip_average
from .candidates import SpeedChecks
from .compute import CPU, Compute, process_batch
from .executor import Executor
from .finetune_loop import train_full
from .keep_rule import fine_tuning_wins, gain_of
from .measure import choose_batch_size, measure
from .planner import plan_finetune
from .probing import ProbeStage
from .scores import right_per_image
from .settings import AUTO
from .store import Decoded, ImageStore, to_model_input
from .views import Candidate

__all__ = ["PROBED", "TunedStage", "held_out_fold", "predict_probs", "run_finetune"]

PROBED = frozenset({"ranking", "decoding", "features", "zoomed views", "probe fits"})
"""The stages done once the probe has chosen its backbone."""


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
    ex: Executor,
    checks: SpeedChecks,
    classes: int,
    seed: int,
) -> TunedStage | None:
    """Fine-tune ``best`` when the plan says so (``None`` when it does not), at the epochs its
    speed check here allows, and keep it over the probe only when the keep rule says it is
    better on the same held-out images. The plan is made again once the probe has chosen
    ``best`` (the time left may no longer allow fine-tuning) and once its speed is measured
    (reused from ``checks.speeds`` where the same network was timed at the same size and
    batch)."""
    assert best.info is not None
    ex.replan(f"the probe chose {best.name}", tuned=best.name, done=PROBED)
    if not ex.plan.runs("fine-tuning"):
        ex.begin("fine-tuning")  # says why not
        return None
    # the probe stage's untouched copy, or (no probe) the candidate's own network: both are
    # this stage's alone to train
    model = probe.tuning_start if probe is not None else best.model
    size, why = checks.tuning_size(best)
    compute = checks.compute
    train_at, held = held_out_fold(sets, probe, seed)
    plan.batch_size = choose_batch_size(len(train_at))
    n_val = len(held) if sets.val_images is None else sets.counts[1]
    infer, train_rate, layout = _speed(
        ex, checks, model, best.name, size, plan, len(train_at), n_val
    )
    if not ex.begin("fine-tuning"):
        return None
    multi = sets.labels.dim() == 2
    plan_finetune(
        name,  # type: ignore[arg-type]
        plan,
        n_train=len(train_at),
        n_val=n_val,
        infer_rate=infer,
        train_rate=train_rate,
        remaining=ex.budget.left(),
        multi_label=multi,
    )
    plan.name = "lp-ft" if name == "lp-ft" else "full"
    plan.reasons += [f"fine-tuning {best.name} at {why}", layout]
    judge_x, judge_y, where, total = sets.judging(held)
    judged = held if sets.val_images is None else None
    _start_head(model, name, probe, train_at, classes, seed)
    augment = BatchAugment(size, scale=(plan.crop_scale, 1.0), info=best.info)
    split = (*sets.part(train_at)[:2], judge_x, judge_y)
    history = train_full(
        model, split, augment, plan, ex.budget.deadline, ex.log, size=size, compute=compute
    )
    probs = predict_probs(
        model, judge_x, size, best.mean, best.std, compute=compute, multi_label=multi
    )
    if sets.rows is not None:  # every process's judging images, in order
        probs, judge_y = (distributed.gather_rows(t, where, total) for t in (probs, judge_y))
    plan.kept = "fine-tuned"
    if probe is not None:
        probe_probs = probe.val_probs if sets.val_images is not None else probe.val_probs[held]
        on = "held-out fold" if sets.val_images is None else "val images"
        plan.kept = _kept(plan, probe_probs, probs, judge_y, classes, on)
    ex.end("fine-tuning")
    return TunedStage(
        best.name, best.info, model.eval(), size, history, judge_x, judge_y, probs, judged
    )


def _speed(
    ex: Executor,
    checks: SpeedChecks,
    model: nn.Module,
    name: str,
    size: int,
    plan: Recipe,
    n_train: int,
    n_val: int,
) -> tuple[float, float, str]:
    """Fine-tuning's speed here (inference and training images per second, of every process
    together, and the memory format's reason), measured unless ``checks`` timed the same
    network at the same size and batch; the plan is made again from it."""
    key = (name, size, plan.batch_size)
    if key not in checks.speeds:
        batch = process_batch(plan.batch_size)  # each process takes its part of every batch
        checks.speeds[key] = measure(model, size, batch, checks.compute)
        ex.budget.lap("speed checks")
    infer, train_rate, plan.channels_last, layout = checks.speeds[key]
    processes = distributed.world()[2]
    infer, train_rate = infer * processes, train_rate * processes
    epoch = (n_train / train_rate + n_val / infer) / (n_train + n_val)
    backbones = tuple(
        replace(b, epoch=epoch) if b.name == name else b for b in ex.measurements.backbones
    )
    ex.replan(f"fine-tuning {name} measured here", backbones=backbones)
    return infer, train_rate, layout


def _kept(
    plan: Recipe,
    probe_probs: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    judged_on: str,
) -> Literal["probe", "fine-tuned"]:
    """Which model the keep rule keeps, judged on the same images (by balanced accuracy with
    class weights); its verdict goes into the reasons, what fine-tuning added into the gains."""
    weights = None
    if plan.class_weight is not None and labels.dim() == 1:
        weights = balancing_weights(labels, classes)
    probe_right, tuned_right = right_per_image(probe_probs, labels), right_per_image(probs, labels)
    keep, verdict = fine_tuning_wins(probe_right, tuned_right, weights=weights)
    plan.reasons.append(verdict)
    plan.gains.append(gain_of("fine-tuning", tuned_right, probe_right, keep, judged_on, weights))
    return "fine-tuned" if keep else "probe"


def held_out_fold(
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
    model: nn.Module,
    name: str,
    probe: ProbeStage | None,
    train_at: torch.Tensor,
    classes: int,
    seed: int,
) -> None:
    """``lp-ft`` starts from the probe's head (of this backbone alone, fitted on the images
    ``train_at`` it trains on); the others from a new one."""
    if name == "lp-ft" and probe is not None:
        load_head(model, probe.tuning_head(train_at))
    else:
        torch.manual_seed(seed)
        heads.replace_head(model, lambda n: build_head(n, classes))
