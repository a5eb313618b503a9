"""The command line's answers for a multi-label model: each image's set of labels."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._utils import json_safe
from ..report import label_table
from .options import write_predictions


def probabilities(model: Any, files: Sequence[str | Path], tta: bool | None) -> torch.Tensor:
    """Each file's probabilities ``(N, K)``, 64 images at a time."""
    return torch.cat([model.predict(files[i : i + 64], tta=tta) for i in range(0, len(files), 64)])


def evaluate(model: Any, data: Any, args: argparse.Namespace) -> int:
    """mAP, F1 and each label's AP, F1 and threshold of a multi-label model on labelled
    images (their labels a subset of the model's)."""
    from ..calibration import calibration_on, calibration_text
    from ..metrics import multi_label_metrics

    if args.unknown is not None or args.min_confidence is not None:
        raise ValueError(
            "--unknown and --min-confidence are for a model with one label per image; a "
            "multi-label model decides each label at its own threshold"
        )
    if not data.multi_label:
        raise ValueError(
            f"{args.data} gives one label per image; this model gives several: list the labels "
            "of each image in a CSV (path,labels or one 0/1 column per label)"
        )
    targets = torch.zeros(len(data), len(model.classes))
    for column, name in enumerate(data.classes):
        targets[:, model.classes.index(name)] = data.targets[:, column]
    probs = probabilities(model, data.files, args.tta)
    if args.predictions is not None:
        _write_label_sets(args.predictions, model, data.files, targets, probs)
    metrics = multi_label_metrics(probs, targets, torch.tensor(model.thresholds))
    left_out = f" ({len(data.skipped)} unreadable left out)" if data.skipped else ""
    print(
        f"mean average precision {_pc(metrics['map'])}, micro F1 {_pc(metrics['micro_f1'])}, "
        f"macro F1 {_pc(metrics['macro_f1'])}, every label right on {_pc(metrics['exact_match'])} "
        f"of {len(data)} images{left_out}"
    )
    calibration = calibration_on(probs, targets, model.temperature, multi_label=True)
    print(f"each label's probability: {calibration_text(calibration)}")
    print(label_table(model.classes, metrics, targets.sum(0).long().tolist()))
    summary = {
        **metrics,
        **calibration,
        "images": len(data),
        "classes": list(model.classes),
        "skipped": [{"file": f, "reason": r} for f, r in data.skipped],
    }
    if args.json:
        print(json.dumps(json_safe(summary), allow_nan=False))
    return 0


def _write_label_sets(
    path: Path, model: Any, files: Sequence[str], targets: torch.Tensor, probs: torch.Tensor
) -> None:
    """``--predictions``: each image's labels and predicted labels (``;`` between labels) and
    whether they are the same set."""
    rows = []
    for file, truth, answered in zip(files, targets, model.label_sets(probs), strict=True):
        wanted = [name for name, on in zip(model.classes, truth.tolist(), strict=True) if on]
        given = [name for name, _ in answered]
        rows.append([str(file), ";".join(wanted), ";".join(given), int(set(wanted) == set(given))])
    write_predictions(path, ["file", "labels", "predicted", "right"], rows)


def predict(model: Any, files: Sequence[Path], args: argparse.Namespace) -> int:
    """Each image's labels (those at or above their thresholds) with their probabilities."""
    if args.min_confidence is not None:
        raise ValueError(
            "--min-confidence is for a model with one label per image; a multi-label model "
            "decides each label at its own threshold"
        )
    probs = probabilities(model, files, args.tta)
    for file, row, labels in zip(files, probs, model.label_sets(probs), strict=True):
        if args.json:
            record = {
                "file": str(file),
                "labels": [name for name, _ in labels],
                "probabilities": dict(zip(model.classes, row.tolist(), strict=True)),
            }
            print(json.dumps(json_safe(record), allow_nan=False))
        else:
            shown = ", ".join(f"{name} {p:.4f}" for name, p in labels)
            print(f"{file}\t{shown or '(no label)'}")
    return 0


def _pc(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2%}"
