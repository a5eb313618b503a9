"""Time budgets: ``"5m"`` to seconds, and a callback that stops training when the next epoch
would not fit."""

from __future__ import annotations

import math
import time
from typing import Any

from ..callbacks import Callback

__all__ = ["Deadline", "parse_budget"]


def parse_budget(text: str | float | int | None) -> float | None:
    """Seconds from ``"90s"``, ``"5m"``, ``"1h30m"``, ``"1.5h"`` or a number of seconds.

    Raises:
        ValueError: For anything else, or a budget that is not positive.

    Examples:
        >>> parse_budget("5m"), parse_budget("1h30m"), parse_budget(90), parse_budget(None)
        (300.0, 5400.0, 90.0, None)
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        seconds, number = 0.0, ""
        units = {"h": 3600.0, "m": 60.0, "s": 1.0}
        try:
            for char in raw:
                if char in units:
                    seconds += float(number) * units[char]
                    number = ""
                else:
                    number += char
            if number:
                seconds += float(number)
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            f"budget must be a positive duration such as '90s', '5m', '1h30m' or a number of "
            f"seconds, got {text!r}"
        )
    return seconds


class Deadline(Callback):
    """Stop after the epoch that leaves too little time for another one.

    Args:
        deadline: A ``time.perf_counter()`` time, or ``None`` for no limit.
        clock: The clock ``deadline`` is on (injectable for tests).
    """

    def __init__(self, deadline: float | None, *, clock: Any = time.perf_counter) -> None:
        self.deadline, self.clock = deadline, clock

    def on_epoch_end(
        self, trainer: Any, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if self.deadline is not None and self.clock() + metrics["seconds"] > self.deadline:
            trainer.should_stop = True
