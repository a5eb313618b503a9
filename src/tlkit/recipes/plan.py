"""The plan: which recipe, how many epochs, at what resolution, and why, from the images per
class, this machine's measured speed and the budget left. Every number comes from
[tlkit.recipes.settings][]."""

from __future__ import annotations

import math
from typing import Literal

from .._utils import plural
from .result import Recipe
from .settings import AUTO

__all__ = ["RECIPES", "RecipeName", "choose_size", "make_plan"]

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


def make_plan(
    name: RecipeName,
    *,
    n_train: int,
    n_val: int,
    classes: int,
    size: int,
    size_reason: str,
    infer_rate: float,
    train_rate: float,
    remaining: float | None,
    batch_size: int = AUTO.batch_size,
    channels_last: bool = False,
    layout_reason: str = "",
) -> Recipe:
    per_class = n_train / classes
    shown = f"{per_class:.1f}".removesuffix(".0")  # 59.5 is below 60: never show it rounded up
    feature_pass = (n_train + n_val) / infer_rate
    epoch = n_train / train_rate + n_val / infer_rate
    reasons = [size_reason, f"{shown} training images per class over {classes} classes"]
    reasons.append(
        f"this machine: {infer_rate:.0f} img/s through the frozen body, {train_rate:.0f} img/s "
        f"training everything ({epoch:.0f} s per fine-tuning epoch)"
    )
    if layout_reason:
        reasons.append(layout_reason)
    if remaining is not None and remaining > 0:
        reasons.append(f"{remaining:.0f} s of the budget left for training")
    elif remaining is not None:
        reasons.append(
            f"the budget is spent ({-remaining:.0f} s over) before training: the probe, the least "
            "that gives a model, runs anyway"
        )
    fallback = False  # auto: a probe first, kept unless fine-tuning is clearly better
    if name == "auto":
        probe_first = per_class < AUTO.probe_first_below
        probe_cost = feature_pass * AUTO.probe_cost if probe_first else 0.0
        affordable = AUTO.max_epochs if remaining is None else int((remaining - probe_cost) / epoch)
        if per_class < AUTO.few_per_class:
            name = "probe"
            reasons.append(
                f"probe: fewer than {AUTO.few_per_class} images per class; fine-tuning millions of "
                "weights on so few overfits, a linear head on pretrained features does not"
            )
        elif affordable < 1:
            name = "probe"
            reasons.append("probe: the budget does not allow one fine-tuning epoch")
        elif not probe_first:
            name = "full"
            reasons.append(
                f"full: everything fine-tuned from a new head at layer-wise rates, the whole "
                f"budget on it: from {AUTO.probe_first_below} training images per class up, "
                "no probe first (in tlkit's benchmarks fine-tuning beat the linear probe in 17 "
                "of 18 paired runs at 76-85 per class, by 2.6 points on average, and tied it at 43)"
            )
        else:
            name, fallback = "full", True
            reasons.append(
                "full: everything fine-tuned from a new head at layer-wise rates, after a "
                f"linear probe ({shown} training images per class, below "
                f"{AUTO.probe_first_below}), "
                "which is kept unless fine-tuning is more accurate on the "
                "validation images by more than one standard error (fine-tuning from the "
                "probe's head, lp-ft, did worse in tlkit's benchmarks: the head fits "
                "frozen-BatchNorm features that fine-tuning changes)"
            )
    recipe = Recipe(name=name, image_size=size, reasons=reasons, batch_size=batch_size,
                    channels_last=channels_last)  # fmt: skip
    if name in ("probe", "lp-ft") or fallback:
        recipe.probe_epochs = AUTO.probe_epochs
    if name in ("lp-ft", "full"):
        cost = feature_pass * AUTO.probe_cost if recipe.probe_epochs else 0.0
        if remaining is None:
            epochs = max(
                2, min(AUTO.max_epochs, math.ceil(AUTO.images_without_budget / max(n_train, 1)))
            )
            why = (
                f"no budget given: epochs scaled to see about {AUTO.images_without_budget:,} images"
            )
        else:
            epochs = max(1, min(AUTO.max_epochs, int((remaining - cost) / epoch)))
            fits = "fits" if epochs == 1 else "fit"
            why = f"{plural(epochs, 'epoch')} {fits} the budget (at most {AUTO.max_epochs})"
        recipe.finetune_epochs = epochs
        recipe.lr = AUTO.lr
        # few passes over the data are better spent on the images than on hard crops of them
        recipe.crop_scale = AUTO.crop_scale if epochs >= AUTO.crop_epochs else AUTO.mild_crop_scale
        recipe.reasons.append(
            f"{why}; AdamW at {recipe.lr:g} for the head, x{recipe.layer_decay:g} per stage "
            "towards the input, one-cycle schedule, label smoothing "
            f"{AUTO.label_smoothing:g}, flips and random crops of at least "
            f"{recipe.crop_scale:.0%} of the image"
        )
    return recipe
