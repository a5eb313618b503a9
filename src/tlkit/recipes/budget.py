"""Time budgets: ``"5m"`` to seconds, and a callback that stops training when the next epoch
would not fit."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from .. import distributed

__all__ = ["FitPace", "Laps", "parse_budget", "shared_clock"]

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?\s*(?:{_NUMBER}m)?\s*(?:{_NUMBER}s)?")


def shared_clock() -> float:
    """``time.perf_counter()``; under ``torchrun``, rank 0's, on every process.

    Every timing of [tlkit.finetune][] (its speed checks, the time left) reads this clock, so
    that all processes measure the same seconds and take the same decisions. Under ``torchrun``
    each call is a collective: every process must make the same calls.

    Examples:
        >>> shared_clock() <= time.perf_counter()
        True
    """
    return distributed.agree(time.perf_counter())


class Laps:
    """Seconds between marks on ``clock``, summed by name: where the time of a run went
    (``first``: the time from ``start`` to now, under that name).

    Examples:
        >>> ticks = iter([0.0, 2.0, 5.0, 6.0])
        >>> laps = Laps(lambda: next(ticks))
        >>> laps.lap("decoding"); laps.lap("features"); laps.lap("decoding")
        >>> laps.seconds
        {'decoding': 3.0, 'features': 3.0}
    """

    def __init__(
        self, clock: Callable[[], float], start: float | None = None, first: str | None = None
    ) -> None:
        self.clock = clock
        self.last = clock() if start is None else start
        self.seconds: dict[str, float] = {}
        if first is not None:  # the time from ``start`` to now
            self.lap(first)

    def lap(self, name: str, part: tuple[str, float] | None = None) -> None:
        """Count the time since the last mark to ``name``; ``part``: ``(other name, seconds)``
        of it timed apart, counted to that name instead."""
        now = self.clock()
        spent = now - self.last
        if part is not None:
            self.seconds[part[0]] = self.seconds.get(part[0], 0.0) + part[1]
            spent -= part[1]
        self.seconds[name] = self.seconds.get(name, 0.0) + spent
        self.last = now


def parse_budget(text: str | float | int | None) -> float | None:
    """Seconds from ``"90s"``, ``"5m"``, ``"1h30m"``, ``"1.5h"`` or a number of seconds.

    Raises:
        ValueError: For anything else, or a budget that is not positive.

    Examples:
        >>> parse_budget("5m"), parse_budget("1h30m"), parse_budget(90), parse_budget(None)
        (300.0, 5400.0, 90.0, None)
        >>> parse_budget("1h30")  # 30 what?
        Traceback (most recent call last):
        ...
        ValueError: budget must be a positive duration such as ... got '1h30'
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        parts = _DURATION.fullmatch(raw) if raw else None
        if re.fullmatch(_NUMBER, raw):
            seconds = float(raw)
        elif parts is None or not any(parts.groups()):
            seconds = math.nan  # "1h30" (30 what?), "1m-30s", "-5m", "5m5m": refused
        else:
            hours, minutes, secs = (float(v) if v else 0.0 for v in parts.groups())
            seconds = 3600 * hours + 60 * minutes + secs
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            f"budget must be a positive duration such as '90s', '5m', '1h30m' or a number of "
            f"seconds, got {text!r}"
        )
    return seconds


class FitPace:
    """How long this machine's probe fits take per feature dimension, measured on the fits so
    far, and whether another fits before the deadline (recording the ones left out)."""

    def __init__(self, deadline: float | None, clock: Callable[[], float]) -> None:
        self.deadline, self.clock = deadline, clock
        self.seconds = self.dims = 0.0
        self.skipped: list[str] = []

    def record(self, dims: float, seconds: float) -> None:
        self.dims += dims
        self.seconds += seconds

    def fits(self, dims: float, what: str) -> bool:
        if self.deadline is None or self.dims == 0:
            return True
        need, left = self.seconds / self.dims * dims, self.deadline - self.clock()
        if need <= left:
            return True
        self.skipped.append(
            f"{what} not fitted: about {need:.0f} s at the pace of the fits before it, more "
            f"than the {max(left, 0):.0f} s left"
        )
        return False
