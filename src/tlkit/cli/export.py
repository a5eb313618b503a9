"""``tlkit export RUN --output FILE``: the saved model with its preprocessing inside, as a
torch.export program, ONNX or TorchScript."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """The ``export`` subcommand's arguments."""
    export = sub.add_parser("export", help="the model with its preprocessing inside")
    export.add_argument("run", type=Path)
    export.add_argument(
        "--format",
        choices=["pt2", "onnx", "torchscript"],
        default="pt2",
        help="pt2: torch.export program (default); onnx; torchscript (deprecated by PyTorch)",
    )
    export.add_argument("--output", type=Path, required=True)
    export.add_argument(
        "--min-confidence",
        type=float,
        default=None,
        help="the threshold below which to answer unknown, stored in the export's metadata (0-1)",
    )


def run(args: argparse.Namespace) -> int:
    from ..export import SUFFIXES
    from ..export import export as write
    from ..model import load_model
    from ..report import RUN_FILES

    run = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    output = Path(args.output)
    if output.resolve().parent == run.resolve() and output.name in RUN_FILES:
        suggestion = run.parent / f"{run.name}{SUFFIXES[args.format]}"
        raise ValueError(
            f"--output {str(output)!r} would overwrite the run's own {output.name}; write the "
            f"export beside it, such as {str(suggestion)!r}"
        )
    if args.format == "torchscript":
        print(
            "tlkit export: TorchScript is deprecated in PyTorch; --format pt2 is its successor",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # said above, in the command's words
        path = write(
            load_model(args.run), output, format=args.format, min_confidence=args.min_confidence
        )
    print(f"wrote {path} ({args.format})")
    return 0
