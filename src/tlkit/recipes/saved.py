"""Checks of what a user gives a saved model: the description inside ``model.pt`` and a
confidence threshold."""

from __future__ import annotations

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


def check_description(state: dict[str, Any], file: Path) -> None:
    """Refuse a ``model.pt`` whose description was damaged or edited: each field named."""
    missing = [k for k in ("classes", "backbone", "image_size", "mean", "std", "background",
                           "recipe", "state_dict") if k not in state]  # fmt: skip
    classes, size = state.get("classes"), state.get("image_size")
    problems = [f"it lacks {', '.join(missing)}"] if missing else []
    if not missing:
        if (
            not isinstance(classes, list)
            or not classes
            or len(set(map(str, classes))) != len(classes)
            or not all(isinstance(c, str) and c for c in classes)
        ):
            problems.append(f"classes must be distinct names, got {classes!r:.80}")
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 4096:
            problems.append(f"image_size must be 8 to 4096 pixels, got {size!r:.40}")
        for key, low in (("mean", -10.0), ("std", 1e-6)):
            values = state[key]
            if (
                not isinstance(values, (list, tuple))
                or len(values) != 3
                or not all(isinstance(v, (int, float)) and low <= v <= 10 for v in values)
            ):
                problems.append(f"{key} must be 3 numbers, got {values!r:.60}")
        background = state["background"]
        if (
            not isinstance(background, (list, tuple))
            or len(background) != 3
            or not all(isinstance(v, int) and 0 <= v <= 255 for v in background)
        ):
            problems.append(f"background must be 3 values 0-255, got {background!r:.60}")
        temperature = state.get("temperature", 1.0)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not 0.01 <= temperature <= 1000
        ):
            problems.append(f"temperature must be a number 0.01 to 1000, got {temperature!r:.40}")
        thresholds = state.get("thresholds")
        if thresholds is not None and (
            not isinstance(thresholds, list)
            or len(thresholds) != len(classes or [])
            or not all(isinstance(t, float) and 0 <= t <= 1 for t in thresholds)
        ):
            problems.append(f"thresholds must be one probability per class, got {thresholds!r:.60}")
        taps, names = state.get("taps") or [], state.get("backbones", [state["backbone"]])
        if taps and (
            not isinstance(taps, list)
            or not isinstance(names, list)
            or len(taps) != len(names)
            or not all(isinstance(t, list) and all(isinstance(n, str) for n in t) for t in taps)
        ):
            problems.append(f"taps must be one list of layer names per backbone, got {taps!r:.60}")
        if not isinstance(state["state_dict"], dict):
            problems.append("state_dict is not a dict of tensors")
    if problems:
        raise ValueError(
            f"{str(file)!r} is damaged or was edited after tlkit wrote it: {'; '.join(problems)}"
        )
