"""A linear probe done right: multinomial logistic regression on frozen features.

[tlkit.LinearProbe][] follows the protocol of CLIP's linear probes (Radford et al., "Learning
Transferable Visual Models From Natural Language Supervision", ICML 2021: L-BFGS logistic
regression, its regularisation swept on held-out data): features standardised, the loss minimised
to convergence with L-BFGS (no epochs, learning rates or schedules to get wrong), the L2 strength
``C`` chosen by stratified k-fold cross-validation on the training images, then the model refit
on all of them. Several views of each image (the image and its mirror, crops) train as extra
rows, stay together in one fold, and are averaged at prediction; views that only augment the
training rows (``extra_views``: zoomed copies the model will not see at prediction) train but are
not averaged into the out-of-fold predictions. Seconds on cached features.

Given multi-hot labels ``(N, K)`` (several labels per image), the same protocol fits one
logistic regression per label (binary cross-entropy, one shared ``C``), chooses ``C`` by the
out-of-fold mean average precision, and picks each label's decision threshold on the
out-of-fold probabilities (the one that maximises its F1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .metrics import choose_thresholds, mean_average_precision
from .splits import kfold
from .stratify import is_multi_hot

__all__ = ["LinearProbe", "balancing_weights", "class_weights"]

DEFAULT_C = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


class LinearProbe:
    """Multinomial logistic regression with its L2 strength chosen by cross-validation.

    The loss is the mean cross-entropy plus ``|W|² / (2 C n)`` over the ``n`` training rows
    (scikit-learn's ``C``: larger is weaker regularisation), on features standardised with the
    training rows' mean and standard deviation.

    Args:
        C: One inverse regularisation strength, or several to choose from by cross-validation
            (default ``0.01`` to ``3``, six values).
        folds: Cross-validation folds (fewer when a class has fewer images or groups).
        max_iter: L-BFGS iterations per fit.
        seed: Seed of the fold assignment.
        class_weight: ``None`` (every image counts alike), ``"balanced"`` (each class weighs
            as much as any other in the loss: an image of class ``c`` weighs
            ``N / (K * count_c)``, as scikit-learn's) or one weight per class. With weights,
            ``C`` is chosen by balanced accuracy (the mean per-class recall) instead of
            accuracy: on skewed classes accuracy rewards answering the largest one. With
            multi-hot labels, the weight of each label's positive images (``pos_weight`` of
            ``BCEWithLogitsLoss``; ``"balanced"``: negatives / positives).

    Attributes (after [fit][tlkit.LinearProbe.fit]):
        C_: The chosen ``C``.
        cv_accuracy_: Cross-validated accuracy of each ``C`` (balanced accuracy with
            ``class_weight``, mean average precision with multi-hot labels; empty when one
            ``C`` was given and ``cv=False``).
        cv_probs_: Out-of-fold class probabilities ``(N, K)`` at the chosen ``C`` (each image
            predicted by the model that did not see it), or ``None``.
        multi_label_: Whether the labels were multi-hot (then probabilities are per label,
            sigmoid, and do not sum to 1).
        thresholds_: Multi-label only: each label's threshold ``(K,)``, chosen on the
            out-of-fold probabilities for its best F1 (0.5 without cross-validation).
        weight_, bias_: The classifier on standardised features, ``(K, D)`` and ``(K,)``.
        mean_, std_: The standardisation.

    Examples:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> x = torch.randn(60, 8) + torch.arange(3).repeat(20)[:, None]  # 3 shifted clouds
        >>> y = torch.arange(3).repeat(20)
        >>> probe = LinearProbe(folds=3).fit(torch.stack([x, x + 0.1]), y)  # 2 views each
        >>> probe.C_ in LinearProbe().C, probe.predict_proba(x).shape
        (True, torch.Size([60, 3]))
        >>> bool((probe.predict(x) == y).float().mean() > 0.8)
        True
        >>> skewed = LinearProbe(class_weight="balanced").fit(x[:40], y[:40])  # any class sizes
        >>> tags = torch.stack([x[:, 0] > 1, x[:, 1] > 1], 1).long()  # two labels per image
        >>> multi = LinearProbe(folds=3).fit(x, tags)
        >>> multi.predict_proba(x).shape, multi.predict(x).shape, multi.thresholds_.shape
        (torch.Size([60, 2]), torch.Size([60, 2]), torch.Size([2]))
    """

    def __init__(
        self,
        *,
        C: float | Sequence[float] = DEFAULT_C,
        folds: int = 5,
        max_iter: int = 500,
        seed: int = 0,
        class_weight: str | Sequence[float] | None = None,
    ) -> None:
        values = [C] if isinstance(C, (int, float)) else list(C)
        if not values or any(
            isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0 for c in values
        ):
            raise ValueError(f"C must be a positive number or several, got {C!r}")
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise ValueError(f"folds must be an integer of at least 2, got {folds!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        if isinstance(class_weight, str) and class_weight != "balanced":
            raise ValueError(
                f"class_weight must be None, 'balanced' or one weight per class, got "
                f"{class_weight!r}"
            )
        if class_weight is not None and not isinstance(class_weight, str):
            weights = list(class_weight)
            if not weights or any(
                isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < math.inf
                for w in weights
            ):
                raise ValueError(
                    f"class weights must be positive finite numbers, got {class_weight!r}"
                )
        self.class_weight = class_weight
        self.C = tuple(float(c) for c in sorted(values))
        self.folds, self.max_iter, self.seed = folds, max_iter, seed
        self.C_: float | None = None
        self.cv_accuracy_: dict[float, float] = {}
        self.cv_probs_: torch.Tensor | None = None
        self.class_weight_: torch.Tensor | None = None
        self.multi_label_ = False
        self.thresholds_ = torch.empty(0)
        self.weight_ = self.bias_ = self.mean_ = self.std_ = torch.empty(0)

    def fit(
        self,
        features: torch.Tensor,
        labels: Any,
        *,
        groups: Any = None,
        classes: int | None = None,
        cv: bool | None = None,
        extra_views: int = 0,
    ) -> LinearProbe:
        """Choose ``C`` by cross-validation, then fit on every row.

        Args:
            features: ``(N, D)``, or ``(V, N, D)`` for ``V`` views of each of ``N`` images.
            labels: ``N`` class indices, or a multi-hot ``(N, K)`` matrix of 0/1.
            groups: ``N`` group ids: images of one group (near-duplicates, frames of one video)
                are held out together. Default: every image its own group.
            classes: Number of classes (default ``max(labels) + 1``).
            cv: Cross-validate (default: when several ``C`` are given). With one ``C``, ``True``
                still computes ``cv_accuracy_`` and ``cv_probs_``.
            extra_views: How many of the last views only train (augmented copies that
                prediction will not be given): the out-of-fold predictions average the other
                views of each held-out image, as ``predict_proba`` will.

        Returns:
            ``self``.

        Raises:
            ValueError: For features and labels of different lengths, non-finite features,
                labels that are not class indices, or ``extra_views`` that leave no view to
                predict from.
        """
        x, y = self._check(features, labels)
        if (
            isinstance(extra_views, bool)
            or not isinstance(extra_views, int)
            or not (0 <= extra_views < x.shape[0])
        ):
            raise ValueError(
                f"extra_views must be an integer from 0 to {x.shape[0] - 1} (one less than the "
                f"{x.shape[0]} views given), got {extra_views!r}"
            )
        self.multi_label_ = y.dim() == 2
        k = y.shape[1] if self.multi_label_ else int(y.max()) + 1 if classes is None else classes
        if classes is not None and classes != k:
            raise ValueError(f"labels have {k} columns but classes={classes}")
        if not self.multi_label_ and int(y.max()) >= k:
            raise ValueError(f"labels go up to {int(y.max())}, more than classes={k} allow")
        rows = x.reshape(-1, x.shape[-1])
        self.mean_, self.std_ = rows.mean(0), rows.std(0) + 1e-6
        x = (x - self.mean_) / self.std_
        self.cv_accuracy_, self.cv_probs_ = {}, None
        self.class_weight_ = class_weights(self.class_weight, y, k)
        if cv if cv is not None else len(self.C) > 1:
            self.C_ = self._cross_validate(x, y, k, groups, x.shape[0] - extra_views)
        else:
            self.C_ = self.C[0]
        self.weight_, self.bias_ = _fit(x, y, k, self.C_, self.max_iter, None, self.class_weight_)
        if self.multi_label_:
            self.thresholds_ = (
                torch.full((k,), 0.5)
                if self.cv_probs_ is None
                else choose_thresholds(self.cv_probs_, y)
            )
        return self

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, K)`` (per label with multi-hot labels), averaged over
        views when ``features`` is ``(V, N, D)``."""
        if self.C_ is None:
            raise RuntimeError("this LinearProbe is not fitted yet: call fit(features, labels)")
        x = torch.as_tensor(features, dtype=torch.float32)
        x = x if x.dim() == 3 else x.unsqueeze(0)
        return _probs(
            (x - self.mean_) / self.std_, self.weight_, self.bias_, multi=self.multi_label_
        )

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class indices ``(N,)``, or with multi-hot labels the multi-hot ``(N, K)`` of the
        labels whose probability reaches their threshold."""
        probs = self.predict_proba(features)
        if self.multi_label_:
            return (probs >= self.thresholds_).long()
        return probs.argmax(1)

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` on raw features with the standardisation folded in: a model's head."""
        if self.C_ is None:
            raise RuntimeError("this LinearProbe is not fitted yet: call fit(features, labels)")
        layer = nn.Linear(self.weight_.shape[1], self.weight_.shape[0])
        with torch.no_grad():
            layer.weight.copy_(self.weight_ / self.std_)
            layer.bias.copy_(self.bias_ - (self.weight_ * (self.mean_ / self.std_)).sum(1))
        return layer

    def _check(self, features: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.as_tensor(features, dtype=torch.float32)
        x = x if x.dim() == 3 else x.unsqueeze(0)
        y = torch.as_tensor(labels)
        if x.dim() != 3 or x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(f"features must be (N, D) or (V, N, D), got {tuple(features.shape)}")
        multi = y.dim() == 2 and is_multi_hot(y) and len(y) == x.shape[1] and y.shape[1] > 0
        if not multi:
            if y.dim() != 1 or y.is_floating_point() or y.is_complex() or len(y) != x.shape[1]:
                raise ValueError(
                    f"labels must be {x.shape[1]} class indices (one per image) or a multi-hot "
                    f"({x.shape[1]}, K) matrix of 0/1, got {y.dtype} of shape {tuple(y.shape)}"
                )
            if int(y.min()) < 0:
                raise ValueError(f"labels must be class indices >= 0, got {int(y.min())}")
        if not torch.isfinite(x).all():
            raise ValueError("features hold NaN or infinite values")
        return x, y.float() if multi else y.long()

    def _cross_validate(
        self, x: torch.Tensor, y: torch.Tensor, k: int, groups: Any, scored: int
    ) -> float:
        """The ``C`` with the best out-of-fold accuracy (ties: the lower log loss), each
        held-out image predicted from its first ``scored`` views."""
        held_out = kfold(y, self.folds, groups=groups, seed=self.seed)
        probs = {c: torch.zeros(len(y), k) for c in self.C}
        multi = y.dim() == 2
        for held in held_out:
            keep = torch.ones(len(y), dtype=torch.bool)
            keep[held] = False
            start = None
            for c in self.C:  # strongest regularisation first, each fit warm-started
                start = _fit(x[:, keep], y[keep], k, c, self.max_iter, start, self.class_weight_)
                probs[c][held] = _probs(x[:scored, held], *start, multi=multi)
        scores = {}
        per_image = None if self.class_weight_ is None else balancing_weights(y, k)
        for c, p in probs.items():
            if multi:
                loss = float(nn.functional.binary_cross_entropy(p.clamp(1e-7, 1 - 1e-7), y))
                scores[c] = (mean_average_precision(p, y), -loss)
                self.cv_accuracy_[c] = scores[c][0]
                continue
            right = (p.argmax(1) == y).double()
            accuracy = float(right.mean() if per_image is None else (right * per_image).mean())
            loss = float(nn.functional.nll_loss(p.clamp_min(1e-12).log(), y))
            scores[c] = (accuracy, -loss)
            self.cv_accuracy_[c] = accuracy
        best = max(self.C, key=lambda c: scores[c])
        self.cv_probs_ = probs[best]
        return best


def class_weights(
    class_weight: str | Sequence[float] | None, labels: torch.Tensor, classes: int
) -> torch.Tensor | None:
    """One weight per class from ``"balanced"`` (``N / (K * count_c)``, 0 for a class with no
    image; for multi-hot labels each label's negatives / positives) or a list, or ``None``.

    Examples:
        >>> class_weights("balanced", torch.tensor([0, 0, 0, 1]), 2).tolist()
        [0.6666666865348816, 2.0]
    """
    if class_weight is None:
        return None
    if isinstance(class_weight, str) and labels.dim() == 2:
        positives = labels.sum(0)
        return torch.where(positives > 0, (len(labels) - positives) / positives.clamp_min(1), 1.0)
    if isinstance(class_weight, str):
        counts = torch.bincount(labels, minlength=classes).float()
        return torch.where(counts > 0, len(labels) / (classes * counts.clamp_min(1)), 0.0)
    weights = torch.tensor([float(w) for w in class_weight])
    if len(weights) != classes:
        raise ValueError(f"class_weight has {len(weights)} weights for {classes} classes")
    return weights


def balancing_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """A weight per image such that the weighted mean of "right" is the balanced accuracy:
    ``N / (K' * count_c)`` for an image of class ``c``, over the ``K'`` classes present.

    Examples:
        >>> y = torch.tensor([0, 0, 0, 1])
        >>> right = torch.tensor([1.0, 1.0, 1.0, 0.0])
        >>> float((right * balancing_weights(y, 2)).mean())  # recall 1 and 0
        0.5
    """
    counts = torch.bincount(labels, minlength=classes).double()
    present = int((counts > 0).sum())
    return len(labels) / (present * counts[labels])


def _probs(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, multi: bool = False
) -> torch.Tensor:
    """Softmax (sigmoid when ``multi``) of ``(V, N, D)`` standardised features, averaged over
    the views."""
    logits = x @ weight.T + bias
    return (logits.sigmoid() if multi else logits.softmax(-1)).mean(0)


def _fit(
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    c: float,
    max_iter: int,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L-BFGS to convergence on every view of every image as a row (the loss weighted by
    ``class_weight``, normalised to a mean weight of 1 over the rows; for multi-hot ``y``, the
    sum over labels of each label's binary cross-entropy, ``class_weight`` weighing positives).
    """
    rows = x.reshape(-1, x.shape[-1])
    targets = y.repeat(x.shape[0], 1) if y.dim() == 2 else y.repeat(x.shape[0])
    weight = torch.zeros(k, x.shape[-1]) if start is None else start[0].clone()
    bias = torch.zeros(k) if start is None else start[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
    )
    penalty = 1.0 / (2 * c * len(targets))
    row_weight = None
    multi_loss = nn.BCEWithLogitsLoss(reduction="none", pos_weight=class_weight)
    if y.dim() == 1 and class_weight is not None:
        row_weight = class_weight[targets]
        row_weight = row_weight / row_weight.mean()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = rows @ weight.T + bias
        if y.dim() == 2:
            losses = multi_loss(logits, targets).sum(1)
        else:
            losses = nn.functional.cross_entropy(logits, targets, reduction="none")
        data = losses.mean() if row_weight is None else (losses * row_weight).mean()
        loss = data + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):  # pragma: no cover
        raise FloatingPointError(f"the probe's fit diverged at C={c:g}")
    return weight.detach(), bias.detach()
