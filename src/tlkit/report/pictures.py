"""The pictures of a run folder (with matplotlib, ``pip install tlkit[plot]``): training curves,
confusion matrix, reliability diagram, the most confident mistakes and, for several labels per
image, each label's average precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..calibration import logits_of, reliability, scale
from ..model import FinetuneResult

__all__ = ["ap_chart", "pictures", "reliability_diagram", "top_losses"]


def ap_chart(result: FinetuneResult, folder: Path) -> str | None:
    """A bar per label of its average precision, the highest at the top, and the reliability
    diagram; ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ap = [v if v is not None else 0.0 for v in result.val_metrics["ap"]]
    order = sorted(range(len(ap)), key=lambda i: ap[i])
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.28 * len(ap)))
    ax.barh(range(len(ap)), [ap[i] for i in order], color="tab:blue")
    ax.set_yticks(range(len(ap)), [result.classes[i] for i in order], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision (validation)")
    fig.tight_layout()
    fig.savefig(folder / "average_precision.png", dpi=100)
    plt.close(fig)
    reliability_diagram(result, folder, plt)
    return "average_precision.png"


def pictures(result: FinetuneResult, folder: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    records = result.history.records
    if records:
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
        x = list(range(1, len(records) + 1))
        for key, ax in (("loss", ax_loss), ("accuracy", ax_acc)):
            ax.plot(x, [r[f"train_{key}"] for r in records], label=f"train {key}")
            if "val_" + key in records[0]:
                ax.plot(x, [r[f"val_{key}"] for r in records], label=f"validation {key}")
            ax.set_xlabel("epoch (probe epochs first, then fine-tuning)")
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "curves.png", dpi=100)
        plt.close(fig)
        written.append("curves.png")
    matrix = result.val_metrics.get("confusion_matrix")
    if matrix is not None:
        k = len(result.classes)
        fig, ax = plt.subplots(figsize=(1.2 + 0.5 * k, 1.0 + 0.5 * k))
        ax.imshow(matrix.numpy(), cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(k), result.classes, rotation=45, ha="right")
        ax.set_yticks(range(k), result.classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        fig.tight_layout()
        fig.savefig(folder / "confusion_matrix.png", dpi=100)
        plt.close(fig)
        written.append("confusion_matrix.png")
    if result.val_probs is not None and result.val_labels is not None:
        reliability_diagram(result, folder, plt)
        written.append("reliability.png")
    if result.val_images is not None and result.val_probs is not None:
        if top_losses(result, folder, plt):
            written.append("top_losses.png")
        else:  # none to show; an earlier run's picture in this folder would contradict the report
            (folder / "top_losses.png").unlink(missing_ok=True)
    return written


def reliability_diagram(result: FinetuneResult, folder: Path, plt: Any) -> None:
    """Accuracy against confidence on the validation images, before and after calibration."""
    assert result.val_probs is not None and result.val_labels is not None
    after, multi = result.val_probs, result.multi_label
    before = scale(logits_of(after, multi_label=multi) * result.temperature, 1.0, multi_label=multi)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="calibrated")
    curves = [(after, "as the model gives them", "o-")]
    if result.temperature != 1.0:
        after_name = f"after (T={result.temperature:.2f}, fitted on these)"
        curves = [(before, "before", "o-"), (after, after_name, "s-")]
    for probs, name, style in curves:
        bins = reliability(probs, result.val_labels)
        ax.plot(bins.confidence, bins.accuracy, style, label=f"{name}: ECE {bins.ece:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("each label's probability" if multi else "confidence (top probability)")
    ax.set_ylabel("share of images with the label" if multi else "accuracy")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "reliability.png", dpi=100)
    plt.close(fig)


def top_losses(result: FinetuneResult, folder: Path, plt: Any) -> bool:
    """Draw the (at most 12) most confident validation mistakes; False, drawing nothing, if none."""
    assert result.val_images is not None and result.val_probs is not None
    assert result.val_labels is not None
    probs, labels = result.val_probs, result.val_labels
    confidence, predicted = probs.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:12].tolist()
    if not order:
        return False
    columns = min(6, len(order))
    rows = (len(order) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, order, strict=False):
        ax.imshow(result.val_images[index].permute(1, 2, 0).numpy())
        ax.set_title(
            f"true {result.classes[int(labels[index])]}\n"
            f"said {result.classes[int(predicted[index])]} {float(confidence[index]):.2f}",
            fontsize=8,
        )
    fig.tight_layout()
    fig.savefig(folder / "top_losses.png", dpi=100)
    plt.close(fig)
    return True
