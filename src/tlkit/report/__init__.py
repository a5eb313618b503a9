"""A run folder a person can read: metrics, history, pictures and ``report.md`` tying them up.

[tlkit.report.write_report][] writes, for a [tlkit.FinetuneResult][]:

- ``model.pt``: weights and preprocessing, loadable with ``torch.load(weights_only=True)``;
- ``metrics.json``: validation accuracy and balanced accuracy, per-class precision and recall,
  confusion matrix, the calibration (temperature, expected calibration error before and after),
  the recipe and its reasons, timings, skipped files;
- ``history.csv``: every epoch of every stage;
- ``curves.png``, ``confusion_matrix.png``, ``reliability.png`` (accuracy against confidence,
  before and after calibration), ``top_losses.png`` (the most confident mistakes, with true
  and predicted labels; only when there are some), when matplotlib is installed
  (``pip install tlkit[plot]``);
- ``report.md``: all of the above in one page.

The folder is written beside ``out`` and swapped into place when complete, so an earlier run in
``out`` stays whole until the new one is (and a folder holding other files is refused).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._utils import atomic_write_text, json_safe, replace_folder
from ..calibration import not_lower_said
from ..metrics import balanced_accuracy
from ..model import FinetuneResult
from .pictures import ap_chart, pictures

__all__ = ["check_run_folder", "class_table", "label_table", "per_class_metrics", "write_report"]

CALIBRATION_FIGURES = (
    "ece_before",
    "ece_scaled",
    "ece_gain_se",
    "ece_gain_least",
    "ece",
)  # of val_metrics

RUN_FILES = (
    "model.pt",
    "metrics.json",
    "report.md",
    "history.csv",
    "curves.png",
    "confusion_matrix.png",
    "reliability.png",
    "top_losses.png",
    "average_precision.png",
)
"""What a run folder holds; a folder holding anything else is never replaced."""


def per_class_metrics(matrix: torch.Tensor) -> list[dict[str, float | int | None]]:
    """Precision, recall and support of each class from a confusion matrix (rows: true);
    ``None`` where undefined (precision of a class never predicted, recall of one never seen),
    which JSON writes as ``null``.

    Examples:
        >>> per_class_metrics(torch.tensor([[3, 1], [0, 2]]))[0]
        {'precision': 1.0, 'recall': 0.75, 'support': 4}
        >>> per_class_metrics(torch.tensor([[2, 0], [1, 0]]))[1]
        {'precision': None, 'recall': 0.0, 'support': 1}
    """
    cm = matrix.double()
    predicted, support = cm.sum(0), cm.sum(1)
    out = []
    for c in range(cm.shape[0]):
        tp = float(cm[c, c])
        out.append(
            {
                "precision": tp / float(predicted[c]) if predicted[c] > 0 else None,
                "recall": tp / float(support[c]) if support[c] > 0 else None,
                "support": int(support[c]),
            }
        )
    return out


def class_table(classes: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of per-class precision, recall and support; ``-`` where undefined.

    Examples:
        >>> print(class_table(["a", "b"], [{"precision": 1.0, "recall": 0.5, "support": 2},
        ...                                {"precision": None, "recall": 0.0, "support": 1}]))
        | class | precision | recall | images |
        |---|---|---|---|
        | a | 1.000 | 0.500 | 2 |
        | b | - | 0.000 | 1 |
    """

    def shown(value: float | None) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.3f}"

    lines = ["| class | precision | recall | images |", "|---|---|---|---|"]
    for name, row in zip(classes, rows, strict=True):
        lines.append(
            f"| {name} | {shown(row['precision'])} | {shown(row['recall'])} | {row['support']} |"
        )
    return "\n".join(lines)


def write_report(result: FinetuneResult, out: str | Path) -> Path:
    """Write the run folder ``out`` (see the module); returns the path of ``report.md``.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from tlkit import finetune
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        ...     (root / name).mkdir()
        ...     for i in range(6):
        ...         Image.new("RGB", (32, 32), colour).save(root / name / f"{i}.png")
        >>> result = finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
        ...                   image_size=32, verbose=False)
        >>> sorted(p.name for p in write_report(result, root / "run").parent.iterdir())[:4]
        ['confusion_matrix.png', 'history.csv', 'metrics.json', 'model.pt']
    """
    check_run_folder(out)
    replace_folder(out, lambda folder: _write_run(result, folder))
    return Path(out) / "report.md"


def check_run_folder(out: str | Path, what: str = "the run folder") -> None:
    """Raise unless ``out`` is new, empty or an earlier run (only files a run folder holds),
    which a new run replaces: files tlkit did not write are never deleted.

    Raises:
        NotADirectoryError: If ``out`` is a file.
        FileExistsError: If ``out`` holds other files, naming a few.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from tlkit.report import check_run_folder
        >>> folder = Path(tempfile.mkdtemp())
        >>> check_run_folder(folder / "new")  # a new folder: fine
        >>> _ = (folder / "notes.txt").write_text("mine")
        >>> check_run_folder(folder)
        Traceback (most recent call last):
        ...
        FileExistsError: the run folder '...' holds files a tlkit run does not write (notes.txt)...

    """
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {str(out)!r} is a file; pass a folder for the run")
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in RUN_FILES)
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise FileExistsError(
            f"{what} {str(out)!r} holds files a tlkit run does not write ({shown}); a new run "
            "replaces the whole folder, so pass a new or empty folder, or move them out"
        )


def _write_run(result: FinetuneResult, folder: Path) -> None:
    result.save(folder / "model.pt")
    if result.multi_label:
        _write_multi_label(result, folder)
        return
    matrix = result.val_metrics.get("confusion_matrix")
    per_class = per_class_metrics(matrix) if matrix is not None else []
    metrics = {
        "accuracy": result.val_metrics.get("accuracy"),
        "balanced_accuracy": balanced_accuracy(matrix) if matrix is not None else None,
        "loss": result.val_metrics.get("loss"),
        "calibration": {
            "temperature": result.temperature,
            **{k: result.val_metrics.get(k) for k in CALIBRATION_FIGURES},
        },
        "images": result.val_metrics.get("count"),
        "method": result.val_metrics.get("method"),
        "classes": result.classes,
        "per_class": dict(zip(result.classes, per_class, strict=False)),
        "confusion_matrix": matrix.tolist() if matrix is not None else None,
        "backbone": result.backbone,
        "weights": result.info.weights,
        "recipe": {
            "name": result.recipe.name,
            "image_size": result.recipe.image_size,
            "probe": result.recipe.probe,
            "finetune_epochs": result.recipe.finetune_epochs,
            "reasons": result.recipe.reasons,
            "kept": result.recipe.kept,
            "seconds": result.recipe.seconds,
            "predicted_seconds": result.recipe.predicted,
            "budget": result.recipe.budget,
            "gains": result.recipe.gains,
        },
        "seconds": result.seconds,
        "skipped": [{"file": f, "reason": r} for f, r in result.skipped],
    }
    atomic_write_text(
        json.dumps(json_safe(metrics), indent=2, allow_nan=False), folder / "metrics.json"
    )
    atomic_write_text(_history_csv(result), folder / "history.csv")
    drawn = pictures(result, folder)
    atomic_write_text(_markdown(result, metrics, per_class, drawn), folder / "report.md")


def _write_multi_label(result: FinetuneResult, folder: Path) -> None:
    """``metrics.json``, ``report.md``, the AP chart and the reliability diagram of a
    multi-label run."""
    m = result.val_metrics
    images = [] if result.val_labels is None else result.val_labels.sum(0).long().tolist()
    per_label = {
        name: {
            "ap": m["ap"][i],
            "f1": m["f1"][i],
            "threshold": m["thresholds"][i],
            "images": images[i] if images else None,
        }
        for i, name in enumerate(result.classes)
    }
    metrics = {
        "multi_label": True,
        **{k: m.get(k) for k in ("map", "micro_f1", "macro_f1", "exact_match", "loss")},
        "images": m.get("count"),
        "method": m.get("method"),
        "classes": result.classes,
        "per_class": per_label,
        "backbone": result.backbone,
        "weights": result.info.weights,
        "calibration": {
            "temperature": result.temperature,
            **{k: m.get(k) for k in CALIBRATION_FIGURES},
        },
        "recipe": {
            "name": result.recipe.name,
            "image_size": result.recipe.image_size,
            "reasons": result.recipe.reasons,
            "kept": result.recipe.kept,
            "seconds": result.recipe.seconds,
            "predicted_seconds": result.recipe.predicted,
            "budget": result.recipe.budget,
            "gains": result.recipe.gains,
        },
        "seconds": result.seconds,
        "skipped": [{"file": f, "reason": r} for f, r in result.skipped],
    }
    atomic_write_text(
        json.dumps(json_safe(metrics), indent=2, allow_nan=False), folder / "metrics.json"
    )
    atomic_write_text(_history_csv(result), folder / "history.csv")
    chart = ap_chart(result, folder)
    lines = _multi_label_markdown(result, images, chart)
    atomic_write_text("\n".join(lines), folder / "report.md")


def _multi_label_markdown(
    result: FinetuneResult, images: list[int], chart: str | None
) -> list[str]:
    """The lines of a multi-label run's ``report.md``."""
    m = result.val_metrics
    head = (
        f"Validation mean average precision **{_percent(m['map'])}** (micro F1 "
        f"{_percent(m['micro_f1'])}, macro F1 {_percent(m['macro_f1'])}, every label right on "
        f"{_percent(m['exact_match'])} of the images) on {m['count']} images "
        f"({m['method']}), {len(result.classes)} labels; backbone `{result.backbone}` "
        f"({result.info.weights}); {result.seconds:.0f} s in all."
    )
    lines = [
        "# tlkit run report",
        "",
        head,
        "",
        "## Recipe",
        "",
        "```text",
        result.recipe.describe(),
        "```",
        "",
        "## Per label",
        "",
        "Each label's average precision (AP), and its F1 at its threshold: an image has "
        "the labels whose probability reaches their threshold, chosen for each label's F1 "
        "on out-of-fold predictions of the training images.",
        "",
        "```text",
        label_table(result.classes, m, images),
        "```",
        "",
    ]
    if chart:
        lines += ["## Average precision per label", "", f"![AP per label]({chart})", ""]
    lines += _calibration_lines(m, multi_label=True)
    if chart:  # matplotlib is there: the reliability diagram was drawn beside the chart
        lines += ["![Reliability diagram](reliability.png)", ""]
    lines += [
        "## Files",
        "",
        "`model.pt` (weights, preprocessing and thresholds; "
        "`tlkit predict`, `tlkit export`), `metrics.json`, `history.csv`.",
        "",
    ]
    return lines


def label_table(classes: Sequence[str], metrics: dict[str, Any], images: Sequence[int]) -> str:
    """Each label's images, average precision, F1 and threshold, as text.

    Examples:
        >>> metrics = {"ap": [0.9, None], "f1": [0.8, None], "thresholds": [0.4, 0.5]}
        >>> print(label_table(["cat", "dog"], metrics, [12, 0]))
        label  images  AP       F1       threshold
        cat        12   90.00%   80.00%  0.400
        dog         0        -        -  0.500
    """
    width = max(len(c) for c in ("label", *classes))
    lines = [f"{'label':<{width}}  images  AP       F1       threshold"]
    for i, name in enumerate(classes):
        count = str(images[i]) if images else "-"
        lines.append(
            f"{name:<{width}}  {count:>6}  {_percent(metrics['ap'][i]):>7}  "
            f"{_percent(metrics['f1'][i]):>7}  {metrics['thresholds'][i]:.3f}"
        )
    return "\n".join(lines)


def _history_csv(result: FinetuneResult) -> str:
    rows = []
    for record in result.history.records:
        row = {k: v for k, v in record.items() if not isinstance(v, (list, dict))}
        if isinstance(record.get("lr"), list) and record["lr"]:
            row["lr"] = max(record["lr"])
        rows.append(row)
    buffer = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2%}"


def _calibration_lines(calibration: dict[str, Any], multi_label: bool = False) -> list[str]:
    """The calibration paragraph of the report."""
    before, scaled = calibration.get("ece_before"), calibration.get("ece_scaled")
    if before is None or scaled is None:
        return []
    if calibration["temperature"] != 1.0:
        said = (
            f"Probabilities are divided by a temperature of {calibration['temperature']:.2f} "
            "fitted on the validation predictions. Expected calibration error (the mean gap "
            f"between confidence and accuracy): {before:.3f} before, {scaled:.3f} after (each "
            "half of the images scaled by the temperature fitted on the other half)."
        )
    else:
        said = (
            "Probabilities are left as the model gives them: a temperature fitted on the "
            f"validation predictions gave an expected calibration error of {scaled:.3f} on the "
            f"half it was not fitted on, {not_lower_said(calibration)} than {before:.3f} "
            "without it."
        )
    if multi_label:  # each label's own probability; no single answer to refuse
        said = said.replace("Probabilities are divided", "Each label's logit is divided")
        return ["## Calibration", "", said.replace("accuracy", "how often the label is there"), ""]
    tail = " `tlkit predict --min-confidence P` answers `unknown` below P."
    return ["## Calibration", "", said + tail, ""]


def _markdown(
    result: FinetuneResult,
    metrics: dict[str, Any],
    per_class: list[dict[str, Any]],
    pictures: list[str],
) -> str:
    lines = [
        "# tlkit run report",
        "",
        f"Validation accuracy **{metrics['accuracy']:.2%}** (balanced accuracy "
        f"{_percent(metrics['balanced_accuracy'])}) on {metrics['images']} images"
        + (f" ({result.val_metrics['method']})" if result.val_metrics.get("method") else "")
        + ", "
        f"{len(result.classes)} classes; backbone `{result.backbone}` ({result.info.weights}); "
        f"{result.seconds:.0f} s in all.",
        "",
        "## Recipe",
        "",
        "```text",
        result.recipe.describe(),
        "```",
        "",
        "## Per class",
        "",
        class_table(result.classes, per_class) if per_class else "(no validation metrics)",
        "",
        *_calibration_lines(metrics["calibration"]),
    ]
    titles = {
        "curves.png": "Training curves",
        "confusion_matrix.png": "Confusion matrix (validation)",
        "reliability.png": "Reliability (validation)",
        "top_losses.png": "Most confident mistakes (validation)",
    }
    for name in pictures:
        lines += [f"## {titles[name]}", "", f"![{titles[name]}]({name})", ""]
    if metrics.get("accuracy") == 1.0:
        all_right = f"None: all {metrics['images']} validation images are classified right."
        lines += [f"## {titles['top_losses.png']}", "", all_right, ""]
    if not pictures:
        lines += ["(pictures need matplotlib: `pip install tlkit[plot]`)", ""]
    if result.skipped:
        lines += ["## Skipped files", ""]
        lines += [f"- `{file}`: {reason}" for file, reason in result.skipped]
        lines.append("")
    lines += [
        "## Files",
        "",
        "`model.pt` (weights and preprocessing; `tlkit predict`, `tlkit export`), "
        "`metrics.json`, `history.csv`.",
        "",
    ]
    return "\n".join(lines)
