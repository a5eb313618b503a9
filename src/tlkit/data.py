"""Dataset helpers: give each part of a split its own transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

__all__ = ["WithTransform"]


class WithTransform(Dataset[tuple[Any, Any]]):
    """Apply ``transform`` to the input of every ``(input, target)`` item of ``dataset``.

    A split shares one underlying dataset between its parts, but the training part wants random
    augmentation and the validation and test parts a fixed evaluation view. Load the dataset
    without a transform, split it, and wrap each part.

    Args:
        dataset: A map-style dataset of ``(input, target, ...)`` items (e.g. a ``Subset``).
        transform: Applied to the input.
        target_transform: Applied to the target.

    Examples:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> import tlkit
        >>> data = TensorDataset(torch.arange(10.0), torch.arange(10))
        >>> train, val = tlkit.split(data, (0.8, 0.2), seed=0)
        >>> doubled = WithTransform(train, lambda x: x * 2)
        >>> len(doubled), doubled[0][0] == 2 * train[0][0]
        (8, tensor(True))
    """

    def __init__(
        self,
        dataset: Dataset[Any],
        transform: Callable[[Any], Any] | None = None,
        target_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        item = self.dataset[index]
        x, y = item[0], item[1]
        if self.transform is not None:
            x = self.transform(x)
        if self.target_transform is not None:
            y = self.target_transform(y)
        return x, y

    def __repr__(self) -> str:
        return f"WithTransform({self.dataset!r}, transform={self.transform!r})"
