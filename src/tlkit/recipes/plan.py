"""The plan: which recipe, how many epochs, at what resolution, and why, from the images per
class, this machine's measured speed and the budget left. Every number comes from
[tlkit.recipes.settings][]."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

from .. import distributed
from .._utils import plural
from .result import Recipe
from .settings import AUTO

if TYPE_CHECKING:
    from ..data import ImageDataset
    from .compute import Compute
    from .images import Geometry

__all__ = [
    "RECIPES",
    "RecipeName",
    "choose_size",
    "describe_images",
    "plan_candidates",
    "plan_finetune",
    "plan_sample",
    "start_plan",
    "too_few",
]

RecipeName = Literal["auto", "probe", "lp-ft", "full"]
RECIPES = ("auto", "probe", "lp-ft", "full")


def choose_size(native: int, median_side: int) -> tuple[int, str]:
    wanted = max(64, min(native, 8 * math.ceil(median_side * 2.5 / 8)))
    if wanted >= native:
        return native, f"{native} px: the backbone's pretraining size"
    return wanted, (
        f"{wanted} px: the images are small (median side {median_side} px), and upscaling them "
        f"to the backbone's {native} px would cost {native**2 / wanted**2:.1f}x the compute"
    )


def describe_images(n_train: int, classes: int, where: str) -> str:
    """``"59.5 training images per class over 4 classes"``: never rounded up to a threshold."""
    shown = f"{n_train / classes:.1f}".removesuffix(".0")
    return f"{shown} training images per class over {classes} classes; {where}"


def plan_candidates(
    seconds: dict[str, float],
    remaining: float | None,
    share: float = AUTO.probe_share,
    priority: list[str] | None = None,
) -> tuple[list[str], str | None]:
    """Which candidate backbones the probe stage computes features for: each costs
    ``seconds[name]`` (a pass over one view of every image, measured here). All of
    them when they fit ``share`` of the time left; else, going through them by ``priority``
    (default: the costliest first, as larger ImageNet models tend to transfer better), those
    that still fit; the cheapest alone when none does. Kept in the given order.

    Examples:
        >>> seconds = {"a": 10.0, "b": 30.0, "c": 50.0}
        >>> plan_candidates(seconds, 100.0)[0], plan_candidates(seconds, 100.0, 0.8)[0]
        (['c'], ['b', 'c'])
    """
    names = list(seconds)
    if remaining is None or sum(seconds.values()) <= share * max(remaining, 0.0):
        return names, None
    order = priority or sorted(names, key=lambda n: -seconds[n])
    chosen: set[str] = set()
    for name in order:
        if sum(seconds[n] for n in chosen) + seconds[name] <= share * max(remaining, 0.0):
            chosen.add(name)
    chosen = chosen or {min(names, key=lambda n: seconds[n])}
    kept = [n for n in names if n in chosen]
    left_out = [n for n in names if n not in chosen]
    return kept, (
        f"probe features of {', '.join(kept)} (about {sum(seconds[n] for n in kept):.0f} s "
        f"here); {', '.join(left_out)} left out: more than {share:.0%} of the "
        f"{max(remaining, 0):.0f} s left (a longer budget uses them)"
    )


def plan_sample(
    n_train: int,
    classes: int,
    per_image: float,
    fixed: float,
    remaining: float | None,
    share: float = AUTO.probe_share_alone,
) -> tuple[int, str | None]:
    """How many training images the budget allows: all of them when decoding them and the
    quickest backbone's probe features (``per_image`` seconds each, measured here) fit
    ``share`` of the time left after ``fixed`` seconds (the validation images), else as many
    as fit, at least two per class.

    Examples:
        >>> plan_sample(1000, 10, 0.05, 0.0, 600.0)[0], plan_sample(1000, 10, 0.05, 0.0, 30.0)[0]
        (1000, 510)
    """
    if remaining is None:
        return n_train, None
    room = share * max(remaining, 0.0) - fixed
    if n_train * per_image <= room:
        return n_train, None
    n = max(int(room / per_image), 2 * classes)
    if n >= n_train:  # two per class are needed anyway: all of them, over the budget
        return n_train, None
    return n, (
        f"a stratified sample of {n:,} of the {n_train:,} training images: decoding an image, "
        f"its probe features and the probe's fits take about {per_image * 1000:.0f} ms here, so "
        f"all of them would take {n_train * per_image:.0f} s, more than {share:.0%} of the "
        f"{max(remaining, 0):.0f} s left (a longer budget uses more)"
    )


def too_few(recipe: Recipe, n_train: int, classes: int) -> bool:
    """Whether ``n_train`` images are too few per class for ``auto`` to fine-tune (fewer than
    ``AUTO.few_per_class``); the reason goes into ``recipe``."""
    per_class = n_train / classes
    if per_class >= AUTO.few_per_class:
        return False
    recipe.reasons.append(
        f"no fine-tuning: {per_class:.1f} images per class to fine-tune on (less any held-out "
        f"fold), fewer than {AUTO.few_per_class}; fine-tuning millions of weights on so few "
        "overfits, a linear head on pretrained features does not"
    )
    return True


def plan_finetune(
    name: RecipeName,
    recipe: Recipe,
    *,
    n_train: int,
    n_val: int,
    classes: int,
    infer_rate: float,
    train_rate: float,
    remaining: float | None,
    multi_label: bool = False,
) -> None:
    """Whether and how long to fine-tune, into ``recipe`` (its epochs, rates, crops and the
    reasons). ``"auto"`` fine-tunes from ``AUTO.few_per_class`` training images per class
    when ``AUTO.min_finetune_epochs`` fit the time left (after the probe); the keep rule then
    decides between the two models. With several labels per image the crops are mild (a
    hard crop cuts a labelled object out while its label stays)."""
    epoch = n_train / train_rate + n_val / infer_rate
    speed = (
        f"this machine: {train_rate:.0f} img/s training everything, {infer_rate:.0f} img/s "
        f"scoring ({epoch:.0f} s per fine-tuning epoch)"
    )
    affordable = AUTO.max_epochs if remaining is None else int(max(remaining, 0) / epoch)
    if name == "probe":
        return
    if name == "auto":
        if too_few(recipe, n_train, classes):
            return
        if affordable < AUTO.min_finetune_epochs:
            recipe.reasons.append(
                f"no fine-tuning: {speed}; {max(remaining or 0, 0):.0f} s left allow "
                f"{plural(affordable, 'epoch')}, fewer than {AUTO.min_finetune_epochs}"
            )
            return
    if remaining is None:
        seen = AUTO.images_without_budget
        epochs = max(2, min(AUTO.max_epochs, math.ceil(seen / max(n_train, 1))))
        why = f"no budget given: epochs scaled to see about {seen:,} images"
    else:
        epochs = max(1, min(AUTO.max_epochs, affordable))
        fits = "fits" if epochs == 1 else "fit"
        why = f"{plural(epochs, 'epoch')} {fits} the time left (at most {AUTO.max_epochs})"
    recipe.finetune_epochs = epochs
    recipe.lr = AUTO.lr
    # few passes over the data are better spent on the images than on hard crops of them
    hard = epochs >= AUTO.crop_epochs and not multi_label
    recipe.crop_scale = AUTO.crop_scale if hard else AUTO.mild_crop_scale
    start = "from the probe's head" if name == "lp-ft" else "from a new head"
    loss = (
        "binary cross-entropy per label"
        if multi_label
        else f"label smoothing {AUTO.label_smoothing:g}"
    )
    recipe.reasons.append(
        f"fine-tuning everything {start}: {speed}; {why}; AdamW at {recipe.lr:g} for the "
        f"head, x{recipe.layer_decay:g} per stage towards the input, one-cycle schedule, "
        f"{loss}, flips and random crops of at least {recipe.crop_scale:.0%} of the image"
    )


def start_plan(
    recipe: str,
    geometry: Geometry,
    data: ImageDataset,
    held_out: ImageDataset | None,
    compute: Compute,
) -> Recipe:
    """The recipe before training, with the reasons that do not depend on it."""
    plan = Recipe(name="full" if recipe == "full" else "probe", image_size=0)
    processes = distributed.world()[2]
    many = f", {processes} processes under torchrun" if processes > 1 else ""
    plan.reasons.append(f"computing on {compute}{many}")
    plan.reasons.append(
        "letterboxed: each image fitted whole into the square, the rest filled with the "
        "background colour"
        if geometry == "pad"
        else "centre-cropped: short side resized"
    )
    where = "validated on val" if held_out is not None else "judged by cross-validation"
    if data.multi_label:
        plan.reasons.append(
            f"{len(data)} training images with several labels each (multi-label) over "
            f"{len(data.classes)} labels; {where}; binary cross-entropy per label, a "
            "threshold per label chosen for its F1"
        )
        return plan
    plan.reasons.append(describe_images(len(data), len(data.classes), where))
    return plan
