"""What the plan says, in one place: each decision of [tlkit.finetune][] in words, from its
figures and the settings ([tlkit.recipes.settings.AUTO][]) it follows.

The modules that decide (the arguments, the planner, the executor, the feature passes, the
keep rule, calibration) call these. Each sentence names the figure behind it and, where a
setting decides, reads that setting, so that text and rule cannot drift apart. The probe's
choice among backbones, views and layers ([tlkit.recipes.probing][]) and LogME's ranking
([tlkit.recipes.ranking][]) still word their own results, beside the scores they report.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._utils import plural
from ..calibration import not_lower_said
from .settings import AUTO, Settings

__all__ = [
    "backbone_left_out",
    "backbones_left_out",
    "balanced_sampler",
    "calibrated",
    "computing",
    "features_not_computed",
    "fine_tuning",
    "geometry",
    "images",
    "kept",
    "labels",
    "no_fine_tuning_few",
    "no_fine_tuning_slow",
    "no_mirror_images",
    "no_ranking_quickest_alone",
    "no_ranking_slow",
    "over_budget",
    "sampled",
    "thresholds_chosen",
]


def computing(compute: str, processes: int) -> str:
    """Where the fit computes.

    Examples:
        >>> computing("cpu (2 cores), fp32", 1)
        'computing on cpu (2 cores), fp32'
    """
    many = f", {processes} processes under torchrun" if processes > 1 else ""
    return f"computing on {compute}{many}"


def geometry(geometry: str) -> str:
    """How each image becomes a square."""
    if geometry == "pad":
        return (
            "letterboxed: each image fitted whole into the square, the rest filled with the "
            "background colour"
        )
    return "centre-cropped: short side resized"


def labels(n_train: int, labels: int, where: str) -> str:
    """The images of a multi-label folder, and how they are trained and judged."""
    return (
        f"{n_train} training images with several labels each (multi-label) over {labels} "
        f"labels; {where}; binary cross-entropy per label, a threshold per label chosen for its "
        "F1"
    )


def over_budget(seconds: float) -> str:
    """By how much the fit ran past its budget."""
    return f"the budget is spent ({seconds:.0f} s over)"


def images(n_train: int, classes: int, where: str) -> str:
    """``"59.5 training images per class over 4 classes"``: never rounded up to a threshold.

    Examples:
        >>> images(238, 4, "judged by cross-validation")
        '59.5 training images per class over 4 classes; judged by cross-validation'
    """
    shown = f"{n_train / classes:.1f}".removesuffix(".0")
    return f"{shown} training images per class over {classes} classes; {where}"


def backbones_left_out(
    kept: Sequence[str], left_out: Sequence[str], seconds: float, room: float
) -> str:
    """Backbones whose feature passes do not fit the probe's room."""
    return (
        f"probe features of {', '.join(kept)} (about {seconds:.0f} s here); "
        f"{', '.join(left_out)} left out: more than the {max(room, 0):.0f} s the probe has (a "
        "longer budget uses them)"
    )


def sampled(n: int, n_train: int, per_image: float, room: float) -> str:
    """A stratified sample of the training images, as many as fit the probe's room."""
    return (
        f"a stratified sample of {n:,} of the {n_train:,} training images: decoding an image, "
        f"its probe features and the probe's fits take about {per_image * 1000:.0f} ms here, so "
        f"all of them would take {n_train * per_image:.0f} s, more than the "
        f"{max(room, 0):.0f} s the probe has (a longer budget uses more)"
    )


def backbone_left_out(name: str, n: int, n_train: int, s: Settings = AUTO) -> str:
    """A backbone left out rather than see fewer than ``s.least_sampled`` of the images."""
    return (
        f"{name} left out: with it the probe would see {n:,} of the {n_train:,} training "
        f"images, fewer than {s.least_sampled:.0%} (more images help a probe more than another "
        "backbone's features)"
    )


def no_mirror_images(mirrored: int, n_train: int) -> str:
    """The mirror images left out so that more images fit."""
    return (
        f"no mirror images: with them the probe would see {mirrored:,} of the {n_train:,} "
        "training images (a new image teaches it more than a mirrored copy)"
    )


def no_fine_tuning_few(per_class: float, s: Settings = AUTO) -> str:
    """No fine-tuning: fewer than ``s.few_per_class`` images per class to train on."""
    return (
        f"no fine-tuning: {per_class:.1f} images per class to fine-tune on (less any held-out "
        f"fold), fewer than {s.few_per_class}; fine-tuning millions of weights on so few "
        "overfits, a linear head on pretrained features does not"
    )


def no_top_blocks_few(per_class: float, s: Settings = AUTO) -> str:
    """No top blocks: fewer than ``s.top_few_per_class`` images per class to tune on."""
    return (
        f"top blocks not tuned: {per_class:.1f} images per class to tune on (less the held-out "
        f"fold), fewer than {s.top_few_per_class}"
    )


def no_top_blocks_slow(least: float, room: float, probed: bool, s: Settings = AUTO) -> str:
    """No top blocks: their pass and ``s.top_min_epochs`` epochs (``least`` s) do not fit."""
    had = "left" if probed else f"they would have ({1 - s.probe_share:.0%} of the time left)"
    return (
        f"top blocks not tuned: caching their input and {s.top_min_epochs} epochs would take "
        f"about {least:.0f} s here, more than the {room:.0f} s {had}"
    )


def no_top_blocks_val() -> str:
    """No top blocks: validation images are given (they would judge it; not yet done)."""
    return "top blocks not tuned: they are judged on a held-out fold, and val= images are given"


def no_top_blocks_processes() -> str:
    """No top blocks: several processes under torchrun (each holds a part of the images)."""
    return "top blocks not tuned: under torchrun each process holds only a part of the images"


def no_top_blocks_network(name: str) -> str:
    """No top blocks: the network is not one that can be cut before them."""
    return (
        f"top blocks not tuned: {name} is not a network tlkit can cut before its last stages "
        "(timm's EfficientNet family and ResNets can be)"
    )


def top_blocks_verdict(
    name: str,
    epochs: int,
    tuned: torch.Tensor,
    probe: torch.Tensor,
    both: torch.Tensor,
    wins: bool,
    gain: float,
    error: float,
    s: Settings = AUTO,
) -> str:
    """What tuning the top blocks of ``name`` gave on the held-out fold (which images each of
    the tuned network, the probe and both averaged got right), and whether it was kept."""
    scores = (
        f"held-out accuracy {float(tuned.float().mean()):.4f} tuned, "
        f"{float(probe.float().mean()):.4f} probe, {float(both.float().mean()):.4f} both averaged"
    )
    said = (
        f"top {plural(s.top_blocks, 'stage')} of {name} fine-tuned for "
        f"{plural(epochs, 'epoch')} on cached activations from its probe's head ({scores})"
    )
    if wins:
        margin = f"{gain:+.4f} > {s.keep_margin:g} s.e. {error:.4f}"
        return f"{said}: kept the probe and the tuned network averaged ({margin})"
    return (
        f"{said}: kept the probe alone ({gain:+.4f} <= {s.keep_margin:g} s.e. {error:.4f}; "
        f"averaged with the tuned network only when better by more than {s.keep_margin:g} "
        "standard error)"
    )


def no_fine_tuning_slow(
    least: float, room: float, measured: bool, probed: bool, s: Settings = AUTO
) -> str:
    """No fine-tuning: ``s.min_finetune_epochs`` epochs (``least`` seconds) do not fit."""
    source = (
        "measured here"
        if measured
        else f"an epoch estimated at {s.train_slowdown:g} times the feature pass"
    )
    had = "left" if probed else f"it would have ({1 - s.probe_share:.0%} of the time left)"
    return (
        f"no fine-tuning: {s.min_finetune_epochs} epochs would take about {least:.0f} s here "
        f"({source}), more than the {room:.0f} s {had}"
    )


def no_ranking_quickest_alone() -> str:
    """No ranking: after it, only the quickest backbone would fit."""
    return (
        "no LogME ranking: after it, only the quickest backbone's features could fit the time left"
    )


def no_ranking_slow(
    backbones: int, least: int, seconds: float, left: float, s: Settings = AUTO
) -> str:
    """No ranking: ranking on the fewest images it needs takes more than ``s.rank_share``."""
    return (
        f"no LogME ranking: ranking {backbones} backbones on {least} images would take about "
        f"{seconds:.0f} s here, more than {s.rank_share:.0%} of the {max(left, 0):.0f} s left "
        "(a longer budget ranks them)"
    )


def features_not_computed(name: str, need: float, pace: float, left: float) -> str:
    """A backbone's feature pass that no longer fits, at the pace the passes before it ran
    (the seconds to a tenth where whole seconds would read the same).

    Examples:
        >>> features_not_computed("lite2", 11.4, 1.1, 10.6).split(": ")[1][:40]
        'about 11.4 s at the pace of the passes b'
    """
    left = max(left, 0.0)
    digits = 1 if f"{need:.0f}" == f"{left:.0f}" else 0
    return (
        f"features of {name} not computed: about {need:.{digits}f} s at the pace of the passes "
        f"before it ({pace:.1f} times the speed check's estimate), more than the "
        f"{left:.{digits}f} s the probe has left for them"
    )


def fine_tuning(
    name: str,
    *,
    rates: tuple[float, float],
    epochs: int,
    budgeted: bool,
    lr: float,
    layer_decay: float,
    crop: float,
    multi_label: bool,
    epoch: float,
) -> str:
    """How everything is fine-tuned (``name``: ``"lp-ft"`` or ``"full"``), at ``rates``
    (scoring and training images per second) and ``epoch`` seconds an epoch."""
    start = "from the probe's head" if name == "lp-ft" else "from a new head"
    speed = (
        f"this machine: {rates[1]:.0f} img/s training everything, {rates[0]:.0f} img/s "
        f"scoring ({epoch:.0f} s per fine-tuning epoch)"
    )
    if budgeted:
        fits = "fits" if epochs == 1 else "fit"
        why = f"{plural(epochs, 'epoch')} {fits} the time left (at most {AUTO.max_epochs})"
    else:
        why = f"no budget given: epochs scaled to see about {AUTO.images_without_budget:,} images"
    loss = (
        "binary cross-entropy per label"
        if multi_label
        else f"label smoothing {AUTO.label_smoothing:g}"
    )
    return (
        f"fine-tuning everything {start}: {speed}; {why}; AdamW at {lr:g} for the head, "
        f"x{layer_decay:g} per stage towards the input, one-cycle schedule, {loss}, flips and "
        f"random crops of at least {crop:.0%} of the image"
    )


def balanced_sampler() -> str:
    """How a balanced sampler draws fine-tuning's images."""
    return (
        "each epoch draws its images with replacement, each with a chance in proportion to its "
        "class weight (every class about as often with balanced weights); the loss unweighted"
    )


def thresholds_chosen(method: str | None) -> str:
    """Where the multi-label thresholds were chosen."""
    where = (
        "the out-of-fold predictions of the training images"
        if method is None
        else f"the {method} (which also score the model: its F1 there is optimistic; its "
        "mean average precision does not depend on them)"
    )
    return f"a threshold per label, chosen for its F1 on {where}"


def calibrated(method: str, figures: dict[str, float]) -> str:
    """What calibration did: the temperature kept, or why none was (its gain short of
    ``AUTO.calibration_gain`` or of one standard error)."""
    before, scaled, fitted = (
        figures["ece_before"],
        figures["ece_scaled"],
        figures["fitted_temperature"],
    )
    if figures["temperature"] != 1.0:
        return (
            f"probabilities calibrated on the {method}: temperature {fitted:.2f}, expected "
            f"calibration error {before:.3f} before, {scaled:.3f} after (the temperature of "
            "each half fitted on the other)"
        )
    return (
        f"probabilities left as they are: a temperature fitted on the {method} ({fitted:.2f}) "
        f"gave an expected calibration error of {scaled:.3f} on the half it was not fitted on, "
        f"{not_lower_said(figures)} than {before:.3f} without it"
    )


def kept(
    probe_right: torch.Tensor,
    tuned_right: torch.Tensor,
    wins: bool,
    gain: float,
    error: float,
    margin: float,
    weights: torch.Tensor | None = None,
) -> str:
    """Which model the keep rule kept, with the scores and the margin behind it."""
    w = torch.ones(len(probe_right)) if weights is None else weights.float()
    probe = float((probe_right.float() * w).mean())
    tuned = float((tuned_right.float() * w).mean())
    metric = "accuracy" if weights is None else "balanced accuracy"
    if probe_right.dtype == torch.bool:
        only_probe = int((probe_right & ~tuned_right).sum())
        only_tuned = int((tuned_right & ~probe_right).sum())
        detail = (
            f"{plural(only_tuned, 'image')} right only when fine-tuned, "
            f"{only_probe} only by the probe"
        )
    else:  # per-image scores: a multi-label model's label-ranking precision
        metric = "label-ranking precision"
        better = int((tuned_right > probe_right).sum())
        detail = (
            f"{plural(better, 'image')} better ranked when fine-tuned, "
            + str(int((probe_right > tuned_right).sum()))
            + " by the probe"
        )
    scores = f"validation {metric} {tuned:.4f} fine-tuned, {probe:.4f} probe: {detail}"
    if wins:
        return f"kept the fine-tuned model ({scores}; +{gain:.4f} > {margin:g} s.e. {error:.4f})"
    return (
        f"kept the probe ({scores}; {gain:+.4f} <= {margin:g} s.e. {error:.4f}): fine-tuning is "
        f"kept only when better by more than {margin:g} standard error"
    )
