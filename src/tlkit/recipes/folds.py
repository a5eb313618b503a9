"""Which images the probe's cross-validation folds keep together: near-duplicates (by their
features) and files named alike, so that no fold is judged on a copy of what it trained on."""

from __future__ import annotations

import torch

from ..groups import file_name_groups, join_groups, near_duplicate_groups
from ..stratify import label_sets
from .settings import AUTO

__all__ = ["describe_grouping", "fold_groups", "usable_groups"]


def fold_groups(
    final: torch.Tensor, y: torch.Tensor, files: list[str] | None, n: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The near-duplicates found from the first ``n`` images' ``final`` features ``(N, D)``,
    the files named alike, and the groups the folds keep together."""
    found = near_duplicate_groups(final, threshold=AUTO.duplicate_similarity)
    keys = label_sets(y) if y.dim() == 2 else y
    named = file_name_groups(files[:n], keys, folds=AUTO.probe_folds) if files else None
    groups = usable_groups(found if named is None else join_groups(found, named), y)
    return found, named, groups


def describe_grouping(
    n: int, found: torch.Tensor, named: torch.Tensor | None, groups: torch.Tensor
) -> str:
    """What the folds kept together, in words."""
    similar = f"features' cosine similarity >= {AUTO.duplicate_similarity:g}"
    kinds = [f"{n - len(found.unique())} near-duplicate images ({similar})"]
    if named is not None:
        kinds.append(f"{n - len(named.unique())} images named like another of their class")
    if len(groups.unique()) < n:
        together = f"{n} images in {len(groups.unique())} groups"
        return f"folds keep together {' and '.join(kinds)}: {together}"
    if len(found.unique()) < n or (named is not None and len(named.unique()) < n):
        return (
            f"found {' and '.join(kinds)}, but grouping them would leave a class in one group: "
            "folds split image by image"
        )
    return f"no near-duplicate or alike-named images found ({similar})"


def usable_groups(groups: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``groups``, except that the images of a class held in fewer than 2 groups become groups
    of their own: a class in one group would be missing from the training part of the fold
    that holds it out, and every image of it predicted wrong.

    Examples:
        >>> usable_groups(torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 0, 1, 1, 1])).tolist()
        [3, 4, 1, 1, 2]
    """
    out, fresh = groups.clone(), int(groups.max()) + 1
    columns = labels.T.bool() if labels.dim() == 2 else [labels == c for c in labels.unique()]
    for column in columns:
        members = column.nonzero().flatten()
        if len(groups[members].unique()) < 2:
            out[members] = torch.arange(fresh, fresh + len(members))
            fresh += len(members)
    return out
