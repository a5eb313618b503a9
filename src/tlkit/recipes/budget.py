"""Time: ``"5m"`` to seconds, the clock every process of a fit reads, and the
[Budget][tlkit.recipes.budget.Budget] that owns a fit's deadline and where its time went."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

from .. import distributed

__all__ = ["Budget", "FitPace", "parse_budget", "shared_clock"]

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


class Budget:
    """The one owner of a fit's time: its deadline, the time left, and each stage's predicted
    and measured seconds. No other module computes the time left.

    The rule when a stage runs long or short: the stages still to come are planned again
    ([tlkit.recipes.planner.plan][]) from the time left and the pace measured, so a slow
    stage shrinks the ones after it (fewer probe fits, no zoomed views, fewer epochs) and a
    quick one leaves them more. Under ``torchrun`` every reading is rank 0's clock
    ([shared_clock][tlkit.recipes.budget.shared_clock]), so all processes decide alike.

    Args:
        seconds: The budget, or ``None`` for none.
        start: When it started, on ``clock`` (default: now).
        clock: Seconds on a monotonic clock.

    Examples:
        >>> ticks = iter([0.0, 2.0, 5.0, 6.0, 6.0, 7.0])
        >>> budget = Budget(10.0, clock=lambda: next(ticks))
        >>> budget.expect("decoding", 4.0)
        >>> budget.lap("decoding"), budget.lap("features"), budget.lap("decoding")  # 2, 5, 6 s
        (2.0, 3.0, 1.0)
        >>> budget.measured, budget.predicted, budget.left()  # at 6 s
        ({'decoding': 3.0, 'features': 3.0}, {'decoding': 4.0}, 4.0)
        >>> budget.over()  # at 7 s
        0.0
    """

    def __init__(
        self,
        seconds: float | None,
        *,
        start: float | None = None,
        clock: Callable[[], float] = shared_clock,
    ) -> None:
        self.clock = clock
        self.start = clock() if start is None else start
        self.seconds = seconds
        self.deadline = None if seconds is None else self.start + seconds
        self.measured: dict[str, float] = {}
        self.predicted: dict[str, float] = {}
        self.last = self.start

    def left(self) -> float | None:
        """Seconds until the deadline (0 once past it), or ``None`` without a budget."""
        return None if self.deadline is None else max(self.deadline - self.clock(), 0.0)

    def over(self) -> float:
        """Seconds past the deadline (0 before it, or without a budget)."""
        return 0.0 if self.deadline is None else max(self.clock() - self.deadline, 0.0)

    def spent(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def expect(self, stage: str, seconds: float) -> None:
        """Record the seconds the plan predicts for ``stage`` as it starts."""
        self.predicted[stage] = self.predicted.get(stage, 0.0) + seconds

    def lap(self, stage: str, part: tuple[str, float] | None = None) -> float:
        """Count the time since the last mark to ``stage``; ``part``: ``(other stage,
        seconds)`` of it timed apart, counted to that stage instead. Returns the seconds
        counted to ``stage``."""
        now = self.clock()
        spent = now - self.last
        if part is not None:
            self.measured[part[0]] = self.measured.get(part[0], 0.0) + part[1]
            spent -= part[1]
        self.measured[stage] = self.measured.get(stage, 0.0) + spent
        self.last = now
        return spent


class FitPace:
    """How long this machine's probe fits take per feature dimension, measured on the fits so
    far, and whether another fits in the time left of ``budget`` (recording the ones left
    out)."""

    def __init__(self, budget: Budget | None) -> None:
        self.budget = budget
        self.seconds = self.dims = 0.0
        self.skipped: list[str] = []

    def record(self, dims: float, seconds: float) -> None:
        self.dims += dims
        self.seconds += seconds

    def fits(self, dims: float, what: str) -> bool:
        left = None if self.budget is None else self.budget.left()
        if left is None or self.dims == 0:
            return True
        need = self.seconds / self.dims * dims
        if need <= left:
            return True
        self.skipped.append(
            f"{what} not fitted: about {need:.0f} s at the pace of the fits before it, more "
            f"than the {left:.0f} s left"
        )
        return False
