"""Choosing among several backbones within the budget: LogME ([tlkit.rank_backbones][]) on a
sample of the images, each architecture timed first so that ranking takes at most its share of
the time left."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..backbones import backbone
from ..data import ImageDataset
from ..ranking import BackboneScore, rank_backbones
from .budget import shared_clock
from .compute import Compute
from .measure import decode_seconds, time_batches
from .plan import choose_size
from .settings import AUTO

__all__ = ["rank_within_budget"]


def rank_within_budget(
    names: list[str],
    weights: str | Path | None,
    data: ImageDataset,
    image_size: int | None,
    median_side: int,
    seed: int,
    deadline: float | None,
    compute: Compute | None = None,
    *,
    decode: float | None = None,
    clock: Callable[[], float] = shared_clock,
) -> tuple[list[BackboneScore], str]:
    """LogME of each candidate at the size it would train at, best first, and the sample it
    used; with a deadline (on ``clock``), on as many images as fit in a quarter of the time
    left (each architecture timed here first, and decoding at ``decode`` seconds an image,
    measured here when not given), or ``([], reason)`` when too few would."""
    sizes, seconds_per_image = dict.fromkeys(names, image_size or 0), 0.0
    for name in names:
        if image_size is not None and deadline is None:
            continue
        model, info = backbone(name, None)  # the architecture alone: its size, its speed here
        sizes[name] = image_size or choose_size(info.input_size, median_side)[0]
        if deadline is not None:
            seconds_per_image += 1 / time_batches(
                model, sizes[name], 8, train=False, channels_last=True, compute=compute
            )
    sample, note = min(AUTO.rank_images, len(data)), ""
    if deadline is not None:
        if decode is None:
            decode = decode_seconds(data, min(sizes.values()), "crop", clock=clock)
        share = AUTO.rank_share * (deadline - clock())
        per_image = seconds_per_image + len(names) * decode
        least = min(len(data), max(AUTO.rank_least_per_class * len(data.classes), 50))
        if share < least * per_image:
            return [], (
                f"backbone {names[0]}, the first given: ranking {len(names)} backbones on "
                f"{least} images would take about {least * per_image:.0f} s here, more than a "
                f"quarter of the {share / AUTO.rank_share:.0f} s of budget left (a longer --budget "
                "ranks them)"
            )
        if share < sample * per_image:
            sample = int(share / per_image)
            note = ", fewer to fit a quarter of the budget"
    scores = []
    for name in names:
        candidate = (name, None if weights is None else str(weights))
        scores += rank_backbones([candidate], data, image_size=sizes[name], max_images=sample,
                                 seed=seed, verbose=False,
                                 device=compute.device if compute else "cpu")  # fmt: skip
    ranking = sorted(scores, key=lambda score: score.score, reverse=True)
    return ranking, (
        f"backbone {ranking[0].name}: best LogME score of {len(ranking)} candidates on "
        f"{ranking[0].images} images{note} ("
        + ", ".join(f"{r.name} {r.score:.3f}" for r in ranking)
        + ")"
    )
