"""``tlkit predict RUN FILE...``: each image's label and probability from a saved model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .._utils import json_safe
from .options import add_tta

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """The ``predict`` subcommand's arguments."""
    predict = sub.add_parser("predict", help="label and probability per image file")
    predict.add_argument("run", type=Path)
    predict.add_argument("files", type=Path, nargs="+")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    add_tta(predict)
    predict.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="answer unknown where the top probability is below this (0-1)",
    )


def run(args: argparse.Namespace) -> int:
    from ..model import check_confidence, load_model

    check_confidence(args.min_confidence)
    model = load_model(args.run)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    if model.multi_label:
        from .labels import predict as predict_label_sets

        return predict_label_sets(model, args.files, args)
    probs = model.predict(args.files, tta=args.tta)
    for file, row in zip(args.files, probs, strict=True):
        index = int(row.argmax())
        best, probability = model.classes[index], float(row[index])
        sure = args.min_confidence is None or probability >= args.min_confidence
        if args.json:
            record = {
                "file": str(file),
                "label": best if sure else None,
                "probability": probability,
                "top_class": best,
            }
            print(json.dumps(json_safe(record), allow_nan=False))
        else:
            print(
                f"{file}\t{best if sure else 'unknown'}\t{probability:.4f}"
                + ("" if sure else f"\t({best})")
            )
    return 0
