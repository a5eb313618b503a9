"""The keep rule: below a few dozen images per class, auto trains a probe and fine-tunes; this
decides which of the two models it returns."""

from __future__ import annotations

import math

import torch

from .._utils import plural
from .settings import AUTO

__all__ = ["fine_tuning_wins"]


def fine_tuning_wins(
    probe_right: torch.Tensor, tuned_right: torch.Tensor, margin: float = AUTO.keep_margin
) -> tuple[bool, str]:
    """Keep the fine-tuned model rather than the probe? Only when it is more accurate on the
    same validation images by more than one standard error of the paired difference: the
    one-standard-error rule (Breiman et al., "Classification and Regression Trees", 1984;
    Hastie, Tibshirani and Friedman, "The Elements of Statistical Learning", section 7.10),
    which keeps the simpler model unless the other is better beyond the noise of the estimate.

    The probe is the simpler and the steadier of the two: on Fashion-MNIST at 50 images per
    class, fine-tuning scored 75.9-79.8% on the test images in five runs of
    ``benchmarks/auto_recipe.py`` with one seed, against the probe's 78.7% in every run, and a
    fine-tuned model's validation score is the best of up to 12 epochs. The rule is only used
    below 60 training images per class: above, a validation set of a hundred-odd images did not
    resolve fine-tuning's 2-3 point lead (``benchmarks/keep_rule.py``), so auto fine-tunes
    without a probe. ``margin`` is in standard errors (that benchmark compares 0, 0.5 and 1).

    Examples:
        >>> right = torch.tensor([True] * 70 + [False] * 5)
        >>> fine_tuning_wins(right, right.roll(2))[0]  # 2 images each way: a tie
        False
        >>> fine_tuning_wins(torch.tensor([True] * 40 + [False] * 35), right)[0]
        True
    """
    n = len(probe_right)
    only_probe = int((probe_right & ~tuned_right).sum())
    only_tuned = int((tuned_right & ~probe_right).sum())
    gain = (only_tuned - only_probe) / n  # mean of the per-image differences (+1, 0 or -1)
    # its standard error if the two were equally accurate (McNemar's), which stays sound when
    # few images differ, unlike the sample estimate
    error = math.sqrt(only_tuned + only_probe) / n
    probe, tuned = probe_right.float().mean().item(), tuned_right.float().mean().item()
    scores = (
        f"validation accuracy {tuned:.4f} fine-tuned, {probe:.4f} probe: "
        f"{plural(only_tuned, 'image')} right only when fine-tuned, "
        f"{only_probe} only by the probe"
    )
    if gain > margin * error:
        return True, (
            f"kept the fine-tuned model ({scores}; +{gain:.4f} > {margin:g} s.e. {error:.4f})"
        )
    return False, (
        f"kept the probe ({scores}; {gain:+.4f} <= {margin:g} s.e. {error:.4f}): fine-tuning is "
        f"kept only when better by more than {margin:g} standard error"
    )
