"""Stratification of multi-label targets: several labels per sample, as a multi-hot matrix.

One label per sample is stratified exactly by [tlkit.split][]; with several, no split can keep
every label's share in every part, and the usual answer is iterative stratification (Sechidis,
Tsoumakas and Vlahavas, "On the Stratification of Multi-Label Data", ECML PKDD 2011): the
rarest label is dealt first, each of its samples to the part that still wants most of it, so
that rare labels (the ones a careless split loses from a part) are spread as evenly as they can
be. Samples with no label at all are dealt last, to fill the parts to their exact sizes.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from typing import Any

import torch

__all__ = ["is_multi_hot", "label_sets", "labels_list", "rare_labels"]


def labels_list(labels: Any, total: int, name: str = "stratify") -> list[Hashable]:
    """``labels`` as a list of one hashable label per sample, checked against ``total``."""
    shape = getattr(labels, "shape", None)
    if shape is not None and len(shape) != 1:
        raise ValueError(
            f"{name} must hold one label per sample (1-D) or, for several labels per sample, a "
            f"multi-hot (N, K) matrix of 0 and 1; got shape {tuple(shape)}"
        )
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__iter__"):
        raise TypeError(f"{name} must be a sequence of labels, got {type(labels).__name__}")
    values = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    unhashable = next((v for v in values if not isinstance(v, Hashable)), None)
    if unhashable is not None:
        raise TypeError(f"{name} labels must be hashable scalars, got {unhashable!r}")
    if len(values) != total:
        raise ValueError(f"{name} has {len(values)} labels but there are {total} samples")
    return values


def is_multi_hot(labels: Any) -> bool:
    """Whether ``labels`` is a 2-D ``(N, K)`` tensor or array of 0/1 (multi-label targets).

    Examples:
        >>> is_multi_hot(torch.tensor([[1, 0], [1, 1]])), is_multi_hot([0, 1])
        (True, False)
    """
    shape = getattr(labels, "shape", None)
    if shape is None or len(shape) != 2:
        return False
    values = torch.as_tensor(labels)
    return bool(((values == 0) | (values == 1)).all())


def label_sets(targets: Any) -> list[tuple[int, ...]]:
    """The labels of each sample of a multi-hot ``(N, K)`` matrix, as a tuple of indices.

    Examples:
        >>> label_sets(torch.tensor([[1, 0, 1], [0, 0, 0]]))
        [(0, 2), ()]
    """
    return [tuple(row.nonzero().flatten().tolist()) for row in _matrix(targets)]


def rare_labels(targets: Any, parts: int) -> list[int]:
    """The labels with fewer positive samples than ``parts``: no split into ``parts`` parts
    can put one in each.

    Examples:
        >>> rare_labels(torch.tensor([[1, 1], [1, 0], [1, 0]]), 2)
        [1]
    """
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be a positive integer, got {parts!r}")
    counts = _matrix(targets).sum(0)
    return [int(c) for c in ((counts > 0) & (counts < parts)).nonzero().flatten()]


def _matrix(targets: Any) -> torch.Tensor:
    """``targets`` as a tensor, checked to be a multi-hot ``(N, K)`` matrix."""
    if not is_multi_hot(targets):
        shape = tuple(getattr(targets, "shape", ()))
        raise ValueError(
            f"targets must be a multi-hot (N, K) matrix of 0 and 1 (a tensor or array), got "
            f"{type(targets).__name__} of shape {shape}"
        )
    return torch.as_tensor(targets)


def iterative_parts(targets: Any, sizes: list[int], rng: random.Random) -> list[list[int]]:
    """Deal the samples of a multi-hot ``(N, K)`` matrix into parts of exactly ``sizes``:
    the rarest label still undealt first, each of its samples to the open part that wants most
    of that label (ties: most of any label, then most room, then at random); unlabelled
    samples last, into the room left."""
    sets = label_sets(targets)
    n, total = len(sets), sum(sizes)
    if total != n:  # pragma: no cover - the callers pass part_sizes(n, ...)
        raise ValueError(f"part sizes sum to {total}, not to the {n} samples")
    labels = torch.as_tensor(targets).shape[1]
    fractions = [s / n for s in sizes]
    counts = [0] * labels
    for labels_of in sets:
        for c in labels_of:
            counts[c] += 1
    wanted = [[counts[c] * f for c in range(labels)] for f in fractions]
    wanted_any = [s * sum(len(x) for x in sets) / n for s in sizes]
    room = list(sizes)
    left = [0] * labels
    holders: list[list[int]] = [[] for _ in range(labels)]
    order = list(range(n))
    rng.shuffle(order)
    for i in order:
        for c in sets[i]:
            holders[c].append(i)
            left[c] += 1
    parts: list[list[int]] = [[] for _ in sizes]
    dealt = [False] * n
    while any(left):
        label = min((c for c in range(labels) if left[c]), key=lambda c: (left[c], c))
        for i in holders[label]:
            if dealt[i]:
                continue
            open_parts = [j for j in range(len(sizes)) if room[j] > 0]
            j = max(
                open_parts, key=lambda p: (wanted[p][label], wanted_any[p], room[p], rng.random())
            )
            parts[j].append(i)
            dealt[i], room[j] = True, room[j] - 1
            for c in sets[i]:
                wanted[j][c] -= 1
                wanted_any[j] -= 1
                left[c] -= 1
    rest = [i for i in order if not dealt[i]]
    for j in range(len(sizes)):
        parts[j] += rest[: room[j]]
        rest = rest[room[j] :]
    return parts
