"""The probe stage: features of each candidate backbone (each image and its mirror image), a
[tlkit.LinearProbe][] on each and on their concatenation, and the one cross-validation prefers;
with time left, zoomed views of every image that train the chosen probe as augmented copies.

Features are computed once per backbone from the images decoded at the largest size, resized
for each backbone, so several backbones cost one decoding. Near-duplicate images (animation
frames, crops, re-saves) are grouped from the same features and kept in one fold.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import distributed
from .._utils import plural
from ..backbones import BackboneInfo
from ..model.network import load_head, stack
from ..probe import LinearProbe, balancing_weights
from ..stratify import rare_labels
from .budget import Budget, FitPace, shared_clock
from .folds import describe_grouping, fold_groups
from .keep_rule import clearly_better, gain_of
from .scores import metrics_from_probs, right_per_image
from .settings import AUTO
from .store import Decoded
from .views import PREDICTED, VIEWS, ZOOMS, Candidate, features

__all__ = [
    "Candidate",
    "ProbeChoice",
    "ProbeStage",
    "choose_probe",
    "features",
    "metrics_from_probs",
    "probe_network",
    "right_per_image",
    "run_probe",
]


@dataclass
class ProbeChoice:
    """The probe cross-validation preferred, and what it was preferred to."""

    names: list[str]
    probe: LinearProbe
    scores: dict[str, float]
    groups: torch.Tensor
    reasons: list[str]
    probes: dict[str, LinearProbe]
    mirror: bool = True
    taps: bool = False  # whether the probe reads the backbones' intermediate layers too
    zoom: bool = False  # whether zoomed copies of the images trained the probe too
    gains: list[dict[str, Any]] = field(default_factory=list)  # what each choice added


def choose_probe(
    candidates: list[Candidate],
    labels: torch.Tensor,
    classes: int,
    *,
    seed: int,
    log: Callable[[str], None],
    n: int | None = None,
    files: list[str] | None = None,
    budget: Budget | None = None,
    class_weight: list[float] | None = None,
) -> ProbeChoice:
    """Fit a cross-validated [tlkit.LinearProbe][] on each candidate's features and, with
    several, on all of them concatenated. The concatenation (the most the backbones know) is
    kept unless one backbone alone is more accurate out of fold by more than one standard error
    of the paired difference (the one-standard-error rule: on a few hundred images one image
    moves accuracy by half a point, and a choice made on such noise does not carry to new
    images). The mirror images train too, where their features were computed, unless leaving
    them out is better (classes told apart by left and right). Only the first ``n`` images'
    features train (the rest are validation images). Folds keep together near-duplicate
    images and, given their ``files``, the images whose names begin alike
    ([tlkit.file_name_groups][]).

    With a ``budget``, each fit after the first is timed from the ones before it (seconds per
    feature dimension on this machine) and left out when it would end past the deadline: the
    concatenation, then the fit without mirror images, say so in the reasons.

    With ``class_weight`` (one per class) the probes weigh their loss so, and every choice is
    made on balanced accuracy instead of accuracy."""
    n = len(labels) if n is None else n
    y = labels[:n]
    multi = y.dim() == 2
    pooled = _matrix(candidates, slice(0, n), views=1, taps=False)[0]
    found, named, groups = fold_groups(pooled, y, files, n)
    options = [[c] for c in candidates] + ([candidates] if len(candidates) > 1 else [])
    probes: dict[str, LinearProbe] = {}
    pace = FitPace(budget)
    clock = budget.clock if budget is not None else shared_clock
    weights = None if class_weight is None or multi else balancing_weights(y, classes)
    metric = "accuracy" if class_weight is None else "balanced accuracy"
    metric = "mean average precision" if multi else metric

    def fit(
        option: list[Candidate], views: int | None = None, taps: bool = True, zoom: bool = False
    ) -> LinearProbe:
        x = _matrix(option, slice(0, n), views, taps, zoom)
        probe = LinearProbe(
            C=AUTO.probe_C, folds=AUTO.probe_folds, seed=seed, class_weight=class_weight
        )
        extra = len(ZOOMS) if zoom else 0
        return probe.fit(x, y, groups=groups, classes=classes, cv=True, extra_views=extra)

    for option in options:
        if probes and not pace.fits(_dims(option), f"the probe on {_label(option)}"):
            continue
        start = clock()
        probes[_label(option)] = probe = fit(option)
        pace.record(_dims(option), clock() - start)
        log(
            f"probe on {_label(option)}: cross-validated {metric} {_score(probe):.4f} "
            f"(C={probe.C_:g}, {clock() - start:.1f} s)"
        )
    gains: list[dict[str, Any]] = []
    fitted = [o for o in options if _label(o) in probes]
    best = _preferred(fitted, probes, y, weights, gains)
    scores = {label: _score(probe) for label, probe in probes.items()}
    probe = probes[_label(best)]
    taps, probe, taps_reason = _check_taps(best, probe, fit, pace, y, weights, gains)
    mirror, probe, mirror_reason = _check_mirror(best, probe, fit, pace, y, weights, taps, gains)
    zoom, probe, zoom_reason = _check_zoom(best, probe, fit, pace, y, weights, taps, mirror, gains)
    reasons = [
        f"linear probe on {_label(best)}, {AUTO.probe_folds}-fold cross-validation {metric} "
        f"{_scores_said(scores, _label(best), len(options))}; "
        f"{describe_grouping(n, found, named, groups)}",
        *pace.skipped,
        taps_reason,
        mirror_reason,
        zoom_reason,
    ]
    reasons = [r for r in reasons if r]
    return ProbeChoice(
        [c.name for c in best], probe, scores, groups, reasons, probes, mirror, taps, zoom, gains
    )


def _scores_said(scores: dict[str, float], best: str, options: int) -> str:
    """The chosen option's cross-validated score, with every option's when there were several."""
    what = f"{scores[best]:.4f}"
    if options > 1:
        listed = ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        what += (
            f" ({listed}; all together unless one alone is better by more than one standard error)"
        )
    return what


def _mirror_reason(mirror: bool, unmirrored: LinearProbe) -> str:
    """Whether the mirror images train, in words."""
    return f"{'with' if mirror else 'without'} mirror images: {_score(unmirrored):.4f} without " + (
        "them (left out only when better by more than one standard error)"
        if mirror
        else "them, better by more than one standard error: left and right tell the classes apart"
    )


def _check_mirror(
    best: list[Candidate],
    probe: LinearProbe,
    fit: Callable[..., LinearProbe],
    pace: FitPace,
    y: torch.Tensor,
    weights: torch.Tensor | None,
    taps: bool,
    gains: list[dict[str, Any]],
) -> tuple[bool, LinearProbe, str]:
    """Where the mirror images' features were computed: whether they train the probe (unless
    the probe without them is better out of fold by more than one standard error), the probe
    kept, and the reason (none when the check was not made); what they added goes into
    ``gains``."""
    mirrored = all(c.mirror for c in best)
    if not mirrored or not pace.fits(
        _dims(best, taps) / AUTO.probe_views, "the probe without mirror images"
    ):
        return mirrored, probe, ""
    unmirrored = fit(best, views=1, taps=taps)
    mirror = not clearly_better(_right(probe, y), _right(unmirrored, y), weights=weights)[0]
    gains.append(_gain("mirror images", probe, unmirrored, mirror, y, weights))
    return mirror, probe if mirror else unmirrored, _mirror_reason(mirror, unmirrored)


def _check_zoom(
    best: list[Candidate],
    probe: LinearProbe,
    fit: Callable[..., LinearProbe],
    pace: FitPace,
    y: torch.Tensor,
    weights: torch.Tensor | None,
    taps: bool,
    mirror: bool,
    gains: list[dict[str, Any]],
) -> tuple[bool, LinearProbe, str]:
    """Where the zoomed views were computed: whether the probe trains on them too (augmented
    copies of every training image; kept unless the probe without them is better out of fold
    by more than one standard error), the probe kept, and the reason; what they added goes
    into ``gains``."""
    if any(c.features is None or c.features.shape[0] < len(VIEWS) for c in best):
        return False, probe, ""
    views = len(PREDICTED) if mirror else 1
    rows = (views + len(ZOOMS)) / AUTO.probe_views  # against the fits timed so far
    if not pace.fits(_dims(best, taps) * rows, "the probe with zoomed copies of the images"):
        return False, probe, ""
    zoomed = fit(best, views=views, taps=taps, zoom=True)
    worse = clearly_better(_right(zoomed, y), _right(probe, y), weights=weights)[0]
    gains.append(_gain("zoomed views", zoomed, probe, not worse, y, weights))
    if worse:
        reason = (
            f"without zoomed copies of the images: {_score(zoomed):.4f} with them, worse by "
            "more than one standard error"
        )
        return False, probe, reason
    reason = (
        f"with zoomed copies of the images ({AUTO.probe_zoom:.0%} centre enlarged, image "
        f"shrunk to {AUTO.probe_zoom:.0%}) training the probe too: {_score(zoomed):.4f}, "
        f"{_score(probe):.4f} without them (kept unless worse by more than one standard error)"
    )
    return True, zoomed, reason


def _check_taps(
    best: list[Candidate],
    probe: LinearProbe,
    fit: Callable[..., LinearProbe],
    pace: FitPace,
    y: torch.Tensor,
    weights: torch.Tensor | None,
    gains: list[dict[str, Any]],
) -> tuple[bool, LinearProbe, str]:
    """Whether the probe keeps the intermediate layers (unless the final features alone are
    better by more than one standard error), the probe kept, and the reason; what they added
    goes into ``gains``."""
    taps = any(c.taps for c in best)
    if not taps or not pace.fits(_dims(best, taps=False), "the probe without intermediate layers"):
        return taps, probe, ""
    final = fit(best, taps=False)
    taps = not clearly_better(_right(probe, y), _right(final, y), weights=weights)[0]
    gains.append(_gain("intermediate layers", probe, final, taps, y, weights))
    reason = (
        f"with intermediate layers ({_layers(best)}): {_score(final):.4f} on the final "
        "features alone (kept only when better by more than one standard error)"
        if taps
        else f"final features only: {_score(final):.4f}, better by more than one standard "
        f"error than with intermediate layers ({_layers(best)})"
    )
    return taps, probe if taps else final, reason


def _dims(option: list[Candidate], taps: bool = True) -> float:
    """The width of the option's features, with or without the intermediate layers'."""
    return float(sum(c.width if taps else c.width - c.tap_dim for c in option))


def _matrix(
    option: list[Candidate],
    rows: slice,
    views: int | None = None,
    taps: bool = True,
    zoom: bool = False,
) -> torch.Tensor:
    """The option's features ``(V, N, D)`` of the images ``rows``: the first ``views`` (the
    image, its mirror image; default those computed), then the zoomed views when ``zoom``; the
    intermediate layers' too or the final features alone."""
    views = min(len(c.views) for c in option) if views is None else views
    index = list(range(views)) + (list(range(len(PREDICTED), len(VIEWS))) if zoom else [])
    parts = []
    for c in option:
        assert c.features is not None
        part = c.features[index, rows]
        parts.append(part if taps else part[..., c.tap_dim :])
    return torch.cat(parts, -1)


def _layers(option: list[Candidate]) -> str:
    """The intermediate layers read, in words (once when every backbone has the same)."""
    tapped = [c for c in option if c.taps]
    if len(tapped) > 1 and all(c.taps == tapped[0].taps for c in tapped):
        return f"{', '.join(tapped[0].taps)} of each"
    return "; ".join(f"{c.name}: {', '.join(c.taps)}" for c in tapped)


def _preferred(
    options: list[list[Candidate]],
    probes: dict[str, LinearProbe],
    y: torch.Tensor,
    weights: torch.Tensor | None,
    gains: list[dict[str, Any]],
) -> list[Candidate]:
    """The last option (all backbones together), unless the most accurate single backbone is
    clearly better out of fold; what the others added to it goes into ``gains``."""
    default = options[-1]
    single = max(options[:-1] or options, key=lambda o: _score(probes[_label(o)]))
    together, alone = probes[_label(default)], probes[_label(single)]
    better = clearly_better(_right(together, y), _right(alone, y), weights=weights)[0]
    if len(default) > 1:
        gains.append(_gain("backbones together", together, alone, not better, y, weights))
    return single if better else default


def _gain(
    choice: str,
    with_it: LinearProbe,
    without: LinearProbe,
    kept: bool,
    y: torch.Tensor,
    weights: torch.Tensor | None,
) -> dict[str, Any]:
    """What ``choice`` added out of fold: the probe with it against the probe without it."""
    return gain_of(choice, _right(with_it, y), _right(without, y), kept, "out of fold", weights)


def _right(probe: LinearProbe, y: torch.Tensor) -> torch.Tensor:
    """Which images the probe's out-of-fold predictions get right."""
    assert probe.cv_probs_ is not None
    return right_per_image(probe.cv_probs_, y)


def _score(probe: LinearProbe) -> float:
    assert probe.C_ is not None
    return probe.cv_accuracy_[probe.C_]


def best_single(choice: ProbeChoice, candidates: list[Candidate]) -> Candidate:
    """The backbone whose probe alone scored best, of those fitted before the deadline."""
    fitted = [c for c in candidates if c.name in choice.scores]
    return max(fitted, key=lambda c: choice.scores[c.name])


def probe_network(choice: ProbeChoice, candidates: list[Candidate], classes: int) -> nn.Module:
    """The chosen candidates' network with the fitted probe as its head's last layer."""
    chosen = [c for c in candidates if c.name in choice.names]
    if len(chosen) == 1 and not (choice.taps and chosen[0].taps):
        model = chosen[0].model
    else:
        taps = [c.taps if choice.taps else [] for c in chosen]
        model = stack([c.model for c in chosen], [c.size for c in chosen], classes, taps)
    load_head(model, choice.probe.to_linear())
    return model.eval()


def _label(option: list[Candidate]) -> str:
    return "+".join(c.name for c in option)


@dataclass
class ProbeStage:
    """What the probe stage produced: the choice, its network, and what judged it."""

    choice: ProbeChoice
    model: nn.Module
    size: int
    val_probs: torch.Tensor  # out-of-fold on the training images, or on val= images
    tuning_start: nn.Module  # the best single backbone, untouched, for fine-tuning
    best_name: str
    sizes: dict[str, int]
    infos: dict[str, BackboneInfo]
    taps: dict[str, list[str]]
    start: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)  # (V, N, D)

    def tuning_head(self, rows: torch.Tensor | None = None) -> nn.Linear:
        """A head for tuning the best single backbone from its probe (``lp-ft``, the top
        blocks): that probe, or the same probe (its C, its class weights) refit on the final
        features of the training images ``rows`` only, where the tuned network will be judged
        on the others (a head fitted on every image has seen them: judged on them, the tuned
        network would look better than it is), or where the probe also read intermediate
        layers (which the network being tuned does not)."""
        probe = self.choice.probes[self.best_name]
        if rows is None and not self.taps[self.best_name]:
            return probe.to_linear()
        assert probe.C_ is not None and probe.weight_ is not None and self.start is not None
        x, y = self.start
        if rows is not None:
            x, y = x[:, rows], y[rows]
        refit = LinearProbe(C=probe.C_, class_weight=probe.class_weight)
        return refit.fit(x, y, classes=probe.weight_.shape[0], cv=False).to_linear()


def run_probe(
    candidates: list[Candidate],
    sets: Decoded,
    classes: int,
    seed: int,
    log: Callable[[str], None],
    budget: Budget | None = None,
    class_weight: list[float] | None = None,
) -> ProbeStage:
    """The cross-validated choice among the candidates whose features are computed (fits that
    would end past the ``budget``'s deadline left out, said in the reasons) and its network."""
    n, labels, val_images = sets.counts[0], sets.train_labels(), sets.val_images
    with warnings.catch_warnings():  # labels too rare for every fold: said in the reasons
        warnings.simplefilter("ignore")
        choice = choose_probe(
            candidates,
            labels,
            classes,
            seed=seed,
            log=log,
            n=n,
            files=sets.files,
            budget=budget,
            class_weight=class_weight,
        )
    choice = distributed.agree(choice)  # under torchrun: rank 0's, on every process
    rare = rare_labels(labels[:n], AUTO.probe_folds) if labels.dim() == 2 else []
    if rare:
        choice.reasons.append(
            f"{plural(len(rare), 'label')} on fewer images than the {AUTO.probe_folds} folds "
            "(some folds train without them, so their average precision is a rough figure): "
            + ", ".join(str(i) for i in rare[:10])
        )
    best = best_single(choice, candidates)
    tuning_start = copy.deepcopy(best.model)  # on the device, as the features left it
    model = probe_network(choice, candidates, classes)
    chosen = [c for c in candidates if c.name in choice.names]
    if val_images is None:
        assert choice.probe.cv_probs_ is not None
        probs = choice.probe.cv_probs_
    else:
        views = len(PREDICTED) if choice.mirror else 1
        x = _matrix(chosen, slice(n, None), views, choice.taps)
        probs = choice.probe.predict_proba(x)
    size = max(c.size for c in chosen)
    sizes = {c.name: c.size for c in candidates}
    infos = {c.name: c.info for c in candidates if c.info is not None}
    taps = {c.name: list(c.taps) for c in candidates}
    views = len(PREDICTED) if choice.mirror else 1  # the best backbone's final features
    start = (_matrix([best], slice(0, n), views, taps=False), labels[:n])  # for tuning heads
    return ProbeStage(
        choice, model, size, probs, tuning_start, best.name, sizes, infos, taps, start
    )
