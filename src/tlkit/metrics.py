"""Classification metrics accumulated on the device, synchronised only when read."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "ClassificationMeter",
    "average_precision",
    "balanced_accuracy",
    "choose_thresholds",
    "f1_scores",
    "mean_average_precision",
]


class ClassificationMeter:
    """Running loss, top-1/top-5 accuracy and confusion matrix of a classifier.

    Sums stay on the outputs' device, so updating never waits for the GPU;
    [compute][tlkit.ClassificationMeter.compute]
    synchronises once (and all-reduces across processes under ``torch.distributed``).

    With multi-hot targets ``(N, K)`` (several labels per image, a loss such as
    ``BCEWithLogitsLoss`` on logits), accuracy is the share of the image-label decisions that
    are right at logit 0 (probability 0.5), and there is no top-5 or confusion matrix (see
    [tlkit.metrics.multi_label_metrics][] for mAP and F1 on the predictions).

    Args:
        confusion: Also accumulate a confusion matrix and per-class accuracy.
        top5: Also accumulate top-5 accuracy (reported when there are 5 classes or more).

    Examples:
        >>> meter = ClassificationMeter(confusion=True)
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
        >>> meter.update(torch.tensor(0.5), logits, torch.tensor([0, 1, 1]))
        >>> m = meter.compute()
        >>> m["loss"], round(m["accuracy"], 4), m["per_class_accuracy"]
        (0.5, 0.6667, [1.0, 0.5])
    """

    def __init__(self, *, confusion: bool = False, top5: bool = True) -> None:
        self.confusion = confusion
        self.top5 = top5
        self.count = 0
        self._sums: torch.Tensor | None = None  # loss, correct, top-5 correct
        self._matrix: torch.Tensor | None = None
        self.num_classes: int | None = None
        self.multi_label = False
        # per-batch values not yet added to the sums: keeping the predictions and targets and
        # folding them every so often costs one kernel per batch (argmax) instead of five
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._preds: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._top5: list[torch.Tensor] = []

    def update(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch: ``loss`` is the batch mean, ``outputs`` are ``(N, C)`` scores."""
        if self.num_classes is None:
            self.num_classes = outputs.shape[1]
        outputs = outputs.detach()
        self._losses.append(loss.detach())
        self._sizes.append(targets.shape[0])
        if targets.dim() == 2:  # multi-hot: each label decided at logit 0
            self.multi_label = True
            self._preds.append(outputs > 0)
            self._targets.append(targets.detach() > 0.5)
        else:
            self._preds.append(outputs.argmax(1))
            self._targets.append(targets)
        if self.top5 and not self.multi_label:
            self._top5.append(_topk_correct(outputs, targets, 5))
        self.count += targets.shape[0]
        if len(self._losses) >= 256:
            self._fold()

    def _fold(self) -> None:
        """Add the pending per-batch values to the sums (on the device, no host sync)."""
        if not self._losses:
            return
        device = self._losses[0].device
        if self._sums is None:
            self._sums = torch.zeros(3, dtype=torch.float64, device=device)
        sizes = torch.tensor(self._sizes, dtype=torch.float64).to(device, non_blocking=True)
        preds, targets = torch.cat(self._preds), torch.cat(self._targets)
        self._sums[0] += (torch.stack(self._losses).double() * sizes).sum()
        if self.multi_label:
            self._sums[1] += (preds == targets).double().mean(1).sum()
        else:
            self._sums[1] += (preds == targets).sum()
        if self._top5:
            self._sums[2] += torch.stack(self._top5).sum()
        if self.confusion and not self.multi_label:
            classes = self.num_classes
            assert classes is not None
            if self._matrix is None:
                self._matrix = torch.zeros(classes * classes, dtype=torch.int64, device=device)
            self._matrix += torch.bincount(targets * classes + preds, minlength=classes**2)
        self._losses, self._sizes, self._preds, self._targets = [], [], [], []
        self._top5 = []

    def state_dict(self) -> dict[str, Any]:
        """The sums so far, as CPU tensors (for mid-epoch checkpoints).

        Examples:
            >>> meter = ClassificationMeter()
            >>> meter.update(torch.tensor(1.0), torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
            >>> again = ClassificationMeter()
            >>> again.load_state_dict(meter.state_dict())
            >>> again.compute() == meter.compute()
            True
        """
        self._fold()
        return {
            "count": self.count,
            "num_classes": self.num_classes,
            "sums": self._sums.cpu() if self._sums is not None else None,
            "matrix": self._matrix.cpu() if self._matrix is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], device: Any = None) -> None:
        """Continue from [state_dict][tlkit.ClassificationMeter.state_dict]'s sums, placed on
        ``device``."""
        self._losses, self._sizes, self._preds, self._targets = [], [], [], []
        self._top5 = []
        self.count = int(state["count"])
        self.num_classes = state["num_classes"]
        sums, matrix = state["sums"], state["matrix"]
        self._sums = sums.to(device) if sums is not None else None
        self._matrix = matrix.to(device) if matrix is not None else None

    def running(self) -> dict[str, float]:
        """Loss and accuracy so far on this process (one host sync, no collective)."""
        self._fold()
        if self._sums is None or self.count == 0:
            return {}
        loss, correct, _ = (self._sums / self.count).tolist()
        return {"loss": loss, "accuracy": correct}

    def compute(self) -> dict[str, Any]:
        """Final metrics over every process: loss, accuracy, top-5 (C >= 5), per-class, matrix."""
        self._fold()
        if self._sums is None:
            raise ValueError("no batch was seen: the loader is empty")
        sums = self._sums.clone()
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=sums.device)
        matrix = self._matrix.clone() if self._matrix is not None else None
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
            dist.all_reduce(count)
            if matrix is not None:
                dist.all_reduce(matrix)
        total = float(count.item())
        loss, correct, top5 = (sums / total).tolist()
        out: dict[str, Any] = {"loss": loss, "accuracy": correct, "count": int(total)}
        assert self.num_classes is not None
        if self.top5 and self.num_classes >= 5 and not self.multi_label:
            out["top5_accuracy"] = top5
        if matrix is not None:
            cm = matrix.view(self.num_classes, self.num_classes).cpu()
            support = cm.sum(1)
            per_class = torch.where(support > 0, cm.diag() / support.clamp_min(1), torch.nan)
            out["per_class_accuracy"] = per_class.tolist()
            out["balanced_accuracy"] = balanced_accuracy(cm)
            out["confusion_matrix"] = cm
        return out


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """The mean of the per-class recalls of a confusion matrix (rows: true classes), over the
    classes that have images: on skewed data it does not reward always answering the largest
    class, as accuracy does.

    Examples:
        >>> balanced_accuracy(torch.tensor([[90, 0], [10, 0]]))  # accuracy 0.9
        0.5
    """
    cm = confusion.double()
    support = cm.sum(1)
    seen = support > 0
    if not seen.any():
        return float("nan")
    return float((cm.diag()[seen] / support[seen]).mean())


def _topk_correct(outputs: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, outputs.shape[1])
    return (outputs.topk(k, dim=1).indices == targets[:, None]).any(1).sum()


# --------------------------------------------------------------------------- several labels
def _check_multi_label(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets`` as a bool ``(N, K)`` tensor matching ``scores``."""
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(
            f"scores and targets must both be (N, K) multi-hot, got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("targets must be 0 or 1 (one column per class, 1 where it applies)")
    if not bool(torch.isfinite(scores.float()).all()):
        raise ValueError("scores hold NaN or infinite values")
    return targets.bool()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision of each class ``(K,)``: the mean, over its positive images, of the
    precision among the images scored at least as high (tied scores taken together, as
    scikit-learn's ``average_precision_score``). NaN for a class with no positive image.

    Args:
        scores: ``(N, K)`` probabilities or logits.
        targets: ``(N, K)`` multi-hot labels.

    Examples:
        >>> scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.2, 0.6]])
        >>> targets = torch.tensor([[1, 0], [0, 1], [1, 0]])
        >>> [round(v, 3) for v in average_precision(scores, targets).tolist()]
        [0.833, 1.0]
    """
    truth = _check_multi_label(scores, targets)
    out = torch.full((scores.shape[1],), float("nan"), dtype=torch.float64)
    for k in range(scores.shape[1]):
        positives = truth[:, k]
        if not positives.any():
            continue
        s = scores[:, k].double()
        # for each positive: how many images score at least as high, and how many are positive
        above = s[None, :] >= s[positives][:, None]
        precision = (above & positives[None, :]).sum(1).double() / above.sum(1).double()
        out[k] = precision.mean()
    return out


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean of [average_precision][tlkit.metrics.average_precision] over the classes with
    a positive image (mAP).

    Examples:
        >>> mean_average_precision(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.eye(2))
        1.0
    """
    return _mean_of_defined(average_precision(scores, targets))


def _mean_of_defined(ap: torch.Tensor) -> float:
    """The mean of the classes' average precisions that are defined (not NaN)."""
    seen = ~ap.isnan()
    return float(ap[seen].mean()) if seen.any() else float("nan")


def f1_scores(predicted: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Micro F1 (every image-class pair counted together), macro F1 (the mean of the classes'
    F1) and each class's F1 of multi-hot predictions; a class never predicted nor present has
    no F1 (``None``) and is left out of the macro mean.

    Examples:
        >>> f1 = f1_scores(torch.tensor([[1, 0], [1, 1]]), torch.tensor([[1, 0], [0, 1]]))
        >>> round(f1["micro"], 3), round(f1["macro"], 3), f1["per_class"]
        (0.8, 0.833, [0.6666666666666666, 1.0])
    """
    truth = _check_multi_label(predicted.float(), targets)
    said = predicted.bool()
    tp = (said & truth).sum(0).double()
    fp = (said & ~truth).sum(0).double()
    fn = (~said & truth).sum(0).double()
    per_class = [
        None if float(2 * t + p + n) == 0 else float(2 * t / (2 * t + p + n))
        for t, p, n in zip(tp, fp, fn, strict=True)
    ]
    defined = [f for f in per_class if f is not None]
    total = float(2 * tp.sum() + fp.sum() + fn.sum())
    return {
        "micro": float(2 * tp.sum()) / total if total else float("nan"),
        "macro": sum(defined) / len(defined) if defined else float("nan"),
        "per_class": per_class,
    }


def choose_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One threshold per class ``(K,)``, each maximising that class's F1 on these
    (validation) probabilities: the midpoint between the lowest score taken and the next one
    below. 0.5 for a class with no positive image.

    Examples:
        >>> probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.1, 0.35]])
        >>> targets = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0]])
        >>> [round(t, 3) for t in choose_thresholds(probs, targets).tolist()]
        [0.45, 0.375]
    """
    truth = _check_multi_label(probs, targets)
    out = torch.full((probs.shape[1],), 0.5, dtype=torch.float64)
    for k in range(probs.shape[1]):
        positives = truth[:, k]
        if not positives.any():
            continue
        s, order = probs[:, k].double().sort(descending=True)
        hits = positives[order].double().cumsum(0)
        taken = torch.arange(1, len(s) + 1, dtype=torch.float64)
        f1 = 2 * hits / (taken + positives.sum())
        distinct = torch.ones(len(s), dtype=torch.bool)
        distinct[:-1] = s[:-1] > s[1:]  # cut only between different scores
        f1[~distinct] = -1.0
        best = int(f1.argmax())
        below = float(s[best + 1]) if best + 1 < len(s) else 0.0
        out[k] = (float(s[best]) + below) / 2
    return out


def label_ranking_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each image's label-ranking average precision ``(N,)``: the mean, over its labels, of
    the share of its labels among the labels it scores at least as high (1 for an image with
    no label; the mean over images is scikit-learn's
    ``label_ranking_average_precision_score``). A per-image score, for paired comparisons of
    two multi-label models on the same images.

    Examples:
        >>> scores = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.8, 0.3]])
        >>> targets = torch.tensor([[1, 0, 1], [1, 0, 0]])
        >>> [round(v, 3) for v in label_ranking_precision(scores, targets).tolist()]
        [1.0, 0.333]
    """
    truth = _check_multi_label(scores, targets)
    s = scores.double()
    above = s[:, None, :] >= s[:, :, None]  # [n, l, m]: label m scored at least as label l
    share = (above & truth[:, None, :]).sum(2).double() / above.sum(2).double()
    counts = truth.sum(1)
    total = (share * truth.double()).sum(1)
    return torch.where(counts > 0, total / counts.clamp_min(1), 1.0)


def multi_label_metrics(
    probs: torch.Tensor, targets: torch.Tensor, thresholds: torch.Tensor | None = None
) -> dict[str, Any]:
    """Everything tlkit reports of a multi-label model on labelled images: mean average
    precision and each class's AP, micro and macro F1 and each class's F1 at ``thresholds``
    (default 0.5 each), the share of images whose whole label set is right, the mean binary
    cross-entropy, and the count. Undefined values (a class with no positive image) are
    ``None``.

    Examples:
        >>> probs = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4]])
        >>> m = multi_label_metrics(probs, torch.tensor([[1, 0], [1, 1], [0, 1]]))
        >>> m["map"], m["exact_match"], m["count"]
        (1.0, 0.6666666666666666, 3)
    """
    truth = _check_multi_label(probs, targets)
    limits = torch.full((probs.shape[1],), 0.5) if thresholds is None else thresholds
    said = probs >= limits.to(probs.dtype)
    f1 = f1_scores(said.long(), truth.long())
    ap = average_precision(probs, truth.long())
    clipped = probs.double().clamp(1e-7, 1 - 1e-7)
    return {
        "map": _mean_of_defined(ap),
        "ap": [None if v != v else float(v) for v in ap.tolist()],
        "micro_f1": f1["micro"],
        "macro_f1": f1["macro"],
        "f1": f1["per_class"],
        "thresholds": [float(t) for t in limits.tolist()],
        "exact_match": float((said == truth).all(1).double().mean()),
        "loss": float(torch.nn.functional.binary_cross_entropy(clipped, truth.double())),
        "count": len(probs),
    }
