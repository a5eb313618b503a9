"""``tlkit fit DATA --out RUN``: train a classifier on a folder or CSV of images and write the
run folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Literal

from .._utils import check_writable_dir
from .options import background

__all__ = ["add_parser", "check_run_folder", "dataset", "run"]


def add_parser(sub: Any) -> None:
    """The ``fit`` subcommand's arguments.

    One concept: one ``add_argument`` per option, in the order ``tlkit fit --help`` lists them.
    """
    fit = sub.add_parser("fit", help="train a classifier on a folder or CSV of images")
    fit.add_argument(
        "data",
        type=Path,
        help="folder of <class>/<image>, or CSV of path,label "
        "(path,labels or one 0/1 column per class: several labels per image)",
    )
    fit.add_argument(
        "--label-sep",
        default=None,
        help="separator of several labels in a CSV's label column (multi-label)",
    )
    fit.add_argument("--out", type=str, required=True, help="run folder for model and report")
    fit.add_argument(
        "--backbone",
        action="append",
        default=None,
        help="backbone name; give several to probe each and their concatenation "
        "and keep the best (default: EfficientNet-Lite0/1/2 where their "
        "weights are installed, tlkit[offline], else Lite0)",
    )
    fit.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet', 'none' or a checkpoint file (of one backbone)",
    )
    fit.add_argument(
        "--key-map",
        default="strict",
        choices=["strict", "by_order"],
        help="match a checkpoint's tensors by name (strict) or by position, for one "
        "saved by another implementation (by_order)",
    )
    fit.add_argument("--budget", default=None, help="time for the whole command: 90s, 5m, 1h")
    fit.add_argument("--recipe", default="auto", choices=["auto", "probe", "lp-ft", "full"])
    fit.add_argument("--val", type=Path, default=None, help="validation folder or CSV")
    fit.add_argument("--image-size", type=int, default=None)
    fit.add_argument(
        "--geometry",
        default="pad",
        choices=["pad", "crop"],
        help="pad: letterbox each image whole on the background colour (default); "
        "crop: short side resized, centre crop",
    )
    fit.add_argument(
        "--background",
        type=background,
        default=(255, 255, 255),
        help="R,G,B under transparent pixels (default 255,255,255)",
    )
    fit.add_argument(
        "--skip-errors",
        action="store_true",
        help="leave unreadable images out (listed in the report)",
    )
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument(
        "--class-weight",
        default="auto",
        choices=["auto", "balanced", "none"],
        help="weigh classes against their size in the loss and choose by balanced "
        "accuracy (auto: when class sizes differ several-fold)",
    )
    fit.add_argument(
        "--sampler",
        default="shuffle",
        choices=["shuffle", "balanced"],
        help="balanced: fine-tuning draws each class about as often",
    )
    fit.add_argument(
        "--device",
        default="auto",
        help="auto (a CUDA GPU, else MPS, else the CPU), cpu, cuda, cuda:N or mps",
    )
    fit.add_argument(
        "--cache-dir",
        default=None,
        help="folder for the decoded images when they do not fit in memory "
        "(default: beside the run folder)",
    )


def check_run_folder(out: str, data: Path) -> Path:
    """The run folder ``--out``, checked before any work: named, a folder (or to be one) that is
    new, empty or an earlier run, not inside the training folder (it would become a class of
    the next run), writable.

    Raises:
        ValueError, NotADirectoryError, FileExistsError, PermissionError: Naming the path and
            the way out.
    """
    from ..report import check_run_folder as check_contents

    if not out.strip():
        raise ValueError("--out must name a run folder, got ''")
    folder = Path(out)
    check_contents(folder, "--out")
    resolved, root = folder.resolve(), Path(data).resolve()
    if root.is_dir() and (resolved == root or root in resolved.parents):
        raise ValueError(
            f"--out {out!r} is inside the training folder {str(data)!r}: its images would "
            "become a class of the next run; pass a folder outside it"
        )
    check_writable_dir(folder if folder.is_dir() else existing_parent(folder), "--out")
    return folder


def existing_parent(path: Path) -> Path:
    """``path``'s nearest ancestor that exists (the folder a new run folder is created in)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")  # pragma: no cover


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..recipes import finetune
    from ..report import write_report

    args.out = check_run_folder(args.out, args.data)
    cache_dir = args.cache_dir or existing_parent(args.out)
    names = args.backbone or None
    weights = None if str(args.weights).lower() == "none" else args.weights
    on_error: Literal["raise", "skip"] = "skip" if args.skip_errors else "raise"
    data, val = args.data, args.val
    if args.label_sep is not None:  # a CSV with several labels in one column
        data, val = (dataset(d, args.background, on_error, args.label_sep) for d in (data, val))
    result = finetune(
        data,
        backbone_name=names,
        weights=weights,
        key_map=args.key_map,
        budget=args.budget,
        val=val,
        recipe=args.recipe,
        image_size=args.image_size,
        geometry=args.geometry,
        background=args.background,
        on_error=on_error,
        seed=args.seed,
        class_weight=None if args.class_weight == "none" else args.class_weight,
        sampler=args.sampler,
        device=args.device,
        cache_dir=cache_dir,
        started=args.started,
    )
    if distributed.world()[0] != 0:  # under torchrun rank 0 writes the run folder
        return 0
    report = write_report(result, args.out)
    took = time.perf_counter() - args.started  # the report's pictures and files included
    budget = result.recipe.budget
    over = f", {took - budget:.0f} s over the budget" if budget and took > budget + 1 else ""
    figure = "mean average precision" if result.multi_label else "accuracy"
    value = result.val_metrics["map" if result.multi_label else "accuracy"]
    print(f"validation {figure} {value:.2%} ({took:.0f} s{over}); report: {report}")
    return 0


def dataset(source: Path | None, background: Any, on_error: Any, label_sep: str | None) -> Any:
    """The dataset of a CSV read with ``label_sep`` (a folder as it is), or ``None``."""
    from ..data import ImageDataset

    if source is None:
        return None
    if source.suffix.lower() != ".csv":
        raise ValueError(f"--label-sep reads a CSV, but {str(source)!r} is not a .csv file")
    return ImageDataset.from_csv(
        source, background=background, on_error=on_error, label_sep=label_sep
    )
