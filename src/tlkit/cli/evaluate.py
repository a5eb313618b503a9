"""``tlkit evaluate RUN DATA``: a saved model's accuracy, per-class figures, confusion matrix
and calibration on labelled images, and what a minimum confidence would do."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Literal

import torch

from .._utils import check_writable_dir, json_safe
from .fit import dataset
from .options import add_tta, write_predictions

__all__ = ["add_parser", "run", "unlabelled_images"]


def add_parser(sub: Any) -> None:
    """The ``evaluate`` subcommand's arguments."""
    evaluate = sub.add_parser("evaluate", help="accuracy, per-class metrics, confusion matrix")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("data", type=Path)
    evaluate.add_argument("--json", action="store_true", help="last line: one JSON object")
    evaluate.add_argument(
        "--label-sep", default=None, help="separator of several labels in a CSV's label column"
    )
    evaluate.add_argument(
        "--skip-errors",
        action="store_true",
        help="leave unreadable images out (counted in the output)",
    )
    add_tta(evaluate)
    evaluate.add_argument(
        "--unknown",
        type=Path,
        default=None,
        help="folder of images of none of the classes: how many each --min-confidence rejects",
    )
    evaluate.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="answer unknown below this probability (0-1)",
    )
    evaluate.add_argument(
        "--predictions",
        type=Path,
        default=None,
        help="write each image's label, prediction and probability to this CSV",
    )


def run(args: argparse.Namespace) -> int:
    from ..data import ImageDataset
    from ..model import check_confidence, load_model

    check_confidence(args.min_confidence)
    if args.predictions is not None:
        check_writable_dir(args.predictions.parent, "--predictions folder")
    model = load_model(args.run)
    on_error: Literal["raise", "skip"] = "skip" if args.skip_errors else "raise"
    if args.label_sep is not None:
        data = dataset(args.data, model.background, on_error, args.label_sep)
    else:
        data = ImageDataset.from_path(args.data, background=model.background, on_error=on_error)
    unknown = [c for c in data.classes if c not in model.classes]
    if unknown:
        raise ValueError(f"{args.data} has classes the model does not know: {unknown}")
    if model.multi_label or data.multi_label:
        if not model.multi_label:
            raise ValueError(f"{args.data} gives several labels per image; this model one")
        from .labels import evaluate as evaluate_label_sets

        return evaluate_label_sets(model, data, args)
    others = None
    if args.unknown is not None:
        others = unlabelled_images(args.unknown, model.background, on_error)
    probs, targets, summary = single_label_figures(model, data, args)
    confidence, predicted = probs.max(1)
    if args.predictions is not None:
        rows = [
            [str(f), model.classes[t], model.classes[p], f"{c:.6f}", int(t == p)]
            for f, t, p, c in zip(
                data.files, targets.tolist(), predicted.tolist(), confidence.tolist(), strict=True
            )
        ]
        header = ["file", "label", "predicted", "probability", "right"]
        write_predictions(args.predictions, header, rows)
    if others is not None or args.min_confidence is not None:
        summary["thresholds"] = thresholds_said(
            model, confidence, predicted == targets, others, args
        )
    if args.json:
        print(json.dumps(json_safe(summary), allow_nan=False))
    return 0


def single_label_figures(
    model: Any, data: Any, args: argparse.Namespace
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The model's probabilities for ``data``, its labels in the model's order, and the
    figures (printed, and the JSON summary): accuracy, calibration, each class's figures and
    the confusion matrix."""
    from ..calibration import calibration_on, calibration_text
    from ..metrics import balanced_accuracy
    from ..report import class_table, per_class_metrics
    from .labels import probabilities

    mapping = [model.classes.index(c) for c in data.classes]
    targets = torch.tensor([mapping[t] for t in data.targets])
    probs = probabilities(model, data.files, args.tta)
    predicted = probs.argmax(1)
    k = len(model.classes)
    matrix = torch.bincount(targets * k + predicted, minlength=k * k).view(k, k)
    accuracy = float((predicted == targets).double().mean())
    rows = per_class_metrics(matrix)
    left_out = f" ({len(data.skipped)} unreadable left out)" if data.skipped else ""
    balanced = balanced_accuracy(matrix)
    print(
        f"accuracy {accuracy:.2%}, balanced accuracy {balanced:.2%} on {len(data)} images{left_out}"
    )
    calibration = calibration_on(probs, targets, model.temperature)
    print(calibration_text(calibration))
    print(class_table(model.classes, rows))
    print("confusion matrix (rows: true, columns: predicted):")
    print(matrix.tolist())
    summary = {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        **calibration,
        "images": len(data),
        "skipped": [{"file": f, "reason": r} for f, r in data.skipped],
        "per_class": dict(zip(model.classes, rows, strict=True)),
        "confusion_matrix": matrix.tolist(),
    }
    return probs, targets, summary


def thresholds_said(
    model: Any, confidence: torch.Tensor, right: torch.Tensor, others: Any, args: argparse.Namespace
) -> list[dict[str, float | None]]:
    """What each minimum confidence does to the known images and to ``--unknown``'s, printed."""
    from ..calibration import threshold_table
    from .labels import probabilities

    unknown = probabilities(model, others.files, args.tta).max(1).values if others else None
    thresholds = [args.min_confidence] if args.min_confidence is not None else None
    table = threshold_table(confidence, right, unknown, thresholds)
    print(threshold_text(table))
    return table


def unlabelled_images(folder: Path, background: Any, on_error: Literal["raise", "skip"]) -> Any:
    """The images of ``--unknown``: every image under the folder, whatever its sub-folders."""
    from ..data import ImageDataset, image_files

    if not folder.is_dir():
        raise NotADirectoryError(f"--unknown {str(folder)!r} is not a folder of images")
    files = image_files(folder)
    if not files:
        raise ValueError(f"--unknown {str(folder)!r} holds no image")
    return ImageDataset(
        files, [0] * len(files), ["unknown"], background=background, on_error=on_error
    )


def threshold_text(table: list[dict[str, Any]]) -> str:
    """The threshold table as text."""
    lines = ["min confidence | known images answered | accuracy of those | unknown rejected"]
    for row in table:
        rejected = row["unknown_rejected"]
        lines.append(
            f"{row['min_confidence']:.2f} | {row['answered']:.1%} | "
            f"{'-' if row['accuracy'] is None else format(row['accuracy'], '.1%')} | "
            f"{'-' if rejected is None else format(rejected, '.1%')}"
        )
    return "\n".join(lines)
