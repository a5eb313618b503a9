"""Options and argument types that several commands share."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Any

from .._utils import atomic_write_text

__all__ = ["add_tta", "background"]


def background(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError(f"expected R,G,B in 0..255, got {text!r}")
    return values[0], values[1], values[2]


def add_tta(parser: argparse.ArgumentParser) -> None:
    """``--tta`` / ``--no-tta``: average with mirror images, or not."""
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average with mirror images (default: as the model was trained)",
    )


def write_predictions(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """Each image's row (its file, label, prediction, probability, whether right) as CSV,
    written beside and moved into place: the images to look at, or two models' answers to
    pair on the same images."""
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerows([header, *rows])
    atomic_write_text(buffer.getvalue(), path)
    print(f"predictions of {len(rows)} images written to {path}")
