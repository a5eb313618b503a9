"""Writing the history as it grows: [tlkit.HistoryLogger][]."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._utils import atomic_write_text, check_writable_dir, json_safe
from .base import Callback, TrainerLike

__all__ = ["HistoryLogger"]


class HistoryLogger(Callback):
    """Write the history to a CSV or JSON file after every epoch (rank 0, atomically).

    Args:
        path: ``*.csv`` or ``*.json``.

    Examples:
        >>> HistoryLogger("runs/history.csv").path.suffix
        '.csv'
    """

    order = 90

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.suffix not in (".csv", ".json"):
            raise ValueError(f"history file must end in .csv or .json, got {str(self.path)!r}")

    def on_fit_check(self, trainer: TrainerLike, *, metrics: Sequence[str], **kwargs: Any) -> None:
        if self.path.is_dir():
            raise IsADirectoryError(f"HistoryLogger path {str(self.path)!r} is a folder")
        if trainer.is_global_zero:
            check_writable_dir(self.path.parent, "HistoryLogger folder")

    def on_epoch_end(
        self, trainer: TrainerLike, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if not trainer.is_global_zero:
            return
        records = trainer.history.records
        if self.path.suffix == ".json":
            atomic_write_text(json.dumps(json_safe(records), indent=2, allow_nan=False), self.path)
            return
        rows = [_flatten(r) for r in records]
        fields = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(buffer.getvalue(), self.path)


def _flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                out[f"{key}_{i}"] = v
        else:
            out[key] = value
    return out
