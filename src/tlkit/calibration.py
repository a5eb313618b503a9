"""Calibrated probabilities: temperature scaling and the expected calibration error.

A classifier's top probability is *calibrated* when, of the images it gives 80%, about 80% are
right. Networks and probes fitted to convergence are usually over-confident; dividing the
logits by one fitted temperature ``T`` (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017) fixes most of it without changing any prediction: the order of the
logits, and so the argmax, stays. [tlkit.finetune][] fits ``T`` on the predictions that judged
the model (out-of-fold or held-out), stores it in ``model.pt`` and in exported models, and
the report shows the expected calibration error before and after.

With several labels per image (multi-hot ``(N, K)`` labels of 0 and 1) each label has its own
probability, ``sigmoid(logit / T)`` with one ``T`` shared by the labels, fitted by binary
cross-entropy; the calibration error then compares, over every (image, label) pair, each bin's
mean probability with how often the label is there.

Examples:
    >>> import torch
    >>> from tlkit.calibration import expected_calibration_error, fit_temperature
    >>> g = torch.Generator().manual_seed(0)
    >>> logits = 2.0 * torch.randn(2000, 3, generator=g)
    >>> labels = torch.multinomial(logits.softmax(1), 1, generator=g).flatten()  # calibrated
    >>> over_confident = 4 * logits
    >>> t = fit_temperature(over_confident, labels)
    >>> round(t, 1)
    4.0
    >>> before = expected_calibration_error(over_confident.softmax(1), labels)
    >>> after = expected_calibration_error((over_confident / t).softmax(1), labels)
    >>> round(before, 2), round(after, 2)
    (0.18, 0.02)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "Reliability",
    "calibration_on",
    "calibration_text",
    "cross_fitted",
    "cross_fitted_ece",
    "ece_difference_se",
    "expected_calibration_error",
    "fit_temperature",
    "logits_of",
    "not_lower_said",
    "reliability",
    "scale",
    "threshold_table",
]

MIN_T, MAX_T = 0.05, 100.0  # a temperature outside is a sign of broken inputs, not of calibration


def _multi_hot(labels: torch.Tensor) -> bool:
    return labels.ndim == 2


def _check(scores: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if _multi_hot(labels):
        if labels.shape != scores.shape or not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError(
                f"multi-hot labels must be 0 or 1, shaped like the {what} "
                f"{tuple(scores.shape)}, got {tuple(labels.shape)}"
            )
    elif scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"{what} must be (N, K) with K >= 2 classes, got {tuple(scores.shape)}")
    elif labels.shape != (scores.shape[0],) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"labels must be N integer class indices, got {tuple(labels.shape)} "
            f"{labels.dtype} for {scores.shape[0]} rows of {what}"
        )
    elif len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= scores.shape[1]):
        raise ValueError(f"labels must lie in 0..{scores.shape[1] - 1}, got {labels.unique()}")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{what} hold NaN or infinite values")


def logits_of(probs: torch.Tensor, *, multi_label: bool = False) -> torch.Tensor:
    """What [tlkit.calibration.scale][] divides: the log of each probability (a row's softmax
    gives the probabilities back), or for several labels per image each one's logit (clamped
    to ``1e-6 .. 1 - 1e-6``).

    Examples:
        >>> logits_of(torch.tensor([[0.5, 0.5]]), multi_label=True)
        tensor([[0., 0.]], dtype=torch.float64)
    """
    if multi_label:
        return torch.logit(probs.double().clamp(1e-6, 1 - 1e-6))
    return probs.double().clamp_min(1e-12).log()


def scale(logits: torch.Tensor, temperature: float, *, multi_label: bool = False) -> torch.Tensor:
    """Probabilities of ``logits`` divided by ``temperature``: the softmax of each row, or for
    several labels per image each label's own sigmoid.

    Examples:
        >>> scale(torch.tensor([[2.0, 0.0]]), 2.0)
        tensor([[0.7311, 0.2689]])
        >>> scale(torch.tensor([[2.0, 0.0]]), 2.0, multi_label=True)
        tensor([[0.7311, 0.5000]])

    Raises:
        ValueError: For a temperature that is not a positive finite number.
    """
    _check_temperature(temperature)
    return (logits / temperature).sigmoid() if multi_label else (logits / temperature).softmax(1)


def _check_temperature(temperature: Any) -> None:
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float)) and 0 < temperature < math.inf
    ):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")


def calibration_on(
    probs: torch.Tensor, labels: torch.Tensor, temperature: float, *, multi_label: bool = False
) -> dict[str, float]:
    """The expected calibration error of a model's ``probs`` (divided by ``temperature``
    before the softmax or sigmoid) on labelled images, and of the same probabilities without
    the temperature: ``{"ece": ..., "ece_without_temperature": ..., "temperature": ...}``. What
    ``tlkit evaluate`` reports, to check on new images what the temperature did.

    Examples:
        >>> labels = torch.tensor([0, 1] * 50)
        >>> sure = torch.tensor([[0.99, 0.01], [0.01, 0.99]]).repeat(50, 1)
        >>> sure[:20] = sure[:20].flip(1)  # 80% right at 0.99
        >>> softened = scale(logits_of(sure), 3.0)  # as a model with temperature 3 gives them
        >>> figures = calibration_on(softened, labels, 3.0)
        >>> round(figures["ece_without_temperature"], 2), figures["ece"] < 0.1
        (0.19, True)

    Raises:
        ValueError: For a temperature that is not a positive finite number, or probabilities
            that do not match ``labels``.
    """
    _check_temperature(temperature)
    raw = scale(
        logits_of(probs, multi_label=multi_label) * temperature, 1.0, multi_label=multi_label
    )
    return {
        "ece": expected_calibration_error(probs.float(), labels),
        "ece_without_temperature": expected_calibration_error(raw.float(), labels),
        "temperature": float(temperature),
    }


def calibration_text(figures: dict[str, float]) -> str:
    """``calibration_on``'s figures in a line.

    Examples:
        >>> calibration_text({"ece": 0.02, "ece_without_temperature": 0.05, "temperature": 1.5})
        'expected calibration error 0.020 (0.050 without the temperature of 1.50)'
    """
    line = f"expected calibration error {figures['ece']:.3f}"
    if figures["temperature"] == 1.0:
        return line + " (no temperature)"
    return (
        f"{line} ({figures['ece_without_temperature']:.3f} without the temperature of "
        f"{figures['temperature']:.2f})"
    )


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature ``T`` that minimises the negative log-likelihood of
    ``softmax(logits / T)`` on ``labels``: L-BFGS on ``log T``, so ``T`` stays positive.

    ``logits`` may be log-probabilities too (a row's constant does not change the softmax).
    ``T > 1`` softens over-confident predictions, ``T < 1`` sharpens timid ones; the argmax
    never changes. Fewer than 2 images, or all of one class, give ``1.0`` (nothing to fit).
    Multi-hot ``labels``: each label's ``sigmoid(logit / T)``, by binary cross-entropy.

    Raises:
        ValueError: For shapes that do not match, labels out of range or non-finite logits.

    Examples:
        >>> labels = torch.tensor([0, 1, 0, 1])
        >>> logits = torch.tensor([[9.0, 0.0], [0.0, 9.0], [0.0, 9.0], [9.0, 0.0]])  # half wrong
        >>> fit_temperature(logits, labels) > 10  # as good as a coin: soften a lot
        True
    """
    _check(logits, labels, "logits")
    if len(labels) < 2 or len(labels.unique()) < 2:
        return 1.0
    multi = _multi_hot(labels)
    x, y = logits.detach().double(), (labels.double() if multi else labels.long())
    loss_of = (
        nn.functional.binary_cross_entropy_with_logits if multi else nn.functional.cross_entropy
    )
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_of(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    return min(max(t, MIN_T), MAX_T) if math.isfinite(t) else 1.0


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's numbers: for each confidence bin with images in it, the mean
    top probability, the accuracy and the number of images."""

    confidence: list[float]
    accuracy: list[float]
    count: list[int]
    edges: list[float]

    @property
    def ece(self) -> float:
        """Expected calibration error: the mean gap between accuracy and confidence, each
        bin weighted by its images."""
        total = sum(self.count)
        if not total:
            return float("nan")
        return (
            sum(
                n * abs(a - c)
                for c, a, n in zip(self.confidence, self.accuracy, self.count, strict=True)
            )
            / total
        )


def reliability(probs: torch.Tensor, labels: torch.Tensor, *, bins: int = 15) -> Reliability:
    """Bin the top probability of each row of ``probs`` ``(N, K)`` into ``bins`` equal-width
    bins of ``[0, 1]`` (15, as Guo et al.) and compare each bin's confidence with its accuracy.
    With multi-hot ``labels``, every probability of every row is binned, and its "accuracy" is
    how often the label is there.

    Examples:
        >>> r = reliability(torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4]]),
        ...                 torch.tensor([0, 1, 0]), bins=5)
        >>> r.count, [round(a, 2) for a in r.accuracy]
        ([1, 2], [1.0, 0.5])
    """
    _check(probs, labels, "probs")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if _multi_hot(labels):  # every (image, label): its probability, whether the label is there
        confidence, right = probs.detach().double().flatten(), labels.double().flatten()
    else:
        confidence, predicted = probs.detach().double().max(1)
        right = (predicted == labels).double()
    index = (confidence * bins).long().clamp(0, bins - 1)
    out: tuple[list[float], list[float], list[int]] = ([], [], [])
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        if n:
            out[0].append(float(confidence[members].mean()))
            out[1].append(float(right[members].mean()))
            out[2].append(n)
    return Reliability(*out, edges=[b / bins for b in range(bins + 1)])


def expected_calibration_error(
    probs: torch.Tensor, labels: torch.Tensor, *, bins: int = 15
) -> float:
    """The expected calibration error of ``probs`` ``(N, K)`` (see
    [tlkit.calibration.reliability][]).

    Examples:
        >>> expected_calibration_error(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
        0.0
    """
    return reliability(probs, labels, bins=bins).ece


def cross_fitted_ece(
    logits: torch.Tensor, labels: torch.Tensor, *, folds: int = 2, seed: int = 0
) -> float:
    """The ECE after temperature scaling, measured honestly: the images are cut into ``folds``
    parts and each part is scaled by the temperature fitted on the others (a temperature
    scores better on the images it was fitted on than on new ones).

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> labels = torch.randint(0, 3, (400,), generator=g)
        >>> logits = 4 * (torch.randn(400, 3, generator=g) + 2 * nn.functional.one_hot(labels, 3))
        >>> cross_fitted_ece(logits, labels) < expected_calibration_error(logits.softmax(1), labels)
        True
    """
    return expected_calibration_error(cross_fitted(logits, labels, folds=folds, seed=seed), labels)


def cross_fitted(
    logits: torch.Tensor, labels: torch.Tensor, *, folds: int = 2, seed: int = 0
) -> torch.Tensor:
    """The probabilities of ``logits`` with each of ``folds`` parts of the images scaled by
    the temperature fitted on the others (what
    [cross_fitted_ece][tlkit.calibration.cross_fitted_ece] scores)."""
    _check(logits, labels, "logits")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    scaled = torch.empty_like(logits, dtype=torch.float64)
    for part in order.tensor_split(folds):
        rest = torch.ones(len(labels), dtype=torch.bool)
        rest[part] = False
        t = fit_temperature(logits[rest], labels[rest])
        scaled[part] = scale(logits[part].double(), t, multi_label=_multi_hot(labels))
    return scaled


def ece_difference_se(
    before: torch.Tensor,
    after: torch.Tensor,
    labels: torch.Tensor,
    *,
    draws: int = 200,
    seed: int = 0,
) -> float:
    """The standard error of ``ECE(before) - ECE(after)``, two sets of probabilities of the same
    images, by the paired bootstrap (the images drawn with replacement ``draws`` times, the
    same draw for both). On a few hundred images ECE moves by a few hundredths from the draw of
    the images alone, so a smaller gain says nothing.

    Examples:
        >>> labels = torch.tensor([0, 1] * 100)
        >>> sure = torch.tensor([[0.99, 0.01], [0.01, 0.99]]).repeat(100, 1)
        >>> sure[:60] = sure[:60].flip(1)  # 70% right at 0.99
        >>> ece_difference_se(sure, sure, labels)  # the same probabilities: no spread
        0.0
        >>> 0 < ece_difference_se(sure, torch.full((200, 2), 0.5), labels) < 0.05
        True

    Raises:
        ValueError: For probabilities of different shapes or not matching ``labels``, or
            ``draws`` below 2.
    """
    _check(before, labels, "before")
    if before.shape != after.shape:
        raise ValueError(
            f"before and after must be probabilities of the same images, got shapes "
            f"{tuple(before.shape)} and {tuple(after.shape)}"
        )
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an integer of at least 2, got {draws!r}")
    generator = torch.Generator().manual_seed(seed)
    gaps = []
    for _ in range(draws):
        index = torch.randint(0, len(labels), (len(labels),), generator=generator)
        gaps.append(
            expected_calibration_error(before[index], labels[index])
            - expected_calibration_error(after[index], labels[index])
        )
    return float(torch.tensor(gaps, dtype=torch.float64).std())


THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def threshold_table(
    known_confidence: torch.Tensor,
    known_correct: torch.Tensor,
    unknown_confidence: torch.Tensor | None = None,
    thresholds: Sequence[float] | None = None,
) -> list[dict[str, float | None]]:
    """What each ``min_confidence`` would do: of the images of known classes, the share
    answered (top probability at least the threshold) and the accuracy of those; of images of
    none of the classes (``unknown_confidence``), the share rejected as unknown.

    Args:
        known_confidence: Top probability of each image of a known class ``(N,)``.
        known_correct: Whether its top class is right ``(N,)``.
        unknown_confidence: Top probability of each image of no class ``(M,)``, if any.
        thresholds: Default 0.3 to 0.95.

    Examples:
        >>> rows = threshold_table(torch.tensor([0.9, 0.8, 0.4]), torch.tensor([True, True, False]),
        ...                        torch.tensor([0.5, 0.95]), thresholds=[0.6])
        >>> rows[0]["answered"], rows[0]["accuracy"], rows[0]["unknown_rejected"]
        (0.6666666666666666, 1.0, 0.5)
    """
    if known_confidence.shape != known_correct.shape or known_confidence.ndim != 1:
        raise ValueError(
            f"known_confidence and known_correct must be (N,) alike, got "
            f"{tuple(known_confidence.shape)} and {tuple(known_correct.shape)}"
        )
    out: list[dict[str, float | None]] = []
    for t in THRESHOLDS if thresholds is None else thresholds:
        answered = known_confidence >= t
        n = int(answered.sum())
        out.append(
            {
                "min_confidence": float(t),
                "answered": n / max(len(known_confidence), 1),
                "accuracy": float(known_correct[answered].double().mean()) if n else None,
                "unknown_rejected": (
                    float((unknown_confidence < t).double().mean())
                    if unknown_confidence is not None and len(unknown_confidence)
                    else None
                ),
            }
        )
    return out


def not_lower_said(figures: dict[str, Any]) -> str:
    """Why a temperature was refused, in words: the gain it had to beat (one standard error of
    it, ``figures["ece_gain_se"]``, or at least ``figures["ece_gain_least"]``).

    Examples:
        >>> not_lower_said({"ece_gain_se": 0.02, "ece_gain_least": 0.001})
        'not lower by more than one standard error (0.020)'
        >>> not_lower_said({"ece_gain_se": 0.0, "ece_gain_least": 0.001})
        'not lower by 0.001'
    """
    spread = figures.get("ece_gain_se") or 0.0
    least = figures.get("ece_gain_least") or 0.0
    if spread > least:
        return f"not lower by more than one standard error ({spread:.3f})"
    return f"not lower by {least:g}"
