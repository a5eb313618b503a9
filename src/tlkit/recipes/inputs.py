"""[tlkit.finetune][]'s arguments, checked before any image is read, and its datasets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from .. import distributed
from .._utils import check_positive_int, check_seed
from ..augment.presets import MAX_IMAGE_SIZE
from ..backbones import check_key_map, check_name, weights_at_hand
from ..data import ImageDataset
from ..model.images import GEOMETRIES, Geometry
from ..model.result import Recipe
from . import reasons
from .budget import parse_budget
from .compute import Compute
from .plan import RECIPES
from .settings import AUTO

__all__ = [
    "CLASS_WEIGHTS",
    "DEFAULT_BACKBONES",
    "SAMPLERS",
    "check_arguments",
    "check_class_weight",
    "check_sampler",
    "class_weight_for",
    "default_backbones",
    "read_datasets",
    "sampler_for",
    "start_plan",
    "weigh_classes",
]

CLASS_WEIGHTS = ("auto", "balanced", None)
SAMPLERS = ("shuffle", "balanced")

# timm's tf_ variants: TensorFlow's "same" padding, as the ImageNet weights were trained (their
# probe features beat the symmetric-padding variants by 4-5 points on the emoji folder of
# benchmarks/real_folders.py)
DEFAULT_BACKBONES = (
    "timm/tf_efficientnet_lite0",
    "timm/tf_efficientnet_lite1",
    "timm/tf_efficientnet_lite2",
)


def default_backbones() -> list[str]:
    """EfficientNet-Lite0, 1 and 2 where their ImageNet weights are at hand without a download
    (``tlkit[offline]`` or a cache), else Lite0 alone (downloaded when first used)."""
    return [n for n in DEFAULT_BACKBONES if weights_at_hand(n)] or [DEFAULT_BACKBONES[0]]


def check_arguments(
    backbone_name: str | Sequence[str] | None,
    weights: str | Path | None,
    key_map: Any,
    budget: Any,
    recipe: str,
    image_size: int | None,
    geometry: str,
    seed: int = 0,
) -> tuple[list[str], float | None]:
    """``(backbone names, budget in seconds)``; a bad argument raises before any work."""
    check_seed(seed)
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}")
    seconds = parse_budget(budget)
    if image_size is not None:
        check_positive_int("image_size", image_size)
        if image_size > MAX_IMAGE_SIZE:
            raise ValueError(
                f"image_size must be at most {MAX_IMAGE_SIZE} px, got {image_size} (a batch of "
                f"16 images at that size is {192 * image_size**2 / 2**30:,.1f} GiB of float32)"
            )
    if backbone_name is None:
        names = default_backbones() if weights is not None else [DEFAULT_BACKBONES[0]]
    else:
        names = [backbone_name] if isinstance(backbone_name, str) else list(backbone_name)
    if not names or len(set(names)) < len(names):
        raise ValueError(f"backbone_name must be one name or several different ones, got {names}")
    for name in names:
        check_name(name)  # a typo fails now, not after the images are checked
    if len(names) > 1 and weights is not None and str(weights).lower() != "imagenet":
        raise ValueError(
            f"weights={str(weights)!r} with {len(names)} backbones: a checkpoint file holds the "
            "weights of one architecture; compare several with weights='imagenet' (or None), "
            "or pass one backbone_name with its file"
        )
    check_key_map(key_map)
    return names, seconds


def read_datasets(
    train: ImageDataset | str | Path,
    val: ImageDataset | str | Path | None,
    background: Sequence[int],
    on_error: Any,
) -> tuple[ImageDataset, ImageDataset | None]:
    """The training and validation datasets, checked: two classes or more, the same classes
    on both sides, and (without ``val``) two images per class to cross-validate."""
    data = as_dataset(train, background, on_error)
    held_out = as_dataset(val, background, on_error) if val is not None else None
    if len(data.classes) < 2:
        raise ValueError(f"a classifier needs at least two classes, found {data.classes}")
    if held_out is not None and held_out.classes != data.classes:
        raise ValueError(f"val has classes {held_out.classes}, train has {data.classes}")
    if held_out is not None and held_out.multi_label != data.multi_label:
        kinds = {True: "several labels per image", False: "one label per image"}
        raise ValueError(
            f"val has {kinds[held_out.multi_label]}, train has {kinds[data.multi_label]}"
        )
    if held_out is None and data.multi_label:
        counts = [int(c) for c in data.targets.sum(0)]
        if min(counts) < 2:
            raise ValueError(
                f"label {data.classes[counts.index(min(counts))]!r} has {min(counts)} image; "
                "validating without val= needs at least 2 images of each label (or pass val=)"
            )
    elif held_out is None:
        counts = [data.targets.count(c) for c in range(len(data.classes))]
        if min(counts) < 2:
            raise ValueError(
                f"class {data.classes[counts.index(min(counts))]!r} has {min(counts)} image; "
                "validating without val= needs at least 2 per class (or pass val=)"
            )
    return data, held_out


def as_dataset(
    source: ImageDataset | str | Path, background: Sequence[int], on_error: Any
) -> ImageDataset:
    """``source`` itself, or the [tlkit.ImageDataset][] of a folder or CSV."""
    if isinstance(source, ImageDataset):
        return source
    return ImageDataset.from_path(source, background=background, on_error=on_error)


def check_class_weight(class_weight: Any, sampler: Any = "shuffle") -> None:
    """Raise unless ``class_weight`` is ``"auto"``, ``"balanced"``, ``None`` or a mapping of
    class names to positive weights (the names are checked once the classes are known), and
    ``sampler`` is one ``check_sampler`` allows with it.

    Examples:
        >>> check_class_weight({"cat": 2.0})
        >>> check_class_weight("balance")
        Traceback (most recent call last):
        ...
        ValueError: class_weight must be 'auto', 'balanced', None or {class name: weight}, ...
    """
    check_sampler(sampler, class_weight)
    if class_weight is None or (isinstance(class_weight, str) and class_weight in CLASS_WEIGHTS):
        return
    if isinstance(class_weight, Mapping) and class_weight:
        bad = {
            k: v
            for k, v in class_weight.items()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf
        }
        if not bad:
            return
        raise ValueError(f"class weights must be positive finite numbers, got {bad}")
    raise ValueError(
        "class_weight must be 'auto', 'balanced', None or {class name: weight}, got "
        f"{class_weight!r}"
    )


def check_sampler(sampler: Any, class_weight: Any) -> None:
    """Raise unless ``sampler`` is ``"shuffle"`` or ``"balanced"``, and ``"balanced"`` comes
    with class weights to draw the images by.

    Examples:
        >>> check_sampler("balanced", "auto")
        >>> check_sampler("balanced", None)
        Traceback (most recent call last):
        ...
        ValueError: sampler='balanced' (--sampler balanced) draws each image by its class's ...
    """
    if not (isinstance(sampler, str) and sampler in SAMPLERS):
        raise ValueError(f"sampler must be 'shuffle' or 'balanced', got {sampler!r}")
    if sampler == "balanced" and class_weight is None:
        raise ValueError(
            "sampler='balanced' (--sampler balanced) draws each image by its class's weight, "
            "but class_weight=None gives no weights (--class-weight none): use "
            "class_weight='auto', 'balanced' or {class name: weight}"
        )


def sampler_for(
    sampler: str, weights: list[float] | None, multi_label: bool, why: str
) -> tuple[Literal["shuffle", "balanced"], str]:
    """How fine-tuning draws its images once the class weights are known, and ``why`` (the
    reason for the weights) with what the sampler adds to it.

    Raises:
        ValueError: For ``"balanced"`` with several labels per image (an image is not of one
            class to draw it by).

    Examples:
        >>> sampler_for("balanced", [0.6, 3.0], False, "skewed")[1]
        "skewed; the probe's loss weighs by them, fine-tuning draws its images by them instead ..."
        >>> sampler_for("balanced", None, False, "even")
        ('shuffle', 'even; the balanced sampler is not needed: every image weighs alike')
    """
    if sampler == "shuffle":
        return "shuffle", why
    if multi_label:
        raise ValueError(
            "sampler='balanced' needs one label per image; with several, class_weight weighs "
            "each label's positive images in the loss: use sampler='shuffle'"
        )
    if weights is None:
        return "shuffle", f"{why}; the balanced sampler is not needed: every image weighs alike"
    drawn = "fine-tuning draws its images by them instead (a balanced sampler)"
    return "balanced", f"{why}; the probe's loss weighs by them, {drawn}"


def class_weight_for(
    class_weight: Any, targets: Sequence[int] | torch.Tensor, classes: Sequence[str]
) -> tuple[list[float] | None, str]:
    """The loss weight of each of ``classes`` (``None``: all alike) for images of class
    indices ``targets``, and the reason.
    ``"auto"`` weighs the classes ``"balanced"`` when the largest has more than
    ``AUTO.imbalance_ratio`` times the images of the smallest.

    Raises:
        ValueError: For a mapping that misses a class or names an unknown one.

    Examples:
        >>> weights, why = class_weight_for("auto", [0] * 10 + [1] * 2, ["big", "small"])
        >>> weights, why.split(":")[0]
        ([0.6, 3.0], 'classes differ in size up to 5.0 to 1 (more than 4)')
    """
    names = list(classes)
    if isinstance(targets, torch.Tensor) and targets.dim() == 2:
        return multi_label_weight(class_weight, targets, names)
    counts = torch.bincount(torch.tensor(list(targets)), minlength=len(names))
    ratio = float(counts.max()) / max(float(counts.min()), 1.0)
    sizes = f"classes differ in size up to {ratio:.1f} to 1"
    if isinstance(class_weight, Mapping):
        missing = [c for c in names if c not in class_weight]
        unknown = [c for c in class_weight if c not in names]
        if missing or unknown:
            raise ValueError(
                f"class_weight must give one weight to each class {names}: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {missing}" if missing else "",
                        f"unknown {unknown}" if unknown else "",
                    )
                    if part
                )
            )
        weights = [float(class_weight[c]) for c in names]
        return weights, f"{sizes}: class weights as given; choices by balanced accuracy"
    if class_weight is None or (class_weight == "auto" and ratio <= AUTO.imbalance_ratio):
        why = f"{sizes}: every image weighs alike"
        limit = f" (classes are weighted from {AUTO.imbalance_ratio:g} to 1)"
        return None, why + (limit if class_weight else "")
    n, k = float(counts.sum()), len(names)
    weights = [n / (k * float(c)) if c else 0.0 for c in counts]
    given = "" if class_weight == "balanced" else f" (more than {AUTO.imbalance_ratio:g})"
    return [round(w, 6) for w in weights], (
        f"{sizes}{given}: balanced class weights (each class weighs as much in the loss); "
        "choices by balanced accuracy"
    )


def multi_label_weight(
    class_weight: Any, targets: torch.Tensor, names: list[str]
) -> tuple[list[float] | None, str]:
    """The weight of each label's positive images (``pos_weight``) for multi-hot ``targets``,
    and the reason. ``"auto"`` and ``None`` weigh every image alike: choices are made on the
    mean average precision, which a label's rarity does not bias as it biases accuracy.

    Examples:
        >>> class_weight_for("balanced", torch.tensor([[1, 0], [1, 1], [1, 0]]), ["a", "b"])[0]
        [0.0, 2.0]
    """
    targets = targets.float()
    positives = targets.sum(0)
    rarest = names[int(positives.argmin())]
    sizes = (
        f"{len(names)} labels, {float(targets.sum(1).mean()):.2f} per image; the rarest "
        f"({rarest!r}) on {int(positives.min())} of {len(targets)} images"
    )
    if isinstance(class_weight, Mapping):
        unknown = [c for c in class_weight if c not in names]
        if unknown:
            raise ValueError(f"class_weight names unknown labels {unknown}; the labels: {names}")
        weights = [float(class_weight.get(c, 1.0)) for c in names]
        return weights, f"{sizes}: positive images of each label weighed as given"
    if class_weight == "balanced":
        weights = ((len(targets) - positives) / positives.clamp_min(1)).tolist()
        return [round(float(w), 6) for w in weights], (
            f"{sizes}: each label's positive images weighed by its negatives / positives"
        )
    return None, f"{sizes}: every image weighs alike; choices by mean average precision"


def weigh_classes(plan: Recipe, class_weight: Any, sampler: str, data: ImageDataset) -> None:
    """Set ``plan``'s class weights and sampler for the images of ``data``, with the reason."""
    plan.class_weight, why = class_weight_for(class_weight, data.targets, data.classes)
    plan.sampler, why = sampler_for(sampler, plan.class_weight, data.multi_label, why)
    plan.reasons.append(why)


def start_plan(
    recipe: str,
    geometry: Geometry,
    data: ImageDataset,
    held_out: ImageDataset | None,
    compute: Compute,
) -> Recipe:
    """The recipe before training, with the reasons that do not depend on it."""
    plan = Recipe(name="full" if recipe == "full" else "probe", image_size=0)
    plan.reasons.append(reasons.computing(str(compute), distributed.world()[2]))
    plan.reasons.append(reasons.geometry(geometry))
    where = "validated on val" if held_out is not None else "judged by cross-validation"
    if data.multi_label:
        plan.reasons.append(reasons.labels(len(data), len(data.classes), where))
    else:
        plan.reasons.append(reasons.images(len(data), len(data.classes), where))
    return plan
