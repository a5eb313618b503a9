"""A small generic name -> object registry.

Used by the augmentation presets ([tlkit.augment][tlkit.augment]) and open to users: a registry
refuses
duplicate names, lists names with an optional glob filter, and answers an unknown name with a
``KeyError`` that names the closest matches and every available name.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "unknown_name_error"]


def unknown_name_error(
    kind: str, name: str, available: Iterable[str], *, listing: Iterable[str] | None = None
) -> KeyError:
    """Build the ``KeyError`` tlkit raises for an unknown name.

    Args:
        kind: What was looked up, for the message (``"preset"``, ``"layer"``, ...).
        name: The name the user asked for.
        available: Every valid name (searched for close matches).
        listing: The names to list in the message; defaults to ``available``. Pass a shorter
            overview (say, a model's top-level layers) when ``available`` is long.

    Returns:
        A ``KeyError`` whose message names the bad value, the closest matches and the choices.

    Examples:
        >>> err = unknown_name_error("preset", "randaugmnet", ["none", "randaugment"])
        >>> print(err.args[0])
        unknown preset 'randaugmnet'; did you mean 'randaugment'? available: none, randaugment
    """
    choices = sorted(set(available))
    scored = sorted(
        ((difflib.SequenceMatcher(None, str(name), c).ratio(), c) for c in choices),
        key=lambda item: -item[0],
    )
    # keep the best match and any nearly as good, at most three
    close = [c for r, c in scored[:3] if r >= 0.6 and r >= scored[0][0] - 0.1] if scored else []
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
    shown = choices if listing is None else list(listing)
    text = ", ".join(shown[:40]) + (f", ... ({len(shown) - 40} more)" if len(shown) > 40 else "")
    return KeyError(f"unknown {kind} {name!r}{hint} available: {text}")


class Registry(Generic[T]):
    """Maps names to objects (usually builder functions).

    Args:
        kind: What the registry holds, used in error messages (``"preset"``).

    Examples:
        >>> reg: Registry[int] = Registry("number")
        >>> @reg.register("one")
        ... def one() -> int:
        ...     return 1
        >>> reg.names()
        ['one']
        >>> reg.get("one")()
        1
        >>> reg.get("onw")
        Traceback (most recent call last):
        ...
        KeyError: "unknown number 'onw'; did you mean 'one'? available: one"
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers an object under ``name``.

        Args:
            name: The key; must be a non-empty string not yet registered.

        Returns:
            A decorator that stores its argument and returns it unchanged.

        Raises:
            ValueError: If ``name`` is empty or already registered.

        Examples:
            >>> reg: Registry[str] = Registry("colour")
            >>> _ = reg.register("red")("#f00")
            >>> reg.register("red")("#ff0000")
            Traceback (most recent call last):
            ...
            ValueError: colour 'red' is already registered; choose another name
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        self._check_free(name)

        def decorator(obj: T) -> T:
            self._check_free(name)  # the decorator may be applied twice
            self._items[name] = obj
            return obj

        return decorator

    def _check_free(self, name: str) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered; choose another name")

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names, sorted, optionally filtered by a glob pattern.

        Args:
            pattern: An ``fnmatch`` pattern such as ``"*augment"``; ``None`` lists all.

        Returns:
            The matching names in sorted order.

        Examples:
            >>> reg: Registry[int] = Registry("n")
            >>> for key in ("b", "a", "ab"):
            ...     _ = reg.register(key)(0)
            >>> reg.names(), reg.names("a*")
            (['a', 'ab', 'b'], ['a', 'ab'])
        """
        keys = sorted(self._items)
        return keys if pattern is None else [k for k in keys if fnmatch.fnmatchcase(k, pattern)]

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            KeyError: If ``name`` is unknown; the message lists close matches and all names.
        """
        try:
            return self._items[name]
        except KeyError:
            raise unknown_name_error(self.kind, name, self._items) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
