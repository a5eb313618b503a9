from __future__ import annotations

import random

import pytest
import torch

import tlkit
from tlkit.splits import kfold
from tlkit.stratify import is_multi_hot, label_sets, rare_labels


def _tags(n: int = 300, labels: int = 8, seed: int = 0) -> torch.Tensor:
    """Multi-hot targets with labels of very different frequency (1 in 2 down to 1 in 40)."""
    g = torch.Generator().manual_seed(seed)
    rates = torch.tensor([0.5, 0.3, 0.2, 0.1, 0.08, 0.05, 0.04, 0.025])[:labels]
    return (torch.rand(n, labels, generator=g) < rates).long()


def _spread(targets: torch.Tensor, parts: list[torch.Tensor]) -> torch.Tensor:
    """Each part's share of each label's positives, divided by the part's share of samples."""
    total = targets.sum(0).double()
    return torch.stack(
        [targets[p].sum(0).double() / total / (len(p) / len(targets)) for p in parts]
    )


def test_multi_label_split_keeps_exact_sizes_and_spreads_rare_labels_better_than_chance() -> None:
    targets = _tags()
    parts = tlkit.split(len(targets), (0.7, 0.15, 0.15), seed=0, stratify=targets)
    assert [len(p) for p in parts] == [210, 45, 45]
    assert sorted(torch.cat(parts).tolist()) == list(range(300))
    stratified = (_spread(targets, parts) - 1).abs().max()
    shuffled = [
        (_spread(targets, tlkit.split(300, (0.7, 0.15, 0.15), seed=s)) - 1).abs().max()
        for s in range(10)
    ]
    assert stratified < min(shuffled)
    for label in range(targets.shape[1]):  # every label reaches every part (each has >= 3)
        assert all(targets[p, label].sum() > 0 for p in parts)


def test_multi_label_split_is_seeded_and_leaves_global_rng_alone() -> None:
    targets = _tags()
    state = random.getstate(), torch.get_rng_state()
    a = tlkit.split(300, (0.5, 0.5), seed=3, stratify=targets)
    b = tlkit.split(300, (0.5, 0.5), seed=3, stratify=targets)
    c = tlkit.split(300, (0.5, 0.5), seed=4, stratify=targets)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[1])


def test_a_label_too_rare_for_every_part_is_named() -> None:
    targets = torch.zeros(20, 3, dtype=torch.long)
    targets[:10, 0] = 1
    targets[10:, 1] = 1
    targets[0, 2] = 1  # one image of label 2: it cannot be on both sides
    with pytest.warns(UserWarning, match=r"label\(s\) 2 \(1 sample\(s\)\) have fewer"):
        parts = tlkit.split(20, (0.5, 0.5), seed=0, stratify=targets)
    assert [len(p) for p in parts] == [10, 10]
    with pytest.warns(UserWarning, match="every fold"):
        kfold(targets, 5)


def test_multi_label_kfold_is_complete_keeps_groups_and_spreads_each_label() -> None:
    targets = _tags(400)
    groups = torch.arange(400) // 2  # pairs of images that must stay together
    folds = kfold(targets, 5, groups=groups, seed=1)
    assert sorted(torch.cat(folds).tolist()) == list(range(400))
    for fold in folds:
        assert set(groups[fold].tolist()).isdisjoint(
            set(groups[[i for i in range(400) if i not in set(fold.tolist())]].tolist())
        )
    per_fold = torch.stack([targets[f].sum(0) for f in folds]).double()
    expected = targets.sum(0).double() / 5
    assert ((per_fold - expected).abs() <= 2).all()  # within two pairs of each label's share


def test_helpers_tell_multi_hot_from_class_indices() -> None:
    assert is_multi_hot(torch.tensor([[0, 1], [1, 1]]))
    assert not is_multi_hot(torch.tensor([[0, 2]]))  # counts, not 0/1
    assert not is_multi_hot(torch.tensor([0, 1, 2]))
    assert label_sets(torch.tensor([[0, 1, 1], [0, 0, 0]])) == [(1, 2), ()]
    assert rare_labels(torch.tensor([[1, 0], [1, 0], [1, 1]]), 3) == [1]


def test_helpers_name_what_they_were_given() -> None:
    with pytest.raises(ValueError, match=r"multi-hot \(N, K\) matrix of 0 and 1"):
        label_sets(torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="multi-hot"):
        rare_labels(torch.tensor([[0, 3]]), 2)
    with pytest.raises(ValueError, match="parts must be a positive integer, got 0"):
        rare_labels(torch.tensor([[0, 1]]), 0)
