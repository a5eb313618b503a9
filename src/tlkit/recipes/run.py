"""[tlkit.finetune][]: read the images, choose, plan, train, keep the better model."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import heads
from .._utils import check_positive_int
from ..augment import BatchAugment
from ..backbones import KeyMap, backbone, check_key_map, check_name
from ..data import ImageDataset
from ..freeze import unfreeze
from ..history import History
from ..splits import split
from .budget import parse_budget
from .images import decode_dataset
from .keep import fine_tuning_wins
from .measure import choose_batch_size, measure, sample_median_side
from .plan import RECIPES, RecipeName, choose_size, make_plan
from .result import FinetuneResult, build_head
from .select import rank_within_budget
from .settings import AUTO
from .stages import make_evaluator, stage_records, tensor_loader, train_full, train_probe

__all__ = ["finetune"]


def finetune(
    train: ImageDataset | str | Path,
    *,
    backbone_name: str | Sequence[str] = "timm/efficientnet_lite0",
    weights: str | Path | None = "imagenet",
    key_map: KeyMap = "strict",
    budget: float | str | None = None,
    val: ImageDataset | str | Path | None = None,
    recipe: RecipeName = "auto",
    image_size: int | None = None,
    background: Sequence[int] = (255, 255, 255),
    on_error: Literal["raise", "skip"] = "raise",
    seed: int = 0,
    verbose: bool = True,
    started: float | None = None,
) -> FinetuneResult:
    """Fine-tune a pretrained backbone on labelled images, choosing the recipe for you.

    Args:
        train: An [tlkit.ImageDataset][], or a folder (``root/<class>/<image>``) or CSV
            (``path,label``) to build one from.
        backbone_name: A [tlkit.backbone][] name, or several: they are ranked by LogME
            ([tlkit.rank_backbones][]) on at most 500 of the training images at the size each
            would train at, within the budget, and the best is fine-tuned.
        weights: ``"imagenet"``, a local checkpoint path (of one backbone), or ``None``.
        key_map: How a local checkpoint's keys meet the model's (see [tlkit.backbone][]):
            ``"by_order"`` for one saved by another implementation of the architecture.
        budget: Time for the whole call (``"5m"``, seconds); ``None`` picks epochs from the data.
        val: Validation images; default a stratified 15% of ``train`` held out.
        recipe: ``"auto"``, ``"probe"``, ``"lp-ft"`` or ``"full"`` (see the module).
        image_size: Force the resolution; default chosen from the images and the backbone.
        background: RGB colour under transparent pixels.
        on_error: ``"raise"`` or ``"skip"`` unreadable files (listed in ``result.skipped``).
        seed: Seed of the split, the head and the data order.
        verbose: Print each choice with its reason, and progress.
        started: ``time.perf_counter()`` at which the budget started (default: now).

    Returns:
        A [tlkit.FinetuneResult][]: the model with the best validation accuracy,
        its preprocessing, the recipe and its reasons, history and validation metrics.

    Raises:
        ValueError: For a bad ``recipe``, ``budget``, ``image_size``, a dataset with fewer than
            two classes or too few images to hold out a validation image per class, repeated
            backbone names, one checkpoint file for several backbones, or a bad ``key_map``.
        KeyError: For an unknown backbone name (before any image is read).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        ...     (root / name).mkdir()
        ...     for i in range(6):
        ...         Image.new("RGB", (32, 32), colour).save(root / name / f"{i}.png")
        >>> result = finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
        ...                   image_size=32, verbose=False)
        >>> result.classes, result.recipe.name, result.predict([root / "red" / "0.png"]).shape
        (['blue', 'red'], 'probe', torch.Size([1, 2]))
    """
    start = time.perf_counter() if started is None else started
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    seconds = parse_budget(budget)
    if image_size is not None:
        check_positive_int("image_size", image_size)
    deadline = start + seconds if seconds is not None else None
    names = [backbone_name] if isinstance(backbone_name, str) else list(backbone_name)
    if not names or len(set(names)) < len(names):
        raise ValueError(f"backbone_name must be one name or several different ones, got {names}")
    for name in names:
        check_name(name)  # a typo fails now, not after the images are checked
    if len(names) > 1 and weights is not None and str(weights).lower() != "imagenet":
        raise ValueError(
            f"weights={str(weights)!r} with {len(names)} backbones: a checkpoint file holds the "
            "weights of one architecture; rank several with weights='imagenet' (or None), or "
            "pass one backbone_name with its file"
        )
    check_key_map(key_map)  # before any image is read

    def log(message: str) -> None:
        if verbose:
            print(message, flush=True)

    data = as_dataset(train, background, on_error)
    held_out = as_dataset(val, background, on_error) if val is not None else None
    if len(data.classes) < 2:
        raise ValueError(f"a classifier needs at least two classes, found {data.classes}")
    if held_out is not None and held_out.classes != data.classes:
        raise ValueError(f"val has classes {held_out.classes}, train has {data.classes}")
    if held_out is None:
        counts = [data.targets.count(c) for c in range(len(data.classes))]
        if min(counts) < 2:
            raise ValueError(
                f"class {data.classes[counts.index(min(counts))]!r} has {min(counts)} image; "
                "holding out validation images needs at least 2 per class (or pass val=)"
            )
        n_val = max(len(data.classes), round(AUTO.val_fraction * len(data)))
        train_idx, val_idx = split(len(data), (len(data) - n_val, n_val), seed=seed,
                                   stratify=data.targets)  # fmt: skip
    else:
        train_idx, val_idx = torch.arange(len(data)), None
    median_side = sample_median_side(data)
    chosen = []
    if len(names) > 1:
        ranking, why = rank_within_budget(
            names, weights, data, image_size, median_side, seed, deadline
        )
        names = [ranking[0].name] if ranking else names[:1]
        chosen.append(why)
        log(why)
    torch.manual_seed(seed)
    model, info = backbone(names[0], weights, key_map=key_map)
    head_path, _ = heads.find_head(model)

    def new_head(features: int) -> nn.Module:
        return build_head(features, len(data.classes))

    heads.replace_head(model, new_head)
    if image_size is not None:
        size, size_reason = image_size, f"{image_size} px: given"
    else:
        size, size_reason = choose_size(info.input_size, median_side)
    batch_size = choose_batch_size(len(train_idx))
    infer_rate, train_rate, channels_last, layout_reason = measure(model, size, batch_size)
    images = decode_dataset(data, size)  # before planning: the plan gets the time left
    labels = torch.tensor(data.targets)
    if held_out is None:
        assert val_idx is not None
        split_data = (images[train_idx], labels[train_idx], images[val_idx], labels[val_idx])
    else:
        split_data = (images, labels, decode_dataset(held_out, size),
                      torch.tensor(held_out.targets))  # fmt: skip
    plan = make_plan(
        recipe,
        n_train=len(split_data[1]),
        n_val=len(split_data[3]),
        classes=len(data.classes),
        size=size,
        size_reason=size_reason,
        infer_rate=infer_rate,
        train_rate=train_rate,
        remaining=None if deadline is None else deadline - time.perf_counter(),
        batch_size=batch_size,
        channels_last=channels_last,
        layout_reason=layout_reason,
    )
    plan.reasons[:0] = chosen
    log(plan.describe())
    augment = BatchAugment(size, scale=(plan.crop_scale, 1.0), info=info)
    records: list[dict[str, Any]] = []
    val_loader = tensor_loader(split_data[2], split_data[3], 256, False)
    val_probs = None
    if plan.probe_epochs:
        records += stage_records(
            train_probe(model, head_path, split_data, augment, plan, log), "probe"
        )
        plan.kept = "probe"
    if plan.finetune_epochs:
        probe_state = {k: v.clone() for k, v in model.state_dict().items()}
        if plan.name == "full" and plan.probe_epochs:  # fine-tuning starts from a new head
            torch.manual_seed(seed)
            heads.replace_head(model, new_head)
        history = train_full(model, split_data, augment, plan, deadline, log)
        records += stage_records(history, "finetune")
        plan.kept = "fine-tuned"
        if plan.probe_epochs:  # the probe ran: keep whichever of the two the rule prefers
            tuned_state = {k: v.clone() for k, v in model.state_dict().items()}
            tuned_probs = make_evaluator(model, augment).predict(val_loader)
            model.load_state_dict(probe_state)
            val_probs = make_evaluator(model, augment).predict(val_loader)
            keep_tuned, why = fine_tuning_wins(val_probs.argmax(1) == split_data[3],
                                                tuned_probs.argmax(1) == split_data[3])  # fmt: skip
            if keep_tuned:
                model.load_state_dict(tuned_state)
                val_probs = tuned_probs
            else:
                plan.kept = "probe"  # the probe's state is loaded back
            unfreeze(model)
            plan.reasons.append(why)
            log(why)
    model.eval()
    evaluator = make_evaluator(model, augment)
    val_metrics = evaluator.evaluate(val_loader)
    if val_probs is None:
        val_probs = evaluator.predict(val_loader)
    return FinetuneResult(
        model=model,
        classes=list(data.classes),
        info=info,
        backbone=names[0],
        image_size=size,
        mean=tuple(info.mean),
        std=tuple(info.std),
        background=data.background,
        recipe=plan,
        history=History(records),
        val_metrics=val_metrics,
        seconds=time.perf_counter() - start,
        skipped=list(data.skipped) + (list(held_out.skipped) if held_out else []),
        val_images=split_data[2],
        val_labels=split_data[3],
        val_probs=val_probs,
    )


def as_dataset(
    source: ImageDataset | str | Path, background: Sequence[int], on_error: Any
) -> ImageDataset:
    if isinstance(source, ImageDataset):
        return source
    return ImageDataset.from_path(source, background=background, on_error=on_error)
