"""The plan of [tlkit.finetune][] as data: which stages run, on what, for how many predicted
seconds, and why, from the settings, what was measured here and the time left.

[plan][tlkit.recipes.planner.plan] is a pure function: no clock, no files, no models. The
executor ([tlkit.recipes.run][]) calls it once the speed checks are done, then again with what
each stage measured (LogME's order, the pace of the feature passes, the fine-tuning speed, the
time left), and runs the stages still to come as the new plan says.

The stages, in order (``STAGES``): ``ranking`` (LogME on a sample, only when not every backbone
fits and the order could change what is kept), ``decoding`` (every image the probe will see,
once, at the largest size), ``features`` (each kept backbone's pass over each image and, where
they fit, their mirror images), ``zoomed views`` (copies that train the probe, with time left),
``probe fits`` (the cross-validated probes), ``fine-tuning`` and ``calibration``.

Where the time left is known, the probe's stages (decoding, features, zoomed views and fits)
share ``share`` of it: ``AUTO.probe_share_alone`` when nothing follows them, else what
fine-tuning is planned to need (as many epochs as fit, at most ``AUTO.max_epochs``), from
``AUTO.probe_share`` up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..model.result import Recipe
from . import reasons
from .plan import STAGES, Backbone, Measurements, Plan, RecipeName, Stage
from .settings import AUTO, Settings

__all__ = [
    "choose_size",
    "fit_count",
    "fit_seconds",
    "plan",
    "plan_candidates",
    "plan_finetune",
    "plan_sample",
    "tuning_images",
    "zoomed_fit_seconds",
]


def choose_size(native: int, median_side: int) -> tuple[int, str]:
    wanted = max(64, min(native, 8 * math.ceil(median_side * 2.5 / 8)))
    if wanted >= native:
        return native, f"{native} px: the backbone's pretraining size"
    return wanted, (
        f"{wanted} px: the images are small (median side {median_side} px), and upscaling them "
        f"to the backbone's {native} px would cost {native**2 / wanted**2:.1f}x the compute"
    )


def tuning_images(n_train: int, n_val: int, settings: Settings = AUTO) -> int:
    """Training images fine-tuning trains on: all of them with validation images, else all
    but a held-out fold of about ``settings.val_fraction``.

    Examples:
        >>> tuning_images(140, 0), tuning_images(140, 30)
        (120, 140)
    """
    if n_val:
        return n_train
    folds = round(1 / settings.val_fraction)
    return n_train - math.ceil(n_train / folds)


def fit_seconds(
    backbones: Sequence[Backbone], classes: int, mirror: bool, settings: Settings = AUTO
) -> float:
    """Seconds per training image that the probe's cross-validated fits take (at
    ``settings.probe_fit_seconds`` per image, view and feature, and in proportion above 10
    classes or labels: the weights grow with them; each fit costs
    ``settings.probe_fit_overhead`` more, counted by [fit_count][tlkit.recipes.planner.fit_count]):
    each backbone alone and, with several, all together, on both views; then the preferred one
    once more without the intermediate layers (where there are some), and once more on one view
    (where the mirror images are computed: else every fit is on one view).

    Examples:
        >>> one = Backbone(name="a", seconds=0.01, width=1000, dim=1000)
        >>> fit_seconds([one], 10, mirror=False) == AUTO.probe_fit_seconds * 1000
        True
    """
    dims = [b.width for b in backbones]
    tapped = sum(b.dim for b in backbones if b.width > b.dim)
    options = sum(dims) * (2 if len(dims) > 1 else 1) + tapped
    per_feature = settings.probe_fit_seconds * max(1.0, classes / 10)
    if not mirror:
        return per_feature * options
    return per_feature * (settings.probe_views * options + sum(dims))


def fit_count(backbones: Sequence[Backbone], mirror: bool) -> int:
    """The cross-validated fits of [fit_seconds][tlkit.recipes.planner.fit_seconds]: one per
    backbone, one of them all together (with several), one without the intermediate layers
    (where there are some), one on one view (with the mirror images).

    Examples:
        >>> a = Backbone(name="a", seconds=0.01, width=1600, dim=1280)
        >>> fit_count([a], mirror=False), fit_count([a, a], mirror=True)
        (2, 5)
    """
    tapped = any(b.width > b.dim for b in backbones)
    return len(backbones) + (len(backbones) > 1) + tapped + mirror


def zoomed_fit_seconds(
    backbones: Sequence[Backbone], classes: int, settings: Settings = AUTO
) -> float:
    """Seconds per training image of the one more fit the zoomed views take: the probe on
    every backbone, on the image, its mirror image and both zoomed views.

    Examples:
        >>> one = Backbone(name="a", seconds=0.01, width=1000, dim=1000)
        >>> zoomed_fit_seconds([one], 10) == AUTO.probe_fit_seconds * 4 * 1000
        True
    """
    per_feature = settings.probe_fit_seconds * max(1.0, classes / 10)
    return per_feature * (settings.probe_views + 2) * sum(b.width for b in backbones)


def plan_candidates(
    seconds: Mapping[str, float], room: float | None, priority: Sequence[str] | None = None
) -> tuple[list[str], str | None]:
    """Which candidate backbones the probe computes features for: each costs
    ``seconds[name]`` (a pass over one view of every image, measured here). All of them when
    they fit ``room`` seconds; else, going through them by ``priority`` (default: the costliest
    first, as larger ImageNet models tend to transfer better), those that still fit; the
    cheapest alone when none does. Kept in the given order; the second value says what was left
    out, or is ``None``.

    Examples:
        >>> seconds = {"a": 10.0, "b": 30.0, "c": 50.0}
        >>> plan_candidates(seconds, 50.0)[0], plan_candidates(seconds, 80.0)[0]
        (['c'], ['b', 'c'])
    """
    names = list(seconds)
    if room is None or sum(seconds.values()) <= max(room, 0.0):
        return names, None
    order = list(priority or sorted(names, key=lambda n: -seconds[n]))
    chosen: set[str] = set()
    for name in order:
        if sum(seconds[n] for n in chosen) + seconds[name] <= max(room, 0.0):
            chosen.add(name)
    chosen = chosen or {min(names, key=lambda n: seconds[n])}
    kept = [n for n in names if n in chosen]
    left_out = [n for n in names if n not in chosen]
    if not left_out:  # one backbone, over the room anyway: the sample says what gives
        return kept, None
    return kept, reasons.backbones_left_out(kept, left_out, sum(seconds[n] for n in kept), room)


def plan_sample(
    n_train: int, classes: int, per_image: float, room: float | None
) -> tuple[int, str | None]:
    """How many training images the probe can see: all of them when decoding them, their
    features and the probe's fits (``per_image`` seconds each, measured here) fit ``room``
    seconds, else as many as fit, at least two per class; the second value says why a sample,
    or is ``None``.

    Examples:
        >>> plan_sample(1000, 10, 0.05, 510.0)[0], plan_sample(1000, 10, 0.05, 25.5)[0]
        (1000, 510)
    """
    if room is None or n_train * per_image <= room:
        return n_train, None
    n = max(int(max(room, 0.0) / per_image), 2 * classes)
    if n >= n_train:  # two per class are needed anyway: all of them, over the budget
        return n_train, None
    return n, reasons.sampled(n, n_train, per_image, room)


def plan(m: Measurements, left: float | None, settings: Settings = AUTO) -> Plan:
    """The stages and their predicted seconds, from the measurements and the ``left`` seconds
    of budget (``None``: no budget, every stage runs in full). Stages in ``m.done`` keep their
    decisions (``m.sample``, ``m.kept``, ``m.mirror``) and their time is not counted.

    Examples:
        >>> lite = Backbone(name="lite0", seconds=0.02, width=1600, dim=1280)
        >>> m = Measurements(n_train=200, classes=10, backbones=(lite,), decode=0.001)
        >>> p = plan(m, 120.0)
        >>> p.backbones, p.sample, p.mirror, p.runs("fine-tuning"), p.runs("zoomed views")
        (('lite0',), 200, True, False, True)
        >>> round(p.stage("features").seconds, 1)  # 200 images and their mirror images
        8.0
    """
    if m.recipe == "full":
        return _full(m, left, settings)
    tuning, share = _tuning(m, left, settings)
    top, share = _top_blocks(m, left, tuning, share, settings)
    left_for_probe = left
    ranking = Stage("ranking", False)
    said: list[str] = []
    if m.kept is None:
        seconds = {b.name: _pass(b, m, m.n_train + m.n_val) for b in m.backbones}
        kept, why = plan_candidates(seconds, _room(m, left, share), m.ranked)
        ranking = _ranking(m, seconds, left, share, kept, settings)
        if ranking.run and left is not None:  # ranked, the order may keep others
            left_for_probe = left - ranking.seconds
            kept, why = plan_candidates(seconds, _room(m, left_for_probe, share), m.ranked)
        said += [why] if why else []
    else:
        kept = list(m.kept)
    order = list(m.ranked or [b.name for b in m.backbones])
    chosen = [m.backbone(name) for name in kept]
    room = _room(m, left_for_probe, share)
    if m.sample is None:  # decoding is counted per image here
        whole = None if left_for_probe is None else share * max(left_for_probe, 0.0)
        sample, mirror, chosen, why_sample = _sample(m, chosen, order, whole, settings)
        said += why_sample
    else:
        sample, mirror = m.sample, m.mirror is not False
    n_images = sample + m.n_val
    views = settings.probe_views if mirror else 1
    features = sum(_pass(b, m, n_images) for b in chosen) * views
    fit_pace = m.pace.get("probe fits", 1.0)
    fits = fit_seconds(chosen, m.classes, mirror, settings) * sample
    fits = (fits + settings.probe_fit_overhead * fit_count(chosen, mirror)) * fit_pace
    zoom = _zoom(m, features, fits, mirror, room, settings)
    if zoom.run:  # one more fit, of the chosen probe on the zoomed copies too
        zoomed = zoomed_fit_seconds(chosen, m.classes, settings) * sample
        fits += (zoomed + settings.probe_fit_overhead) * fit_pace
    decoding = Stage("decoding", "decoding" not in m.done, m.decode * n_images)
    names = tuple(b.name for b in chosen)
    stages = (
        ranking,
        decoding,
        Stage("features", "features" not in m.done, features, "", {"backbones": names}),
        zoom,
        Stage("probe fits", "probe fits" not in m.done, fits),
        top,
        tuning,
        Stage("calibration", True),
    )
    return Plan(stages, names, tuple(order), sample, mirror, share, left, tuple(said))


def _pass(backbone: Backbone, m: Measurements, images: int) -> float:
    """Seconds of ``backbone``'s pass over one view of ``images``, at the measured pace."""
    return backbone.seconds * images * m.pace.get("features", 1.0)


def _room(m: Measurements, left: float | None, share: float) -> float | None:
    """Seconds the probe's features and fits may take: ``share`` of the time left, less the
    decoding still to come (of every image: a sample decodes fewer, and has room to spare)."""
    if left is None:
        return None
    room = share * max(left, 0.0)
    if "decoding" not in m.done:
        room -= m.decode * (m.n_train + m.n_val)
    return room


def _full(m: Measurements, left: float | None, s: Settings) -> Plan:
    """``recipe="full"``: the first backbone fine-tuned from a new head, no probe."""
    first = m.backbones[0]
    epoch = first.epoch_seconds(s) * (m.n_train + m.n_val)
    need = epoch * s.max_epochs if left is None else min(epoch * s.max_epochs, max(left, 0.0))
    epochs = max(1, min(s.max_epochs, int(need / epoch))) if epoch > 0 else s.max_epochs
    runs = {
        "decoding": Stage("decoding", "decoding" not in m.done, m.decode * (m.n_train + m.n_val)),
        "fine-tuning": Stage(
            "fine-tuning", True, need, "", {"backbone": first.name, "epochs": epochs}
        ),
        "calibration": Stage("calibration", True),
    }
    stages = tuple(runs.get(name, Stage(name, False)) for name in STAGES)
    return Plan(stages, (first.name,), (first.name,), m.n_train, True, 1.0, left)


def _tuning(m: Measurements, left: float | None, s: Settings) -> tuple[Stage, float]:
    """The fine-tuning stage, and the share of the time left the probe's stages may take.

    Fine-tuning runs for ``lp-ft``; for ``auto`` from ``s.few_per_class`` images per class to
    fine-tune on, when ``s.min_finetune_epochs`` of the quickest backbone (the one the probe
    chose, once it has) fit ``1 - s.probe_share`` of the time left (all of it once the probe
    has run). It is planned at as many epochs as fit that (at most ``s.max_epochs``), and the
    probe's stages may take the rest, between ``s.probe_share`` and ``s.probe_share_alone`` of
    the time left; ``s.probe_share_alone`` when nothing follows them."""
    if m.recipe == "probe":
        return Stage("fine-tuning", False), s.probe_share_alone
    n_tune = tuning_images(m.n_train, m.n_val, s)
    few = n_tune / m.classes < s.few_per_class
    if m.recipe == "auto" and few:
        why = reasons.no_fine_tuning_few(n_tune / m.classes, s)
        return Stage("fine-tuning", False, 0.0, why), s.probe_share_alone
    if m.recipe == "auto" and "top blocks" in m.done:  # tuned where it fitted instead
        return Stage("fine-tuning", False), s.probe_share_alone
    options = [b for b in m.backbones if m.tuned in (None, b.name)]
    quickest = min(options, key=lambda b: b.epoch_seconds(s))
    epoch = quickest.epoch_seconds(s) * (m.n_train + m.n_val)  # trained on or scored
    inputs: dict[str, Any] = {"backbone": quickest.name, "epochs": s.max_epochs}
    if left is None:
        return Stage("fine-tuning", True, epoch * s.max_epochs, "", inputs), s.probe_share
    probed = "probe fits" in m.done
    room = max(left, 0.0) if probed else (1 - s.probe_share) * max(left, 0.0)
    least = s.min_finetune_epochs * epoch
    if m.recipe == "auto" and least > room:
        why = reasons.no_fine_tuning_slow(least, room, quickest.epoch is not None, probed, s)
        return Stage("fine-tuning", False, least, why, inputs), s.probe_share_alone
    need = min(epoch * s.max_epochs, room)
    inputs["epochs"] = max(1, min(s.max_epochs, int(need / epoch))) if epoch > 0 else 1
    share = min(max(1 - need / max(left, 1e-9), s.probe_share), s.probe_share_alone)
    return Stage("fine-tuning", True, need, "", inputs), s.probe_share_alone if few else share


def _top_blocks(
    m: Measurements, left: float | None, tuning: Stage, share: float, s: Settings
) -> tuple[Stage, float]:
    """The top-blocks stage ([tlkit.recipes.top_blocks][]), and the share of the time left the
    probe's stages may then take.

    For ``auto`` with one label per image, where fine-tuning everything does not run, from
    ``s.top_few_per_class`` images per class to tune on, when the prefix's pass over every
    training image and its mirror image and ``s.top_min_epochs`` epochs (each
    ``s.top_epoch_cost`` times a feature pass of the images it trains on) fit ``1 -
    s.probe_share`` of the time left (all of it once the probe has run). It is planned at as
    many epochs as fit that (at most ``s.top_max_epochs``) on the costliest backbone (the one
    the probe chose, once it has), and the probe's stages may take the rest."""
    off = Stage("top blocks", False)
    if m.recipe != "auto" or tuning.run or m.multi_label or "top blocks" in m.done:
        return off, share
    if m.n_val:
        return replace(off, reason=reasons.no_top_blocks_val()), share
    n_tune = tuning_images(m.n_train, m.n_val, s)
    if n_tune / m.classes < s.top_few_per_class:
        return replace(off, reason=reasons.no_top_blocks_few(n_tune / m.classes, s)), share
    options = [b for b in m.backbones if m.tuned in (None, b.name)]
    chosen = max(options, key=lambda b: b.seconds)
    cache = _pass(chosen, m, m.n_train + m.n_val) * s.probe_views
    epoch = s.top_epoch_cost * _pass(chosen, m, n_tune) * s.probe_views
    inputs: dict[str, Any] = {"backbone": chosen.name, "epochs": s.top_max_epochs}
    if left is None:
        return Stage("top blocks", True, cache + epoch * s.top_max_epochs, "", inputs), share
    probed = "probe fits" in m.done
    room = max(left, 0.0) if probed else (1 - s.probe_share) * max(left, 0.0)
    least = cache + s.top_min_epochs * epoch
    if least > room:
        why = reasons.no_top_blocks_slow(least, room, probed, s)
        return Stage("top blocks", False, least, why, inputs), share
    need = min(cache + epoch * s.top_max_epochs, room)
    inputs["epochs"] = max(1, min(s.top_max_epochs, int((need - cache) / epoch)))
    share = min(max(1 - need / max(left, 1e-9), s.probe_share), share)
    return Stage("top blocks", True, need, "", inputs), share


def _ranking(
    m: Measurements,
    seconds: Mapping[str, float],
    left: float | None,
    share: float,
    kept: list[str],
    s: Settings,
) -> Stage:
    """LogME's ranking: when not every backbone fits, on folders larger than its sample, with
    one label per image, and only when a backbone other than the quickest could still fit
    after it; on as many images (at most ``s.rank_images``) as fit ``s.rank_share`` of the
    time left."""
    if m.ranked is not None or "ranking" in m.done or len(kept) == len(seconds):
        return Stage("ranking", False)
    if m.n_train <= s.rank_images or m.multi_label or left is None:
        return Stage("ranking", False)
    quickest = min(seconds, key=lambda n: seconds[n])
    after = share * (1 - s.rank_share) * max(left, 0.0)
    if not any(v <= after for n, v in seconds.items() if n != quickest):
        why = reasons.no_ranking_quickest_alone()
        return Stage("ranking", False, 0.0, why)
    allowed = s.rank_share * max(left, 0.0)
    least = min(m.n_train, max(s.rank_least_per_class * m.classes, 50))
    if allowed < least * m.rank:
        why = reasons.no_ranking_slow(len(seconds), least, least * m.rank, left, s)
        return Stage("ranking", False, least * m.rank, why)
    sample = min(s.rank_images, m.n_train)
    inputs: dict[str, Any] = {"images": sample, "note": ""}
    if allowed < sample * m.rank:
        inputs = {"images": int(allowed / m.rank), "note": f", fewer to fit {s.rank_share:.0%}"}
    return Stage("ranking", True, inputs["images"] * m.rank, "", inputs)


def _sample(
    m: Measurements, chosen: list[Backbone], order: list[str], room: float | None, s: Settings
) -> tuple[int, bool, list[Backbone], list[str]]:
    """The training images the probe sees, whether their mirror images are computed, the
    backbones kept, and why. Where not every image fits with its mirror image, the mirror
    images are left out (a new image teaches the probe more than a mirrored copy), and where
    not every image fits even then, a stratified sample of them does. Rather than keep fewer
    than ``s.least_sampled`` of the images, the last backbone in ``order`` is left out, while
    more than one is left."""
    said: list[str] = []

    def sample(option: list[Backbone], mirror: bool) -> tuple[int, str | None]:
        views = s.probe_views if mirror else 1
        passes = sum(_pass(b, m, 1) for b in option) * views
        pace = m.pace.get("probe fits", 1.0)
        per_image = m.decode + passes + fit_seconds(option, m.classes, mirror, s) * pace
        fixed = (m.decode + passes) * m.n_val  # the validation images: decoded and passed
        fixed += s.probe_fit_overhead * fit_count(option, mirror) * pace
        return plan_sample(m.n_train, m.classes, per_image, None if room is None else room - fixed)

    while True:
        mirrored, why = sample(chosen, mirror=True)
        one_view = why is not None  # not every image with its mirror image: one view each
        n, why = sample(chosen, mirror=False) if one_view else (mirrored, why)
        if why is None or len(chosen) == 1 or n >= s.least_sampled * m.n_train:
            break
        last = max(chosen, key=lambda b: order.index(b.name) if b.name in order else len(order))
        chosen = [b for b in chosen if b is not last]
        said.append(reasons.backbone_left_out(last.name, n, m.n_train, s))
    if one_view:
        said.append(reasons.no_mirror_images(mirrored, m.n_train))
    said += [why] if why else []
    return n, not one_view, chosen, said


def _zoom(
    m: Measurements,
    features: float,
    fits: float,
    mirror: bool,
    room: float | None,
    s: Settings,
) -> Stage:
    """Zoomed views of every image (as many views again as the image and its mirror image),
    when the mirror images are computed and the zoomed pass and twice the probe's fits (a fit
    with the zoomed copies has twice the rows) fit the probe's room after the features; without
    a budget, always."""
    if "zoomed views" in m.done or not mirror:
        return Stage("zoomed views", False)
    seconds = features * 2 / s.probe_views  # zoomed in and out: two views per image
    spent = 0.0 if "features" in m.done else features
    if room is not None and spent + seconds + 2 * fits > room:
        return Stage("zoomed views", False, seconds)
    return Stage("zoomed views", True, seconds)


def plan_finetune(
    name: RecipeName,
    recipe: Recipe,
    *,
    n_train: int,
    n_val: int,
    infer_rate: float,
    train_rate: float,
    remaining: float | None,
    multi_label: bool = False,
) -> None:
    """How long to fine-tune, into ``recipe`` (its epochs, rates, crops and the reasons), at
    the speeds measured here, once [plan][tlkit.recipes.planner.plan] has said that it does:
    as many epochs as fit the time left (at most ``AUTO.max_epochs``), or without a budget as
    many as see about ``AUTO.images_without_budget`` images. With several labels per image the
    crops are mild (a hard crop cuts a labelled object out while its label stays)."""
    epoch = n_train / train_rate + n_val / infer_rate
    if remaining is None:
        seen = AUTO.images_without_budget
        epochs = max(2, min(AUTO.max_epochs, math.ceil(seen / max(n_train, 1))))
    else:
        epochs = max(1, min(AUTO.max_epochs, int(max(remaining, 0) / epoch)))
    recipe.finetune_epochs = epochs
    recipe.lr, recipe.layer_decay = AUTO.lr, AUTO.layer_decay
    # few passes over the data are better spent on the images than on hard crops of them
    hard = epochs >= AUTO.crop_epochs and not multi_label
    recipe.crop_scale = AUTO.crop_scale if hard else AUTO.mild_crop_scale
    recipe.reasons.append(
        reasons.fine_tuning(
            name,
            rates=(infer_rate, train_rate),
            epochs=epochs,
            budgeted=remaining is not None,
            lr=recipe.lr,
            layer_decay=recipe.layer_decay,
            crop=recipe.crop_scale,
            multi_label=multi_label,
            epoch=epoch,
        )
    )
    if recipe.sampler == "balanced":
        recipe.reasons.append(reasons.balanced_sampler())
