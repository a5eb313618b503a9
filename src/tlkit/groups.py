"""Groups of related images, to keep on one side of every split: near-duplicates found from
features, files named alike, and the union of several groupings."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from .stratify import labels_list

__all__ = ["file_name_groups", "join_groups", "near_duplicate_groups"]


def near_duplicate_groups(features: torch.Tensor, *, threshold: float = 0.95) -> torch.Tensor:
    """Group ids joining samples whose features are nearly the same (cosine similarity of the
    centred features at least ``threshold``), transitively: frames of one animation, crops and
    re-saves of one picture. Give them to [kfold][tlkit.splits.kfold] so that no near-copy of a
    held-out image is trained on.

    Args:
        features: ``(N, D)`` features of the images (a pretrained body's pooled output).
        threshold: Cosine similarity from which two images count as near-duplicates.

    Returns:
        ``(N,)`` int64 group ids, numbered in order of first appearance.

    Raises:
        ValueError: For features that are not ``(N, D)`` or a threshold outside (0, 1].

    Examples:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [-1.0, 0.0]])
        >>> near_duplicate_groups(x).tolist()
        [0, 1, 0, 2]
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    x = features.float() - features.float().mean(0)
    x = torch.nn.functional.normalize(x, dim=1)
    pairs = []
    for start in range(0, len(x), 1024):  # blocks keep memory at 1024 x N similarities
        similar = (x[start : start + 1024] @ x.T >= threshold).nonzero()
        pairs += [(start + a, b) for a, b in similar.tolist() if start + a != b]
    return _components(len(x), pairs)


def file_name_groups(files: Sequence[Any], labels: Any, *, folds: int = 5) -> torch.Tensor:
    """Group ids joining files of one class whose names begin alike: the frames and poses of
    one sprite (``bowman-attack-1.png``, ``bowman-defend.png``), the shots of one video
    (``clip7_0001.png``), the views of one object.

    A name is cut into words at ``-``, ``_``, ``.`` and spaces. For each class, the files are
    grouped by their first word, or if that makes a group too large, their first two words,
    and so on: the first (coarsest) grouping in which no group holds more than ``1 / folds``
    of its class (so that stratified folds remain possible) and some group holds more than one
    file. A class where no such grouping exists (``IMG_0001.jpg``, ``IMG_0002.jpg``... share a
    first word and then nothing) is left ungrouped. Grouping errs on the safe side: images
    wrongly grouped only make cross-validation a little pessimistic, while related images on
    both sides of a fold make it say what new images will not confirm.

    Args:
        files: One path per image (only the file name's stem is read).
        labels: One class label per image.
        folds: The folds the groups must allow.

    Returns:
        ``(N,)`` int64 group ids, numbered in order of first appearance.

    Raises:
        ValueError: For files and labels of different lengths or ``folds`` below 2.

    Examples:
        >>> names = ["orc-1.png", "orc-2.png", "elf.png", "elf-bow.png", "imp.png", "ent.png"]
        >>> file_name_groups(names, [0] * 6, folds=2).tolist()
        [0, 0, 1, 1, 2, 3]
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer of at least 2, got {folds!r}")
    classes = labels_list(labels, len(files), "labels")
    words = [[w for w in re.split(r"[-_. ]+", Path(str(f)).stem.lower()) if w] for f in files]
    members: defaultdict[Hashable, list[int]] = defaultdict(list)
    for index, label in enumerate(classes):
        members[label].append(index)
    pairs = []
    for indices in members.values():
        for depth in range(1, max((len(words[i]) for i in indices), default=0) + 1):
            keys: defaultdict[tuple[str, ...], list[int]] = defaultdict(list)
            for i in indices:
                keys[tuple(words[i][:depth]) or (str(i),)].append(i)
            largest = max(len(group) for group in keys.values())
            if largest < 2:
                break  # every file alone: deeper words split no further
            if largest * folds <= len(indices):
                pairs += [(group[0], i) for group in keys.values() for i in group[1:]]
                break
    return _components(len(files), pairs)


def _components(n: int, pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Connected components of ``n`` items joined by ``pairs``: ids in order of first item."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    ids: dict[int, int] = {}
    return torch.tensor([ids.setdefault(root(i), len(ids)) for i in range(n)], dtype=torch.long)


def join_groups(*groupings: Any) -> torch.Tensor:
    """Group ids joining items that share a group in any of ``groupings`` (transitively).

    Examples:
        >>> join_groups(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2])).tolist()
        [0, 0, 0, 1]
    """
    ids = [torch.as_tensor(g).tolist() for g in groupings]
    if not ids or len({len(g) for g in ids}) != 1:
        raise ValueError("give one or more groupings of the same length")
    pairs = []
    for grouping in ids:
        first: dict[Any, int] = {}
        pairs += [(first.setdefault(g, i), i) for i, g in enumerate(grouping)]
    return _components(len(ids[0]), pairs)
