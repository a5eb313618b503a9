"""The candidate backbones of [tlkit.finetune][]: each built with its weights and a new head,
at its size, its feature pass timed, and the intermediate layers its probe reads; then the
speed checks the first plan rests on ([SpeedChecks][tlkit.recipes.candidates.SpeedChecks])."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from .. import distributed, heads
from ..data import ImageDataset
from ..devices import loader_workers
from ..model.images import Geometry
from ..model.network import build_network
from ..taps import LayerTaps, default_layers
from .budget import Budget
from .compute import CPU, Compute, process_batch
from .measure import choose_batch_size, measure, pilot, sample_median_side, time_batches
from .plan import Backbone, Measurements
from .planner import choose_size, plan, tuning_images
from .settings import AUTO
from .views import PREDICTED, Candidate, features

__all__ = ["SpeedChecks", "Speeds", "load_candidates", "tap_layers"]

Speeds = dict[tuple[str, int, int], tuple[float, float, bool, str]]
"""Fine-tuning speed checks made: ``(backbone, size, batch)`` to what
[tlkit.recipes.measure.measure][] returned."""


def load_candidates(
    names: list[str],
    weights: Any,
    key_map: Any,
    image_size: int | None,
    classes: int,
    n_images: int,
    *,
    rate: Callable[[nn.Module, int], float] | None = None,
    compute: Compute | None = None,
) -> list[Candidate]:
    """Each backbone with its ImageNet weights and a new head, at its pretraining size (or
    ``image_size``), and the seconds its probe features would take on ``compute``'s device
    (``rate`` measures images per second; default the frozen body timed on random input)."""
    batch = (compute or CPU).feature_batch  # as the feature passes will run

    def timed(model: nn.Module, size: int) -> float:
        return time_batches(
            model, size, batch, train=False, channels_last=True, timed=1, compute=compute
        )

    rate = rate or timed
    candidates = []
    for name in names:
        model, info = build_network([name], [0], classes, weights=weights, key_map=key_map)
        size = image_size or info.input_size
        per_second = rate(model, size)
        candidate = Candidate(
            name,
            model,
            size,
            tuple(info.mean),
            tuple(info.std),
            channels_last=True,
            info=info,
            seconds=AUTO.probe_views * n_images / per_second,
        )
        if AUTO.probe_taps:
            candidate.taps, candidate.tap_dim = tap_layers(model, size)
        candidates.append(candidate)
    return candidates


def tap_layers(model: nn.Module, size: int) -> tuple[list[str], int]:
    """The intermediate layers the probe reads too ([tlkit.taps.default_layers][]) and the
    width they add; none where their outputs cannot be pooled at ``size``."""
    with heads.headless(model):
        layers = default_layers(model)
        if not layers:
            return [], 0
        try:
            width = LayerTaps(model, layers).out_features(size)
        except (RuntimeError, ValueError):  # an output LayerTaps cannot pool: no taps
            return [], 0
    return layers, width - heads.find_head(model)[1]


@dataclass
class SpeedChecks:
    """What the first plan rests on, measured here before any image is decoded for good: each
    candidate's feature pass (timed on random input by ``load_candidates``), then a real pass
    of the quickest over a part of the folder ([tlkit.recipes.measure.pilot][]: its decoding,
    and the pace of a real pass against the speed check), and, where the plan would fine-tune,
    fine-tuning's own speed."""

    recipe: str
    data: ImageDataset
    held_out: ImageDataset | None
    geometry: Geometry
    image_size: int | None
    compute: Compute | None
    speeds: Speeds = field(default_factory=dict)

    @functools.cached_property
    def median_side(self) -> int:
        """The median shorter side of a sample of the training images, read once when a size
        is to be chosen from it."""
        return sample_median_side(self.data)

    def tuning_size(self, candidate: Candidate) -> tuple[int, str]:
        """The size ``candidate`` would be fine-tuned (and ranked) at, and why."""
        if self.image_size is not None:
            return self.image_size, f"{self.image_size} px: given"
        if candidate.info is None:
            return candidate.size, f"{candidate.size} px: the candidate's"
        return choose_size(candidate.info.input_size, self.median_side)

    def measure(self, candidates: list[Candidate], budget: Budget) -> Measurements:
        """The measurements of ``candidates`` (their ``seconds`` for every image and its
        mirror image); the fine-tuning speed checks made go to ``speeds``. Without a deadline
        nothing is timed beyond the candidates' own checks: every stage runs in full."""
        data, n_val = self.data, len(self.held_out) if self.held_out is not None else 0
        n_images = len(data) + n_val
        per_view = {c.name: c.seconds / (AUTO.probe_views * n_images) for c in candidates}
        backbones = tuple(
            Backbone(name=c.name, seconds=per_view[c.name], width=c.width, dim=c.dim)
            for c in candidates
        )
        m = Measurements(
            recipe=self.recipe,
            n_train=len(data),
            n_val=n_val,
            classes=len(data.classes),
            multi_label=data.multi_label,
            backbones=backbones,
        )
        if budget.deadline is None:
            return m
        quick = min(candidates, key=lambda c: c.seconds)
        size = max(c.size for c in candidates)

        def passes(store: object) -> None:
            features(quick, store, views=PREDICTED, compute=self.compute)  # type: ignore[arg-type]

        images = 2 * (self.compute or CPU).feature_batch  # two batches, as the passes run
        decoding, per_image = pilot(
            data, size, self.geometry, passes, images=images, clock=budget.clock
        )
        pace = per_image / (AUTO.probe_views * per_view[quick.name])
        rank = sum(
            per_view[c.name] * pace * (self.tuning_size(c)[0] / c.size) ** 2 + decoding
            for c in candidates
        )
        workers = loader_workers(AUTO.decode_workers)
        m = replace(m, decode=decoding / workers, rank=rank, pace={"features": pace})
        return self._tuning_speed(m, candidates, budget)

    def _tuning_speed(
        self, m: Measurements, candidates: list[Candidate], budget: Budget
    ) -> Measurements:
        """Where the plan would fine-tune, fine-tuning's speed measured on the backbone it
        would fine-tune first, and every backbone's epoch from it (in proportion to their
        feature passes)."""
        first = plan(m, budget.left())
        if self.recipe == "probe" or not first.runs("fine-tuning"):
            return m
        name = first.stage("fine-tuning").inputs["backbone"]
        candidate = next(c for c in candidates if c.name == name)
        size = self.tuning_size(candidate)[0]
        n_tune = tuning_images(m.n_train, m.n_val)
        batch = choose_batch_size(n_tune)
        rates = measure(candidate.model, size, process_batch(batch), self.compute)
        processes = distributed.world()[2]
        infer, train = rates[0] * processes, rates[1] * processes
        held = m.n_val or m.n_train - n_tune
        epoch = (n_tune / train + held / infer) / (n_tune + held)
        measured = m.backbone(name)
        backbones = tuple(
            replace(b, epoch=epoch * b.seconds / measured.seconds) for b in m.backbones
        )
        self.speeds[(name, size, batch)] = rates
        return replace(m, backbones=backbones)
