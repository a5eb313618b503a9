"""The probe's features: each candidate backbone with its network, size and features, the views
of each image they are computed on, and the passes that compute them within the time given.

Each image is seen as itself and as its mirror image (both averaged at prediction when the
mirror images train the probe) and, when the time left allows after every chosen backbone's
pass, zoomed in and out: copies that only train the probe (augmentation), as the random crops
of fine-tuning do. Time goes to the images first: where the budget allows every image or its
mirror image but not both, the mirror images are left out (a new image teaches the probe more
than a mirrored copy of one it has), and the zoomed views come after the mirror images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .. import heads
from .._utils import plural
from ..backbones import BackboneInfo
from ..taps import LayerTaps
from . import reasons
from .compute import CPU, Compute
from .settings import AUTO
from .store import Decoded, ImageStore, to_model_input

__all__ = [
    "PREDICTED",
    "VIEWS",
    "ZOOMS",
    "Candidate",
    "add_zoomed_views",
    "compute_features",
    "features",
]


def _zoom_in(x: torch.Tensor) -> torch.Tensor:
    """The centre ``AUTO.probe_zoom`` of each image, enlarged to the whole square."""
    size = x.shape[-1]
    side = round(size * AUTO.probe_zoom)
    top = (size - side) // 2
    crop = x[..., top : top + side, top : top + side]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


def _zoom_out(x: torch.Tensor) -> torch.Tensor:
    """Each image shrunk to ``AUTO.probe_zoom`` of the square, its edges extended around it."""
    size = x.shape[-1]
    side = round(size * AUTO.probe_zoom)
    small = F.interpolate(
        x, size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )
    before = (size - side) // 2
    after = size - side - before
    return F.pad(small, (before, after, before, after), mode="replicate")


VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "image": lambda x: x,
    "mirror": lambda x: x.flip(-1),
    "zoom in": _zoom_in,
    "zoom out": _zoom_out,
}
"""The views of each image whose features the probe can use, in the order of a
``Candidate.features`` tensor: the image and its mirror image (both averaged at prediction when
the mirror images train), then two zoomed views that only train (augmented copies)."""
PREDICTED = ("image", "mirror")
ZOOMS = ("zoom in", "zoom out")


@dataclass
class Candidate:
    """A backbone considered for the probe: its network (with a head), size and features."""

    name: str
    model: nn.Module
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels_last: bool = False
    info: BackboneInfo | None = None
    seconds: float = 0.0  # a feature pass over every image and its mirror image, here
    mirror: bool = True  # whether the mirror images' features are computed too
    taps: list[str] = field(default_factory=list)  # intermediate layers read too
    tap_dim: int = 0  # the width they add
    features: torch.Tensor | None = field(default=None, repr=False)  # (views, N, taps + D),
    # the views of VIEWS in order: the image and its mirror image, then the zooms where computed

    @property
    def views(self) -> tuple[str, ...]:
        """The views of each image computed first: the image, and its mirror image where
        ``mirror``."""
        return PREDICTED if self.mirror else PREDICTED[:1]

    @property
    def pass_seconds(self) -> float:
        """Seconds of the feature pass over the ``views`` of every image, here."""
        return self.seconds * len(self.views) / len(PREDICTED)

    @property
    def dim(self) -> int:
        """Length of the final pooled feature vector (the head's input)."""
        return heads.find_head(self.model)[1]

    @property
    def width(self) -> int:
        """Length of the features computed: the intermediate layers' and the final ones."""
        return self.features.shape[-1] if self.features is not None else self.tap_dim + self.dim


@torch.no_grad()
def features(
    candidate: Candidate,
    images: ImageStore,
    *,
    batch: int | None = None,
    views: tuple[str, ...] = PREDICTED,
    compute: Compute | None = None,
) -> torch.Tensor:
    """Pooled features ``(V, N, D)`` (float32, on the CPU) of decoded images, resized to the
    candidate's size and computed on ``compute``'s device (default the CPU): one per view of
    ``VIEWS`` named in ``views`` (default the image and its mirror image); the pooled outputs
    of the candidate's ``taps`` layers first when it has some ([tlkit.LayerTaps][]). Only a
    ``batch`` of images (default ``compute.feature_batch``) is in memory at a time.

    Raises:
        ValueError: For a view that is not one of ``VIEWS``."""
    unknown = [view for view in views if view not in VIEWS]
    if unknown:
        raise ValueError(f"unknown view {unknown[0]!r}: the views are {', '.join(VIEWS)}")
    compute = compute or CPU
    batch = batch or compute.feature_batch
    model = candidate.model.eval().to(compute.device)
    layout = torch.channels_last if candidate.channels_last else torch.contiguous_format
    out: list[list[torch.Tensor]] = [[] for _ in views]
    with heads.headless(model) as (_, _head):
        model.to(memory_format=layout)
        network = LayerTaps(model, candidate.taps) if candidate.taps else model
        for chunk in images.batches(batch):
            x = to_model_input(
                chunk, candidate.size, candidate.mean, candidate.std, compute.device, layout
            )
            for view, pooled in zip(views, out, strict=True):
                with compute.autocast():
                    y = network(VIEWS[view](x).contiguous(memory_format=layout))
                pooled.append(y.float().flatten(1).cpu())
        model.to(memory_format=torch.contiguous_format)
    return torch.stack([torch.cat(pooled) for pooled in out])


def compute_features(
    candidates: list[Candidate],
    sets: Decoded,
    compute: Compute | None,
    room: Callable[[], float | None],
    clock: Callable[[], float],
    log: Callable[[str], None],
    pace: float = 1.0,
) -> tuple[list[Candidate], list[str], float]:
    """Each candidate's features of its ``views`` (each process computing its rows) while each
    pass fits the seconds ``room()`` gives the passes still to come, asked afresh before each
    (``None``: every pass), at the pace measured so far: each pass is predicted at its speed
    check's seconds times ``pace`` at first, then times the pace of the passes before it. The
    first pass always runs. Returns those computed, why the others were not, and the seconds
    the passes took."""
    spent = estimated = 0.0
    computed: list[Candidate] = []
    skipped: list[str] = []
    for candidate in candidates:
        pace = spent / estimated if estimated else pace
        need = candidate.pass_seconds * pace
        left = room() if computed else None
        if left is not None and need > left:
            skipped.append(reasons.features_not_computed(candidate.name, need, pace, left))
            continue
        layers = plural(len(candidate.taps), "intermediate layer")
        inside = f" and {layers}" if candidate.taps else ""
        mirrors = " and their mirror images" if candidate.mirror else ""
        log(
            f"features of {candidate.name}{inside} at {candidate.size} px: "
            f"{sum(sets.counts)} images{mirrors} (about {need:.0f} s here)"
        )
        began = clock()
        candidate.features = _pass(candidate, sets, candidate.views, compute)
        spent, estimated = spent + clock() - began, estimated + candidate.pass_seconds
        computed.append(candidate)
    return computed, skipped, spent


def add_zoomed_views(
    candidates: list[Candidate],
    sets: Decoded,
    compute: Compute | None,
    log: Callable[[str], None],
) -> None:
    """The zoomed views of every image for each candidate, after the views it has."""
    log(f"zoomed views of every image for {len(candidates)} backbone(s)")
    for candidate in candidates:
        assert candidate.features is not None
        zoomed = _pass(candidate, sets, ZOOMS, compute)
        candidate.features = torch.cat([candidate.features, zoomed])


def _pass(
    candidate: Candidate, sets: Decoded, views: tuple[str, ...], compute: Compute | None
) -> torch.Tensor:
    """The candidate's features of ``views`` of every image, each process computing its rows."""
    mine = features(candidate, sets.everything(), views=views, compute=compute)
    return sets.gather(mine.transpose(0, 1)).transpose(0, 1)
