"""The errors tlkit raises of its own; everything else is a built-in exception (``ValueError``,
``TypeError``, ``FileNotFoundError``, ...) whose message names the bad value and the choices."""

from __future__ import annotations

__all__ = ["NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The training loss or the weights became NaN or infinite; the message says where.

    Examples:
        >>> issubclass(NonFiniteLossError, FloatingPointError)
        True
    """
