"""Exact, seeded, optionally stratified train/val/test splits.

[split][tlkit.split] cuts a dataset (or a length) into parts of exactly computed sizes: fractions
are
turned into counts by the largest-remainder method, so 5,000 at ``(0.8, 0.1, 0.1)`` is exactly
4,000 / 500 / 500. The shuffle uses its own ``random.Random(seed)``, which is stable across
Python versions, platforms and torch releases and never touches the global RNGs.
"""

from __future__ import annotations

import itertools
import math
import random
import warnings
from collections import defaultdict, deque
from collections.abc import Hashable, Sequence
from typing import Any, TypeVar, overload

import torch
from torch.utils.data import Dataset, Subset

from .groups import file_name_groups, join_groups, near_duplicate_groups
from .stratify import is_multi_hot, iterative_parts, label_sets, labels_list, rare_labels

__all__ = [
    "file_name_groups",
    "join_groups",
    "kfold",
    "near_duplicate_groups",
    "part_sizes",
    "split",
]

T_co = TypeVar("T_co", covariant=True)


def part_sizes(total: int, fractions_or_counts: Sequence[float]) -> list[int]:
    """Turn fractions (or counts) into exact part sizes that add up to ``total``.

    Fractions are allotted by the largest-remainder (Hamilton) method: each part gets the floor
    of its quota and the samples left over go to the largest fractional remainders, ties to the
    earlier part.

    Args:
        total: Number of samples to divide.
        fractions_or_counts: Positive fractions summing to 1, or positive ints summing to
            ``total``.

    Returns:
        One size per part.

    Raises:
        ValueError: If fractions do not sum to 1 or are not positive, counts do not sum to
            ``total``, there are more parts than samples, or a part would be empty.

    Examples:
        >>> part_sizes(5000, (0.8, 0.1, 0.1))
        [4000, 500, 500]
        >>> part_sizes(10, (1 / 3, 1 / 3, 1 / 3))
        [4, 3, 3]
    """
    parts = list(fractions_or_counts)
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"the number of samples must be a non-negative integer, got {total!r}")
    if not parts:
        raise ValueError("give at least one fraction or count")
    if len(parts) > total:
        raise ValueError(f"cannot split {total} samples into {len(parts)} non-empty parts")
    if all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        counts = [int(p) for p in parts]
        if any(c < 0 for c in counts) or sum(counts) != total:
            raise ValueError(
                f"counts must be non-negative and sum to the number of samples ({total}), "
                f"got {counts} (sum {sum(counts)})"
            )
        if 0 in counts:
            raise ValueError(
                f"counts {counts}: part {counts.index(0)} would be empty; every part needs at "
                "least one sample"
            )
        return counts
    fractions = [float(p) for p in parts]
    if any(not math.isfinite(f) or f <= 0 for f in fractions):
        raise ValueError(f"fractions must be positive, got {parts}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must sum to 1, got {parts} (sum {sum(fractions):.6g})")
    quotas = [f / sum(fractions) * total for f in fractions]
    sizes = [math.floor(q + 1e-9) for q in quotas]
    order = sorted(range(len(parts)), key=lambda i: (-(quotas[i] - sizes[i]), i))
    for i in order[: total - sum(sizes)]:
        sizes[i] += 1
    if 0 in sizes:
        raise ValueError(
            f"{total} samples at fractions {parts} give sizes {sizes}: part {sizes.index(0)} "
            "would be empty; use larger fractions or counts"
        )
    return sizes


def _stratified_counts(
    class_sizes: list[int], fractions: list[float], sizes: list[int]
) -> list[list[int]]:
    """Per-class part counts with exact row sums (class sizes) and column sums (part sizes).

    Each count is the floor or the ceiling of its quota ``class_size * fraction``; the ceilings
    are chosen by a max-flow so that every part gets exactly its size.
    """
    quotas = [[n * f for f in fractions] for n in class_sizes]
    counts = [[math.floor(q + 1e-9) for q in row] for row in quotas]
    row_need = [n - sum(row) for n, row in zip(class_sizes, counts, strict=True)]
    col_need = [s - sum(row[j] for row in counts) for j, s in enumerate(sizes)]
    # Prefer cells with a fractional quota; fall back to any cell (still within one sample).
    for strict in (True, False):
        while True:
            path = _augmenting_path(counts, quotas, row_need, col_need, strict)
            if path is None:
                break
            for c, j, sign in path:
                counts[c][j] += sign
            row_need[path[0][0]] -= 1
            col_need[path[-1][1]] -= 1
        if not any(row_need):
            break
    if any(row_need) or any(col_need):  # pragma: no cover - a feasible rounding always exists
        raise RuntimeError("could not stratify the split; please report this as a bug")
    return counts


def _augmenting_path(
    counts: list[list[int]],
    quotas: list[list[float]],
    row_need: list[int],
    col_need: list[int],
    strict: bool,
) -> list[tuple[int, int, int]] | None:
    """BFS for class -> part -> class -> ... -> part, alternating +1 and -1 cell changes."""

    def can_add(c: int, j: int) -> bool:
        base = math.floor(quotas[c][j] + 1e-9)
        frac = quotas[c][j] - base
        return counts[c][j] == base and (frac > 1e-9 or not strict)

    def can_remove(c: int, j: int) -> bool:
        return counts[c][j] > math.floor(quotas[c][j] + 1e-9)

    rows = len(counts)
    cols = len(col_need)
    starts = [c for c in range(rows) if row_need[c] > 0]
    parent: dict[tuple[str, int], tuple[str, int] | None] = {("r", c): None for c in starts}
    queue = deque(("r", c) for c in starts)
    while queue:
        kind, idx = queue.popleft()
        if kind == "r":
            for j in range(cols):
                if ("p", j) not in parent and can_add(idx, j):
                    parent[("p", j)] = (kind, idx)
                    if col_need[j] > 0:
                        return _unwind(parent, ("p", j))
                    queue.append(("p", j))
        else:
            for c in range(rows):
                if ("r", c) not in parent and can_remove(c, idx):
                    parent[("r", c)] = (kind, idx)
                    queue.append(("r", c))
    return None


def _unwind(
    parent: dict[tuple[str, int], tuple[str, int] | None], end: tuple[str, int]
) -> list[tuple[int, int, int]]:
    steps: list[tuple[int, int, int]] = []
    node: tuple[str, int] | None = end
    while node is not None and parent[node] is not None:
        prev = parent[node]
        assert prev is not None
        if node[0] == "p":  # class prev -> part node: add one
            steps.append((prev[1], node[1], +1))
        else:  # part prev -> class node: remove one
            steps.append((node[1], prev[1], -1))
        node = prev
    steps.reverse()
    return steps


@overload
def split(
    data: int,
    fractions_or_counts: Sequence[float],
    *,
    seed: int,
    stratify: Sequence[Hashable] | torch.Tensor | None = None,
) -> list[torch.Tensor]: ...


@overload
def split(
    data: Dataset[T_co],
    fractions_or_counts: Sequence[float],
    *,
    seed: int,
    stratify: Sequence[Hashable] | torch.Tensor | None = None,
) -> list[Subset[T_co]]: ...


def split(
    data: int | Dataset[Any],
    fractions_or_counts: Sequence[float],
    *,
    seed: int,
    stratify: Sequence[Hashable] | torch.Tensor | None = None,
) -> list[torch.Tensor] | list[Subset[Any]]:
    """Split a dataset or a length into disjoint, complete parts of exact sizes.

    Args:
        data: A dataset (anything with ``__len__``) or the number of samples.
        fractions_or_counts: Positive fractions summing to 1 (``(0.8, 0.1, 0.1)``) or counts
            summing to the number of samples (``(4000, 500, 500)``).
        seed: Seed of the shuffle; the same seed gives the same split on every run and machine.
        stratify: Optional label per sample (a list, tensor or array such as STL10's ``.labels``,
            no images loaded). Each class is then divided in the same proportions, each class's
            count in each part within one sample of its exact share, while the part sizes stay
            exactly those of the unstratified split. A multi-hot ``(N, K)`` matrix (several
            labels per sample) is split by iterative stratification
            ([tlkit.stratify][]), with a warning naming the labels too rare to reach every part.

    Returns:
        One ``Subset`` per part for a dataset, or one sorted ``int64`` index tensor per part for
        a length.

    Raises:
        ValueError: For fractions not summing to 1, negative or zero fractions, counts not
            summing to the length, more parts than samples, or a label count that differs from
            the length.

    Examples:
        >>> train, val, test = split(5000, (0.8, 0.1, 0.1), seed=0)
        >>> len(train), len(val), len(test)
        (4000, 500, 500)
        >>> labels = [0] * 50 + [1] * 50
        >>> parts = split(100, (0.5, 0.5), seed=1, stratify=labels)
        >>> [sum(labels[i] for i in p.tolist()) for p in parts]
        [25, 25]
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if isinstance(data, int) and not isinstance(data, bool):
        total = data
    elif hasattr(data, "__len__"):
        total = len(data)
    else:
        raise TypeError(f"data must be a dataset with __len__ or an int, got {type(data).__name__}")
    sizes = part_sizes(total, fractions_or_counts)
    rng = random.Random(seed)
    if stratify is not None and is_multi_hot(stratify):
        parts = _multi_label_parts(stratify, total, sizes, rng)
    elif stratify is None:
        order = list(range(total))
        rng.shuffle(order)
        bounds = list(itertools.accumulate(sizes, initial=0))
        parts = [order[a:b] for a, b in itertools.pairwise(bounds)]
    else:
        labels = labels_list(stratify, total)
        by_class: dict[Hashable, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_class[label].append(index)
        try:
            classes = sorted(by_class)  # type: ignore[type-var]
        except TypeError:  # labels of mixed types: keep first-appearance order
            classes = list(by_class)
        fractions = [s / total for s in sizes]
        counts = _stratified_counts([len(by_class[c]) for c in classes], fractions, sizes)
        parts = [[] for _ in sizes]
        for cls, row in zip(classes, counts, strict=True):
            members = by_class[cls]
            rng.shuffle(members)
            start = 0
            for j, count in enumerate(row):
                parts[j].extend(members[start : start + count])
                start += count
    index_tensors = [torch.tensor(sorted(p), dtype=torch.int64) for p in parts]
    if isinstance(data, int):
        return index_tensors
    return [Subset(data, t.tolist()) for t in index_tensors]


def _multi_label_parts(
    targets: Any, total: int, sizes: list[int], rng: random.Random
) -> list[list[int]]:
    if len(targets) != total:
        raise ValueError(f"stratify has {len(targets)} label rows but there are {total} samples")
    _warn_rare(targets, len(sizes), "part")
    return iterative_parts(targets, sizes, rng)


def _warn_rare(targets: Any, parts: int, what: str) -> None:
    rare = rare_labels(targets, parts)
    if rare:
        counts = torch.as_tensor(targets).sum(0)
        listed = ", ".join(f"{c} ({int(counts[c])} sample(s))" for c in rare[:10])
        warnings.warn(
            f"label(s) {listed} have fewer positive samples than the {parts} {what}s: they "
            f"cannot appear in every {what}",
            stacklevel=3,
        )


def kfold(
    labels: Sequence[Hashable] | torch.Tensor,
    k: int = 5,
    *,
    groups: Sequence[Hashable] | torch.Tensor | None = None,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Stratified k-fold cross-validation that keeps each group in one fold.

    Groups (near-duplicate images, frames of one video, photos of one object) are dealt to the
    folds whole, largest first, each to the fold where its classes are scarcest so far (the
    greedy method of scikit-learn's ``StratifiedGroupKFold``); without groups every sample is
    its own and each class is spread evenly. ``k`` is lowered to the number of groups when there
    are fewer. Multi-hot labels ``(N, K)`` are stratified label by label: groups holding the
    rarest labels are dealt first (as in iterative stratification, [tlkit.stratify][]), with a
    warning naming the labels too rare to reach every fold.

    Args:
        labels: One label per sample, or a multi-hot ``(N, K)`` matrix.
        k: Number of folds, at least 2.
        groups: Optional group id per sample.
        seed: Seed of the order in which groups of equal size are dealt.

    Returns:
        ``k`` sorted ``int64`` tensors of held-out indices: disjoint, together complete.

    Raises:
        ValueError: For ``k < 2``, groups of another length than the labels, or fewer than
            two groups.

    Examples:
        >>> folds = kfold([0] * 6 + [1] * 4, 2)
        >>> [len(f) for f in folds], sorted(torch.cat(folds).tolist()) == list(range(10))
        ([5, 5], True)
        >>> [f.tolist() for f in kfold([0, 0, 0, 1, 1, 1], 3, groups=[7, 7, 8, 9, 9, 5])]
        [[3, 4], [0, 1], [2, 5]]
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer of at least 2, got {k!r}")
    multi = is_multi_hot(labels)
    if multi:
        label_list: list[Any] = label_sets(labels)
    else:
        label_list = [(label,) for label in labels_list(labels, len(labels))]
    group_list = (
        list(range(len(label_list))) if groups is None else labels_list(groups, len(label_list))
    )
    members: dict[Hashable, list[int]] = defaultdict(list)
    for index, group in enumerate(group_list):
        members[group].append(index)
    if len(members) < 2:
        raise ValueError(f"cross-validation needs at least 2 groups, got {len(members)}")
    k = min(k, len(members))
    if multi:
        _warn_rare(labels, k, "fold")
    keys = [labels_of or ("no label",) for labels_of in label_list]
    class_index = {c: i for i, c in enumerate(dict.fromkeys(c for key in keys for c in key))}
    totals = [0] * len(class_index)
    for key in keys:
        for c in key:
            totals[class_index[c]] += 1
    order = list(members)
    random.Random(seed).shuffle(order)
    present_of = {g: [class_index[c] for i in members[g] for c in keys[i]] for g in order}
    if multi:  # the rarest labels first, then the largest groups
        order.sort(key=lambda g: (min(totals[c] for c in present_of[g]), -len(members[g])))
    else:
        order.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the shuffled order
    counts = [[0] * len(class_index) for _ in range(k)]
    sizes = [0] * k
    folds: list[list[int]] = [[] for _ in range(k)]
    for group in order:
        present = present_of[group]

        def load(f: int, present: list[int] = present) -> tuple[float, int]:
            return sum(counts[f][c] / totals[c] for c in present), sizes[f]

        best = min(range(k), key=load)
        folds[best] += members[group]
        sizes[best] += len(members[group])
        for c in present:
            counts[best][c] += 1
    return [torch.tensor(sorted(f), dtype=torch.int64) for f in folds]
