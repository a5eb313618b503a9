"""Metrics of several labels per image: average precision, F1 and per-class thresholds."""

from __future__ import annotations

import pytest
import torch

from tlkit.metrics import average_precision, choose_thresholds, f1_scores, mean_average_precision


def _random(n: int = 120, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    targets = (torch.rand(n, k, generator=g) < 0.3).long()
    scores = (0.6 * targets + torch.rand(n, k, generator=g)).div(1.6)
    return scores, targets


def _ap_by_definition(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Precision at each positive, images taken from the highest score down, ties together."""
    values = []
    for s in scores[truth.bool()].tolist():
        taken = scores >= s
        values.append(float((taken & truth.bool()).sum() / taken.sum()))
    return sum(values) / len(values)


def test_average_precision_ranks_perfectly_reversed_and_as_defined() -> None:
    targets = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]])
    perfect = targets.float()
    assert average_precision(perfect, targets).tolist() == [1.0, 1.0]
    reversed_ap = average_precision(1 - perfect, targets)
    assert reversed_ap.tolist() == [0.5, 0.5]  # both positives tied with every image
    scores, targets = _random()
    ap = average_precision(scores, targets)
    for k in range(4):
        assert float(ap[k]) == pytest.approx(_ap_by_definition(scores[:, k], targets[:, k]))
    assert mean_average_precision(scores, targets) == pytest.approx(float(ap.mean()))
    # a class with no positive image has no AP and is left out of the mean
    targets[:, 3] = 0
    assert average_precision(scores, targets)[3].isnan()
    assert mean_average_precision(scores, targets) == pytest.approx(float(ap[:3].mean()))


def test_f1_counts_pairs_for_micro_and_classes_for_macro() -> None:
    predicted = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    f1 = f1_scores(predicted, targets)
    # class 0: tp 1, fp 1 -> 2/3; class 1: tp 1, fp 1 -> 2/3; class 2: never said nor true
    assert f1["per_class"][:2] == pytest.approx([2 / 3, 2 / 3])
    assert f1["per_class"][2] is None
    assert f1["macro"] == pytest.approx(2 / 3)
    assert f1["micro"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 0))


def test_each_threshold_gives_its_class_the_best_f1_on_the_validation_images() -> None:
    scores, targets = _random(seed=1)
    thresholds = choose_thresholds(scores, targets)
    for k in range(scores.shape[1]):
        best = max(
            f1_scores((scores[:, k : k + 1] >= t).long(), targets[:, k : k + 1])["micro"]
            for t in scores[:, k].tolist()
        )
        chosen = (scores[:, k : k + 1] >= thresholds[k]).long()
        assert f1_scores(chosen, targets[:, k : k + 1])["micro"] == pytest.approx(best)
    targets[:, 0] = 0
    assert float(choose_thresholds(scores, targets)[0]) == 0.5  # nothing to choose from


def test_multi_label_metrics_refuse_what_they_cannot_read() -> None:
    scores, targets = _random()
    with pytest.raises(ValueError, match=r"both be \(N, K\) multi-hot"):
        average_precision(scores, targets[:, :2])
    with pytest.raises(ValueError, match="must be 0 or 1"):
        f1_scores(targets, targets * 2)
    with pytest.raises(ValueError, match="NaN"):
        choose_thresholds(torch.full_like(scores, float("nan")), targets)
