"""The plan: which recipe, how many epochs, at what resolution, and why, from the images per
class, this machine's measured speed and the budget left. Every number comes from
[tlkit.recipes.settings][]."""

from __future__ import annotations

import math
from typing import Literal

from .._utils import plural
from .result import Recipe
from .settings import AUTO

__all__ = [
    "RECIPES",
    "RecipeName",
    "choose_size",
    "describe_images",
    "plan_candidates",
    "plan_finetune",
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
    seconds: dict[str, float], remaining: float | None
) -> tuple[list[str], str | None]:
    """Which candidate backbones the probe stage computes features for: each costs
    ``seconds[name]`` (a pass over every image and its mirror image, measured here). All of
    them when they fit ``AUTO.probe_share`` of the time left, else the first ones that do
    (always the first).

    Examples:
        >>> kept, why = plan_candidates({"a": 10.0, "b": 30.0, "c": 50.0}, 100.0)
        >>> kept, why.split(";")[0]
        (['a', 'b'], 'probe features of a, b (about 40 s here)')
    """
    names = list(seconds)
    if remaining is None or len(names) == 1:
        return names, None
    share = AUTO.probe_share * max(remaining, 0.0)
    kept, total = [names[0]], seconds[names[0]]
    for name in names[1:]:
        if total + seconds[name] <= share:
            kept.append(name)
            total += seconds[name]
    left_out = [n for n in names if n not in kept]
    if not left_out:
        return kept, None
    return kept, (
        f"probe features of {', '.join(kept)} (about {total:.0f} s here); "
        f"{', '.join(left_out)} left out: more than {AUTO.probe_share:.0%} of the "
        f"{max(remaining, 0):.0f} s left (a longer budget uses them)"
    )


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
) -> None:
    """Whether and how long to fine-tune, into ``recipe`` (its epochs, rates, crops and the
    reasons). ``"auto"`` fine-tunes from ``AUTO.few_per_class`` training images per class
    when ``AUTO.min_finetune_epochs`` fit the time left (after the probe); the keep rule then
    decides between the two models."""
    per_class = n_train / classes
    epoch = n_train / train_rate + n_val / infer_rate
    speed = (
        f"this machine: {train_rate:.0f} img/s training everything, {infer_rate:.0f} img/s "
        f"scoring ({epoch:.0f} s per fine-tuning epoch)"
    )
    affordable = AUTO.max_epochs if remaining is None else int(max(remaining, 0) / epoch)
    if name == "probe":
        return
    if name == "auto":
        if per_class < AUTO.few_per_class:
            recipe.reasons.append(
                f"no fine-tuning: fewer than {AUTO.few_per_class} images per class; "
                "fine-tuning millions of weights on so few overfits, a linear head on "
                "pretrained features does not"
            )
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
    recipe.crop_scale = AUTO.crop_scale if epochs >= AUTO.crop_epochs else AUTO.mild_crop_scale
    start = "from the probe's head" if name == "lp-ft" else "from a new head"
    recipe.reasons.append(
        f"fine-tuning everything {start}: {speed}; {why}; AdamW at {recipe.lr:g} for the "
        f"head, x{recipe.layer_decay:g} per stage towards the input, one-cycle schedule, "
        f"label smoothing {AUTO.label_smoothing:g}, flips and random crops of at least "
        f"{recipe.crop_scale:.0%} of the image"
    )
