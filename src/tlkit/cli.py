"""The ``tlkit`` command: fit, evaluate, predict and export, a thin layer over the Python API.

    tlkit fit DATA --out RUN [--backbone NAME]... [--weights W [--key-map by_order]]
              [--budget 5m] [--recipe auto] [--geometry pad|crop] [--device auto]
    tlkit evaluate RUN DATA [--json] [--tta | --no-tta] [--skip-errors]
    tlkit predict RUN FILE... [--json] [--tta | --no-tta]
    tlkit export RUN [--format pt2|onnx|torchscript] --output FILE

DATA is a folder of ``<class>/<image>`` or a CSV of ``path,label``. Mistakes (a missing
folder, no images, a bad budget, an unknown backbone, a corrupt file) exit with status 2 and a
one-line message (``TLKIT_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ._utils import check_writable_dir, json_safe

__all__ = ["get_args_parser", "main"]

_USER_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ValueError,
    KeyError,
    TypeError,
    ConnectionError,
    ImportError,
    NotImplementedError,
)


def _background(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise argparse.ArgumentTypeError(f"expected R,G,B in 0..255, got {text!r}")
    return values[0], values[1], values[2]


def get_args_parser() -> argparse.ArgumentParser:
    """The command line's parser (one subcommand per job)."""
    parser = argparse.ArgumentParser(
        prog="tlkit", description="Fine-tune pretrained image classifiers on your images."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fit(sub)
    _add_use(sub)
    return parser


def _add_fit(sub: Any) -> None:
    """The ``fit`` subcommand's arguments."""
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
    fit.add_argument("--backbone", action="append", default=None,
                     help="backbone name; give several to probe each and their concatenation "
                          "and keep the best (default: EfficientNet-Lite0/1/2 where their "
                          "weights are installed, tlkit[offline], else Lite0)")  # fmt: skip
    fit.add_argument("--weights", default="imagenet",
                     help="'imagenet', 'none' or a checkpoint file (of one backbone)")  # fmt: skip
    fit.add_argument("--key-map", default="strict", choices=["strict", "by_order"],
                     help="match a checkpoint's tensors by name (strict) or by position, for one "
                          "saved by another implementation (by_order)")  # fmt: skip
    fit.add_argument("--budget", default=None, help="time for the whole command: 90s, 5m, 1h")
    fit.add_argument("--recipe", default="auto", choices=["auto", "probe", "lp-ft", "full"])
    fit.add_argument("--val", type=Path, default=None, help="validation folder or CSV")
    fit.add_argument("--image-size", type=int, default=None)
    fit.add_argument("--geometry", default="pad", choices=["pad", "crop"],
                     help="pad: letterbox each image whole on the background colour (default); "
                          "crop: short side resized, centre crop")  # fmt: skip
    fit.add_argument("--background", type=_background, default=(255, 255, 255),
                     help="R,G,B under transparent pixels (default 255,255,255)")  # fmt: skip
    fit.add_argument("--skip-errors", action="store_true",
                     help="leave unreadable images out (listed in the report)")  # fmt: skip
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--class-weight", default="auto", choices=["auto", "balanced", "none"],
                     help="weigh classes against their size in the loss and choose by balanced "
                          "accuracy (auto: when class sizes differ several-fold)")  # fmt: skip
    fit.add_argument("--sampler", default="shuffle", choices=["shuffle", "balanced"],
                     help="balanced: fine-tuning draws each class about as often")  # fmt: skip
    fit.add_argument(
        "--device",
        default="auto",
        help="auto (a CUDA GPU, else MPS, else the CPU), cpu, cuda, cuda:N or mps",
    )
    fit.add_argument("--cache-dir", default=None,
                     help="folder for the decoded images when they do not fit in memory "
                          "(default: beside the run folder)")  # fmt: skip


def _add_use(sub: Any) -> None:
    """The arguments of ``evaluate``, ``predict`` and ``export``, which use a run."""
    evaluate = sub.add_parser("evaluate", help="accuracy, per-class metrics, confusion matrix")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("data", type=Path)
    evaluate.add_argument("--json", action="store_true", help="last line: one JSON object")
    evaluate.add_argument(
        "--label-sep", default=None, help="separator of several labels in a CSV's label column"
    )
    evaluate.add_argument("--skip-errors", action="store_true",
                          help="leave unreadable images out (counted in the output)")  # fmt: skip
    _add_tta(evaluate)
    evaluate.add_argument("--unknown", type=Path, default=None,
                          help="folder of images of none of the classes: how many each "
                               "--min-confidence rejects")  # fmt: skip
    evaluate.add_argument("--min-confidence", type=float, default=None,
                          help="answer unknown below this probability (0-1)")  # fmt: skip
    predict = sub.add_parser("predict", help="label and probability per image file")
    predict.add_argument("run", type=Path)
    predict.add_argument("files", type=Path, nargs="+")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_tta(predict)
    predict.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="answer unknown where the top probability is below this (0-1)",
    )
    export = sub.add_parser("export", help="the model with its preprocessing inside")
    export.add_argument("run", type=Path)
    export.add_argument("--format", choices=["pt2", "onnx", "torchscript"], default="pt2",
                        help="pt2: torch.export program (default); onnx; torchscript "
                             "(deprecated by PyTorch)")  # fmt: skip
    export.add_argument("--output", type=Path, required=True)
    export.add_argument("--min-confidence", type=float, default=None,
                        help="the threshold below which to answer unknown, stored in the "
                             "export's metadata (0-1)")  # fmt: skip


def _add_tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average with mirror images (default: as the model was "
                             "trained)")  # fmt: skip


def check_run_folder(out: str, data: Path) -> Path:
    """The run folder ``--out``, checked before any work: named, a folder (or to be one) that is
    new, empty or an earlier run, not inside the training folder (it would become a class of
    the next run), writable.

    Raises:
        ValueError, NotADirectoryError, FileExistsError, PermissionError: Naming the path and
            the way out.
    """
    from .report import check_run_folder as check_contents

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
    check_writable_dir(folder if folder.is_dir() else _existing_parent(folder), "--out")
    return folder


def _existing_parent(path: Path) -> Path:
    """``path``'s nearest ancestor that exists (the folder a new run folder is created in)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")  # pragma: no cover


def fit(args: argparse.Namespace) -> int:
    from . import distributed
    from .recipes import finetune
    from .report import write_report

    args.out = check_run_folder(args.out, args.data)
    cache_dir = args.cache_dir or _existing_parent(args.out)
    names = args.backbone or None
    weights = None if str(args.weights).lower() == "none" else args.weights
    on_error: Literal["raise", "skip"] = "skip" if args.skip_errors else "raise"
    data, val = args.data, args.val
    if args.label_sep is not None:  # a CSV with several labels in one column
        data, val = (_dataset(d, args.background, on_error, args.label_sep) for d in (data, val))
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


def _dataset(source: Path | None, background: Any, on_error: Any, label_sep: str | None) -> Any:
    """The dataset of a CSV read with ``label_sep`` (a folder as it is), or ``None``."""
    from .data import ImageDataset

    if source is None:
        return None
    if source.suffix.lower() != ".csv":
        raise ValueError(f"--label-sep reads a CSV, but {str(source)!r} is not a .csv file")
    return ImageDataset.from_csv(source, background=background, on_error=on_error,
                                 label_sep=label_sep)  # fmt: skip


def evaluate(args: argparse.Namespace) -> int:
    from ._multilabel_cli import probabilities
    from .calibration import calibration_on, calibration_text
    from .data import ImageDataset
    from .metrics import balanced_accuracy
    from .model import check_confidence, load_model
    from .report import class_table, per_class_metrics

    check_confidence(args.min_confidence)
    model = load_model(args.run)
    on_error: Literal["raise", "skip"] = "skip" if args.skip_errors else "raise"
    if args.label_sep is not None:
        data = _dataset(args.data, model.background, on_error, args.label_sep)
    else:
        data = ImageDataset.from_path(args.data, background=model.background, on_error=on_error)
    unknown = [c for c in data.classes if c not in model.classes]
    if unknown:
        raise ValueError(f"{args.data} has classes the model does not know: {unknown}")
    if model.multi_label or data.multi_label:
        if not model.multi_label:
            raise ValueError(f"{args.data} gives several labels per image; this model one")
        from ._multilabel_cli import evaluate as evaluate_label_sets

        return evaluate_label_sets(model, data, args)
    others = None
    if args.unknown is not None:
        others = _unlabelled_images(args.unknown, model.background, on_error)
    mapping = [model.classes.index(c) for c in data.classes]
    targets = torch.tensor([mapping[t] for t in data.targets])
    probs = probabilities(model, data.files, args.tta)
    confidence, predicted = probs.max(1)
    k = len(model.classes)
    matrix = torch.bincount(targets * k + predicted, minlength=k * k).view(k, k)
    accuracy = float((predicted == targets).double().mean())
    rows = per_class_metrics(matrix)
    left_out = f" ({len(data.skipped)} unreadable left out)" if data.skipped else ""
    balanced = balanced_accuracy(matrix)
    print(f"accuracy {accuracy:.2%}, balanced accuracy {balanced:.2%} on {len(data)} "
          f"images{left_out}")  # fmt: skip
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
    if others is not None or args.min_confidence is not None:
        summary["thresholds"] = _thresholds(model, confidence, predicted == targets, others, args)
    if args.json:
        print(json.dumps(json_safe(summary), allow_nan=False))
    return 0


def _thresholds(
    model: Any, confidence: torch.Tensor, right: torch.Tensor, others: Any, args: argparse.Namespace
) -> list[dict[str, float | None]]:
    """What each minimum confidence does to the known images and to ``--unknown``'s, printed."""
    from ._multilabel_cli import probabilities
    from .calibration import threshold_table

    unknown = probabilities(model, others.files, args.tta).max(1).values if others else None
    thresholds = [args.min_confidence] if args.min_confidence is not None else None
    table = threshold_table(confidence, right, unknown, thresholds)
    print(_threshold_text(table))
    return table


def _unlabelled_images(folder: Path, background: Any, on_error: Literal["raise", "skip"]) -> Any:
    """The images of ``--unknown``: every image under the folder, whatever its sub-folders."""
    from .data import ImageDataset, image_files

    if not folder.is_dir():
        raise NotADirectoryError(f"--unknown {str(folder)!r} is not a folder of images")
    files = image_files(folder)
    if not files:
        raise ValueError(f"--unknown {str(folder)!r} holds no image")
    return ImageDataset(files, [0] * len(files), ["unknown"], background=background,
                        on_error=on_error)  # fmt: skip


def _threshold_text(table: list[dict[str, Any]]) -> str:
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


def predict(args: argparse.Namespace) -> int:
    from .model import check_confidence, load_model

    check_confidence(args.min_confidence)
    model = load_model(args.run)
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file: {', '.join(missing)}")
    if model.multi_label:
        from ._multilabel_cli import predict as predict_label_sets

        return predict_label_sets(model, args.files, args)
    probs = model.predict(args.files, tta=args.tta)
    for file, row in zip(args.files, probs, strict=True):
        index = int(row.argmax())
        best, probability = model.classes[index], float(row[index])
        sure = args.min_confidence is None or probability >= args.min_confidence
        if args.json:
            record = {"file": str(file), "label": best if sure else None,
                      "probability": probability, "top_class": best}  # fmt: skip
            print(json.dumps(json_safe(record), allow_nan=False))
        else:
            print(f"{file}\t{best if sure else 'unknown'}\t{probability:.4f}"
                  + ("" if sure else f"\t({best})"))  # fmt: skip
    return 0


def export(args: argparse.Namespace) -> int:
    from .export import SUFFIXES
    from .export import export as write
    from .model import load_model
    from .report import RUN_FILES

    run = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    output = Path(args.output)
    if output.resolve().parent == run.resolve() and output.name in RUN_FILES:
        suggestion = run.parent / f"{run.name}{SUFFIXES[args.format]}"
        raise ValueError(
            f"--output {str(output)!r} would overwrite the run's own {output.name}; write the "
            f"export beside it, such as {str(suggestion)!r}"
        )
    if args.format == "torchscript":
        print("tlkit export: TorchScript is deprecated in PyTorch; --format pt2 is its successor",
              file=sys.stderr)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # said above, in the command's words
        path = write(load_model(args.run), output, format=args.format,
                     min_confidence=args.min_confidence)  # fmt: skip
    print(f"wrote {path} ({args.format})")
    return 0


def _seconds_since_start() -> float:
    """How long this process has run: importing torch, torchvision and timm takes seconds before
    ``main`` starts, and ``--budget`` is the whole command's time. 0 where unknown (not Linux)."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(after_name[19])  # field 22, starttime, in clock ticks after boot
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _message(exc: BaseException) -> str:
    """What went wrong in words: an ``OSError``'s reason and path (its first argument is an
    error number), a decoding error's encoding and position, else the message itself (a
    ``KeyError``'s without the quotes ``str`` adds).

    Examples:
        >>> _message(NotADirectoryError(20, "Not a directory", "out/model.pt"))
        "Not a directory: 'out/model.pt'"
        >>> _message(KeyError("no column 'label'"))
        "no column 'label'"
    """
    if isinstance(exc, OSError) and exc.strerror:
        paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
        return exc.strerror + (": " + " -> ".join(repr(p) for p in paths) if paths else "")
    if isinstance(exc, UnicodeDecodeError):
        return f"the file is not {exc.encoding} text ({exc.reason} at byte {exc.start})"
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__


def _one_line(text: str) -> str:
    r"""A message of several lines as one, in the command line's words.

    Examples:
        >>> _one_line("2 files cannot be read (pass on_error='skip'):\n  a.png: bad\n  b.png: bad")
        '2 files cannot be read (pass --skip-errors): a.png: bad; b.png: bad'
    """
    message = ""
    for line in (line.strip() for line in text.splitlines()):
        if line:
            message += (" " if message.endswith(":") else "; " if message else "") + line
    return message.replace("pass on_error='skip'", "pass --skip-errors")


def _budget_values_attached(argv: list[str]) -> list[str]:
    """``--budget -5m`` as ``--budget=-5m``: argparse takes a value starting with ``-`` for an
    option and would answer "expected one argument"; attached, the budget's own check names
    the value.

    Examples:
        >>> _budget_values_attached(["fit", "d", "--budget", "-5m", "--out", "r"])
        ['fit', 'd', '--budget=-5m', '--out', 'r']
    """
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--budget" and arg[:1] == "-" and arg[1:2].isdigit():
            out[-1] = f"--budget={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for a user mistake).

    As the ``tlkit`` command (``argv`` None) the budget counts from the start of the process.
    """
    started = time.perf_counter() - (_seconds_since_start() if argv is None else 0.0)
    parser = get_args_parser()
    args = parser.parse_args(_budget_values_attached(list(sys.argv[1:] if argv is None else argv)))
    args.started = started
    commands = {"fit": fit, "evaluate": evaluate, "predict": predict, "export": export}
    try:
        return commands[args.command](args)
    except _USER_ERRORS as exc:
        if os.environ.get("TLKIT_DEBUG"):
            raise
        print(f"tlkit {args.command}: error: {_one_line(_message(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tlkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
