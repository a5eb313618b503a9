"""How a model is judged: which images the probe's folds keep together, each image's score,
the metrics of the probabilities that judge it, and their calibration."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..calibration import (
    cross_fitted,
    ece_difference_se,
    expected_calibration_error,
    fit_temperature,
    logits_of,
    not_lower_said,
    scale,
)
from ..groups import file_name_groups, join_groups, near_duplicate_groups
from ..metrics import ClassificationMeter, label_ranking_precision, multi_label_metrics
from ..stratify import label_sets
from .settings import AUTO

__all__ = [
    "calibrate",
    "calibration_reason",
    "describe_grouping",
    "fold_groups",
    "metrics_from_probs",
    "right_per_image",
    "usable_groups",
]


def fold_groups(
    final: torch.Tensor, y: torch.Tensor, files: list[str] | None, n: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The near-duplicates found from the first ``n`` images' ``final`` features ``(N, D)``,
    the files named alike, and the groups the folds keep together."""
    found = near_duplicate_groups(final, threshold=AUTO.duplicate_similarity)
    keys = label_sets(y) if y.dim() == 2 else y
    named = file_name_groups(files[:n], keys, folds=AUTO.probe_folds) if files else None
    groups = usable_groups(found if named is None else join_groups(found, named), y)
    return found, named, groups


def describe_grouping(
    n: int, found: torch.Tensor, named: torch.Tensor | None, groups: torch.Tensor
) -> str:
    """What the folds kept together, in words."""
    similar = f"features' cosine similarity >= {AUTO.duplicate_similarity:g}"
    kinds = [f"{n - len(found.unique())} near-duplicate images ({similar})"]
    if named is not None:
        kinds.append(f"{n - len(named.unique())} images named like another of their class")
    if len(groups.unique()) < n:
        together = f"{n} images in {len(groups.unique())} groups"
        return f"folds keep together {' and '.join(kinds)}: {together}"
    if len(found.unique()) < n or (named is not None and len(named.unique()) < n):
        return (
            f"found {' and '.join(kinds)}, but grouping them would leave a class in one group: "
            "folds split image by image"
        )
    return f"no near-duplicate or alike-named images found ({similar})"


def right_per_image(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Which images probabilities ``(N, K)`` classify right; for multi-hot labels how well
    each image's labels are ranked, from 0 to 1 (the per-image scores the keep rules pair)."""
    if labels.dim() == 2:
        return label_ranking_precision(probs, labels)
    return probs.argmax(1) == labels


def metrics_from_probs(
    probs: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor | None = None
) -> dict[str, Any]:
    """Accuracy, loss, per-class accuracy and confusion matrix of probabilities ``(N, K)``;
    for multi-hot labels, [tlkit.metrics.multi_label_metrics][] at ``thresholds``."""
    if labels.dim() == 2:
        return multi_label_metrics(probs, labels, thresholds)
    meter = ClassificationMeter(confusion=True)
    log_probs = probs.clamp_min(1e-12).log()
    meter.update(nn.functional.nll_loss(log_probs, labels), log_probs, labels)
    return meter.compute()


def usable_groups(groups: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``groups``, except that the images of a class held in fewer than 2 groups become groups
    of their own: a class in one group would be missing from the training part of the fold
    that holds it out, and every image of it predicted wrong.

    Examples:
        >>> usable_groups(torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 1])).tolist()
        [3, 4, 1, 1, 2]
    """
    out, fresh = groups.clone(), int(groups.max()) + 1
    columns = labels.T.bool() if labels.dim() == 2 else [labels == c for c in labels.unique()]
    for column in columns:
        members = column.nonzero().flatten()
        if len(groups[members].unique()) < 2:
            out[members] = torch.arange(fresh, fresh + len(members))
            fresh += len(members)
    return out


def calibrate(
    probs: torch.Tensor, labels: torch.Tensor
) -> tuple[float, torch.Tensor, dict[str, float]]:
    """The temperature fitted on the probabilities that judged the model, those probabilities
    scaled by it, and the expected calibration error before and after (see
    [tlkit.calibration][]). "After" is cross-fitted: each half of the images scaled by the
    temperature fitted on the other. When that is not lower than before by more than one
    standard error of the difference (paired bootstrap over the images) and at least
    ``AUTO.calibration_gain`` (a model already calibrated, predictions all right and sure, or
    too few images to tell), the temperature is left at 1. With multi-hot
    ``labels``, one temperature scales every label's logit.

    Examples:
        >>> labels = torch.tensor([0, 1] * 50)
        >>> probs = torch.tensor([[0.99, 0.01], [0.01, 0.99]]).repeat(50, 1)
        >>> probs[:20] = probs[:20].flip(1)  # 80% right, all at 0.99
        >>> t, scaled, figures = calibrate(probs, labels)
        >>> t > 1, figures["ece"] < figures["ece_before"]
        (True, True)
        >>> calibrated = torch.tensor([[0.8, 0.2], [0.2, 0.8]]).repeat(50, 1)
        >>> calibrated[:20] = calibrated[:20].flip(1)  # 80% right at 0.8: nothing to fix
        >>> calibrate(calibrated, labels)[0]
        1.0
    """
    multi = labels.dim() == 2  # each label's own probability: its logit is scaled
    scores = logits_of(probs, multi_label=multi)
    fitted = fit_temperature(scores, labels)
    before = expected_calibration_error(probs, labels)
    crossed = cross_fitted(scores, labels)
    scaled = expected_calibration_error(crossed, labels)
    spread = ece_difference_se(probs.double(), crossed, labels)
    better = before - scaled >= max(spread, AUTO.calibration_gain)
    temperature = fitted if better else 1.0
    figures = {
        "ece_gain_least": AUTO.calibration_gain,
        "temperature": temperature,
        "fitted_temperature": fitted,
        "ece_before": before,
        "ece_scaled": scaled,
        "ece_gain_se": spread,
        "ece": scaled if better else before,
    }
    return temperature, scale(scores, temperature, multi_label=multi).float(), figures


def calibration_reason(method: str, figures: dict[str, float]) -> str:
    """What calibration did, in words."""
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
