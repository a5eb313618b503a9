"""Ranking several backbones before their features are computed: LogME
([tlkit.rank_backbones][]) on a stratified sample of the images, each backbone at the size it
would train at. The plan ([tlkit.recipes.planner.plan][]) decides whether to rank and on how
many images."""

from __future__ import annotations

from pathlib import Path

from ..data import ImageDataset
from ..ranking import BackboneScore, rank_backbones
from .compute import CPU, Compute

__all__ = ["rank_sample"]


def rank_sample(
    names: list[str],
    sizes: dict[str, int],
    weights: str | Path | None,
    data: ImageDataset,
    images: int,
    seed: int,
    compute: Compute | None = None,
    note: str = "",
) -> tuple[list[BackboneScore], str]:
    """LogME of each backbone at ``sizes[name]`` px on a stratified sample of ``images`` of
    ``data``, best first, and the choice in words (``note`` said after the sample's size)."""
    scores = []
    for name in names:
        scores += rank_backbones(
            [(name, None if weights is None else str(weights))],
            data,
            image_size=sizes[name],
            max_images=images,
            seed=seed,
            verbose=False,
            device=compute.device if compute else "cpu",
            batch_size=(compute or CPU).feature_batch,  # as its speed was estimated
        )
    ranking = sorted(scores, key=lambda score: score.score, reverse=True)
    return ranking, (
        f"backbone {ranking[0].name}: best LogME score of {len(ranking)} candidates on "
        f"{ranking[0].images} images{note} ("
        + ", ".join(f"{r.name} {r.score:.3f}" for r in ranking)
        + ")"
    )
