"""The per-epoch record of a training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["History"]


@dataclass
class History:
    """Per-epoch records of a ``fit``: losses, accuracies, learning rates, time, images/s.

    ``history["val_accuracy"]`` is that column over epochs; ``history.records`` the rows.

    Examples:
        >>> h = History([{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}])
        >>> h["val_loss"], h.best("val_loss")["epoch"]
        ([0.5, 0.4], 2)
    """

    records: list[dict[str, Any]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[Any]:
        if self.records and key not in self.records[-1]:
            raise KeyError(
                f"no column {key!r} in the history; columns: {', '.join(self.records[-1])}"
            )
        return [r.get(key) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def best(self, key: str, mode: Literal["min", "max", "auto"] = "auto") -> dict[str, Any]:
        """The record with the best value of ``key`` (``auto``: max for accuracies, else min)."""
        values = self[key]
        if not values:
            raise ValueError("the history is empty")
        maximise = mode == "max" or (mode == "auto" and "acc" in key)
        pick = max if maximise else min
        index = pick(range(len(values)), key=lambda i: values[i])
        return self.records[index]

    def __str__(self) -> str:
        if not self.records:
            return "(empty history)"
        keys = [k for k in self.records[0] if not isinstance(self.records[0][k], (list, dict))]
        rows = [keys] + [[_fmt(r.get(k)) for k in keys] for r in self.records]
        widths = [max(len(row[i]) for row in rows) for i in range(len(keys))]
        return "\n".join(
            "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
