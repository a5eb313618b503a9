"""The keep rule: where auto trains both a probe and a fine-tuned network, this decides which of
the two models it returns."""

from __future__ import annotations

import math
from typing import Any

import torch

from . import reasons
from .settings import AUTO

__all__ = ["clearly_better", "fine_tuning_wins", "gain_of"]


def clearly_better(
    default_right: torch.Tensor,
    other_right: torch.Tensor,
    margin: float = AUTO.keep_margin,
    weights: torch.Tensor | None = None,
) -> tuple[bool, float, float]:
    """``(other is better by more than margin standard errors, gain, standard error)`` from
    which images each of two models gets right: the mean paired difference and its standard
    error were the two equally accurate (McNemar's), sound even when few images differ.
    ``weights`` (mean 1, such as [tlkit.probe.balancing_weights][]) weigh the images: the
    gain is then one of balanced accuracy. Scores from 0 to 1 per image (a multi-label
    model's [label-ranking precision][tlkit.metrics.label_ranking_precision]) compare the same
    way.

    Examples:
        >>> right = torch.tensor([True] * 70 + [False] * 5)
        >>> clearly_better(right, right.roll(2))[0], clearly_better(~right, right)[0]
        (False, True)
    """
    n = len(default_right)
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    difference = other_right.double() - default_right.double()
    gain = float((w * difference).sum()) / n
    error = math.sqrt(float((w.pow(2) * difference.pow(2)).sum())) / n
    return gain > margin * error, gain, error


def fine_tuning_wins(
    probe_right: torch.Tensor,
    tuned_right: torch.Tensor,
    margin: float = AUTO.keep_margin,
    weights: torch.Tensor | None = None,
) -> tuple[bool, str]:
    """Keep the fine-tuned model rather than the probe? Only when it is more accurate on the
    same validation images by more than one standard error of the paired difference: the
    one-standard-error rule (Breiman et al., "Classification and Regression Trees", 1984;
    Hastie, Tibshirani and Friedman, "The Elements of Statistical Learning", section 7.10),
    which keeps the simpler model unless the other is better beyond the noise of the estimate.
    With ``weights`` (classes of very different sizes) the comparison is of balanced accuracy.

    The probe is the simpler and the steadier of the two: on Fashion-MNIST at 50 images per
    class, fine-tuning scored 75.9-79.8% on the test images in five runs of
    ``benchmarks/auto_recipe.py`` with one seed, against the probe's 78.7% in every run, and a
    fine-tuned model's validation score is the best of up to 12 epochs. ``margin`` is in
    standard errors (``benchmarks/keep_rule.py`` compares 0, 0.5 and 1).

    Examples:
        >>> right = torch.tensor([True] * 70 + [False] * 5)
        >>> fine_tuning_wins(right, right.roll(2))[0]  # 2 images each way: a tie
        False
        >>> fine_tuning_wins(torch.tensor([True] * 40 + [False] * 35), right)[0]
        True
    """
    wins, gain, error = clearly_better(probe_right, tuned_right, margin, weights)
    return wins, reasons.kept(probe_right, tuned_right, wins, gain, error, margin, weights)


def gain_of(
    choice: str,
    with_right: torch.Tensor,
    without_right: torch.Tensor,
    kept: bool,
    judged_on: str,
    weights: torch.Tensor | None = None,
) -> dict[str, Any]:
    """What one choice of the recipe added, for ``Recipe.gains``: the model with it against
    the model without it on the same images (``with_right``, ``without_right``: which each
    gets right, or scores from 0 to 1), the gain (with minus without: accuracy, balanced
    accuracy with ``weights``) and its paired standard error, whether the choice was kept,
    and on what it was judged.

    Examples:
        >>> right = torch.tensor([True] * 70 + [False] * 5)
        >>> without = torch.tensor([True] * 60 + [False] * 15)  # 10 images fewer right
        >>> added = gain_of("zoomed views", right, without, True, "out of fold")
        >>> round(added["gain"], 3), round(added["standard_error"], 3), added["images"]
        (0.133, 0.042, 75)
    """
    _, gain, error = clearly_better(without_right, with_right, margin=0.0, weights=weights)
    return {
        "choice": choice,
        "kept": kept,
        "gain": gain,
        "standard_error": error,
        "judged_on": judged_on,
        "images": len(with_right),
    }
