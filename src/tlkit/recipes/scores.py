"""How a model's probabilities are scored: each image's score (the keep rules pair them), the
metrics of the probabilities, and their calibration by a temperature."""

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
    scale,
)
from ..metrics import ClassificationMeter, label_ranking_precision, multi_label_metrics
from .settings import AUTO

__all__ = [
    "calibrate",
    "metrics_from_probs",
    "right_per_image",
]


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
