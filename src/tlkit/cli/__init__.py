"""The ``tlkit`` command: fit, evaluate, predict and export, a thin layer over the Python API.

    tlkit fit DATA --out RUN [--backbone NAME]... [--weights W [--key-map by_order]]
              [--budget 5m] [--recipe auto] [--geometry pad|crop] [--device auto]
    tlkit evaluate RUN DATA [--json] [--tta | --no-tta] [--skip-errors] [--predictions CSV]
    tlkit predict RUN FILE... [--json] [--tta | --no-tta]
    tlkit export RUN [--format pt2|onnx|torchscript] --output FILE

    tlkit --version

DATA is a folder of ``<class>/<image>`` or a CSV of ``path,label``. Exit status: 0 when the
command did its work; 2 for a mistake in what was given (a missing folder, no images, a bad
budget, an unknown backbone, a corrupt file), with a one-line message
(``TLKIT_DEBUG=1`` shows the traceback instead); 130 when interrupted (Ctrl-C); 1 for an
unexpected error, with its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import evaluate, export, fit, predict

__all__ = ["get_args_parser", "main"]

COMMANDS = {"fit": fit, "evaluate": evaluate, "predict": predict, "export": export}
"""Each subcommand's module: its ``add_parser`` and its ``run``."""

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


def get_args_parser() -> argparse.ArgumentParser:
    """The command line's parser (one subcommand per job)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="tlkit", description="Fine-tune pretrained image classifiers on your images."
    )
    parser.add_argument("--version", action="version", version=f"tlkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return parser


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
    try:
        return COMMANDS[args.command].run(args)
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
