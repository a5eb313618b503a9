"""Checks of what a user gives a saved model: the description inside ``model.pt`` and a
confidence threshold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["check_confidence", "check_description"]


def check_confidence(min_confidence: float | None) -> None:
    """Raise unless ``min_confidence`` is ``None`` or a probability.

    Examples:
        >>> check_confidence(0.5)
        >>> check_confidence(50)
        Traceback (most recent call last):
        ...
        ValueError: min_confidence must be a probability from 0 to 1, got 50
    """
    if min_confidence is None:
        return
    if (
        isinstance(min_confidence, bool)
        or not isinstance(min_confidence, (int, float))
        or not 0 <= min_confidence <= 1
    ):
        raise ValueError(
            f"min_confidence must be a probability from 0 to 1, got {min_confidence!r}"
        )


REQUIRED = (
    "classes",
    "backbone",
    "image_size",
    "mean",
    "std",
    "background",
    "recipe",
    "state_dict",
)
"""The fields every ``model.pt`` holds."""


def _numbers(values: Any, low: float, high: float, integer: bool = False) -> bool:
    """Whether ``values`` are 3 numbers from ``low`` to ``high`` (integers where asked)."""
    kind = int if integer else (int, float)
    return (
        isinstance(values, (list, tuple))
        and len(values) == 3
        and all(
            isinstance(v, kind) and not isinstance(v, bool) and low <= v <= high for v in values
        )
    )


def _names(values: Any) -> bool:
    """Whether ``values`` is a non-empty list of distinct, non-empty names."""
    return (
        isinstance(values, list)
        and bool(values)
        and all(isinstance(v, str) and v for v in values)
        and len(set(values)) == len(values)
    )


def _probabilities(values: Any, state: dict[str, Any]) -> bool:
    """Whether ``values`` is ``None`` or one probability per class."""
    return values is None or (
        isinstance(values, list)
        and isinstance(state["classes"], list)
        and len(values) == len(state["classes"])
        and all(isinstance(t, float) and 0 <= t <= 1 for t in values)
    )


def _layer_lists(values: Any, state: dict[str, Any]) -> bool:
    """Whether ``values`` is empty or one list of layer names per backbone."""
    names = state.get("backbones", [state["backbone"]])
    return not values or (
        isinstance(values, list)
        and isinstance(names, list)
        and len(values) == len(names)
        and all(isinstance(t, list) and all(isinstance(n, str) for n in t) for t in values)
    )


FIELDS: dict[str, tuple[Any, Callable[[Any, dict[str, Any]], bool], str]] = {
    "classes": (None, lambda v, s: _names(v), "classes must be distinct names, got {!r:.80}"),
    "image_size": (
        None,
        lambda v, s: isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= 4096,
        "image_size must be 8 to 4096 pixels, got {!r:.40}",
    ),
    "mean": (None, lambda v, s: _numbers(v, -10.0, 10.0), "mean must be 3 numbers, got {!r:.60}"),
    "std": (None, lambda v, s: _numbers(v, 1e-6, 10.0), "std must be 3 numbers, got {!r:.60}"),
    "background": (
        None,
        lambda v, s: _numbers(v, 0, 255, integer=True),
        "background must be 3 values 0-255, got {!r:.60}",
    ),
    "temperature": (
        1.0,
        lambda v, s: isinstance(v, (int, float)) and not isinstance(v, bool) and 0.01 <= v <= 1000,
        "temperature must be a number 0.01 to 1000, got {!r:.40}",
    ),
    "thresholds": (
        None,
        _probabilities,
        "thresholds must be one probability per class, got {!r:.60}",
    ),
    "taps": (
        None,
        _layer_lists,
        "taps must be one list of layer names per backbone, got {!r:.60}",
    ),
    "state_dict": (None, lambda v, s: isinstance(v, dict), "state_dict is not a dict of tensors"),
}
"""Each checked field of a ``model.pt``: its default where it may be absent, what a valid value
is (given the whole description), and what is said of a bad one."""


def check_description(state: dict[str, Any], file: Path) -> None:
    """Refuse a ``model.pt`` whose description was damaged or edited: each field named.

    Examples:
        >>> check_description({"classes": ["a", "a"]}, Path("m.pt"))
        Traceback (most recent call last):
        ...
        ValueError: 'm.pt' is damaged or was edited after tlkit wrote it: it lacks backbone, ...
    """
    missing = [k for k in REQUIRED if k not in state]
    problems = [f"it lacks {', '.join(missing)}"] if missing else []
    if not missing:
        for name, (default, check, said) in FIELDS.items():
            value = state.get(name, default)
            if not check(value, state):
                problems.append(said.format(value))
    if problems:
        raise ValueError(
            f"{str(file)!r} is damaged or was edited after tlkit wrote it: {'; '.join(problems)}"
        )
