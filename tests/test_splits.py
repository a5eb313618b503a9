from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Subset, TensorDataset

from tlkit import part_sizes, split
from tlkit.splits import kfold


@st.composite
def fractions(draw: st.DrawFn) -> list[float]:
    k = draw(st.integers(min_value=1, max_value=5))
    weights = draw(st.lists(st.integers(min_value=1, max_value=100), min_size=k, max_size=k))
    return [w / sum(weights) for w in weights]


@st.composite
def split_case(draw: st.DrawFn) -> tuple[int, list[float], int]:
    fr = draw(fractions())
    n = draw(st.integers(min_value=len(fr), max_value=2000))
    return n, fr, draw(st.integers(min_value=0, max_value=2**32))


def _safe_split(n, fr, **kw):
    try:
        return split(n, fr, **kw)
    except ValueError as exc:  # tiny n with a tiny fraction: an empty part is refused
        assert "would be empty" in str(exc)
        return None


def test_seed_recipe_sizes_exact() -> None:
    parts = split(5000, (0.8, 0.1, 0.1), seed=42)
    assert [len(p) for p in parts] == [4000, 500, 500]


@settings(max_examples=150, deadline=None)
@given(split_case())
def test_sizes_exact_disjoint_and_complete(case: tuple[int, list[float], int]) -> None:
    n, fr, seed = case
    parts = _safe_split(n, fr, seed=seed)
    if parts is None:
        return
    sizes = [len(p) for p in parts]
    assert sum(sizes) == n
    quotas = [f * n for f in fr]
    assert all(abs(s - q) < 1 for s, q in zip(sizes, quotas, strict=True))
    flat = torch.cat(parts)
    assert sorted(flat.tolist()) == list(range(n))


@settings(max_examples=50, deadline=None)
@given(split_case())
def test_same_seed_same_split_and_global_rng_untouched(case: tuple[int, list[float], int]) -> None:
    n, fr, seed = case
    torch.manual_seed(123)
    random.seed(123)
    expected_torch, expected_py = torch.rand(1), random.random()
    torch.manual_seed(123)
    random.seed(123)
    a = _safe_split(n, fr, seed=seed)
    b = _safe_split(n, fr, seed=seed)
    assert torch.equal(torch.rand(1), expected_torch) and random.random() == expected_py
    if a is not None and b is not None:
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_different_seeds_differ() -> None:
    a = split(1000, (0.5, 0.5), seed=0)
    b = split(1000, (0.5, 0.5), seed=1)
    assert not torch.equal(a[0], b[0])


def test_split_is_identical_in_a_fresh_process() -> None:
    code = "import tlkit; print(tlkit.split(300, (0.8, 0.1, 0.1), seed=7)[1].tolist())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(split(300, (0.8, 0.1, 0.1), seed=7)[1].tolist())


@settings(max_examples=100, deadline=None)
@given(split_case(), st.integers(min_value=1, max_value=12), st.randoms(use_true_random=False))
def test_stratified_keeps_each_class_share_within_one_sample(
    case: tuple[int, list[float], int], n_classes: int, rnd: random.Random
) -> None:
    n, fr, seed = case
    labels = [rnd.randrange(n_classes) for _ in range(n)]
    parts = _safe_split(n, fr, seed=seed, stratify=labels)
    if parts is None:
        return
    assert [len(p) for p in parts] == part_sizes(n, fr)  # same sizes as unstratified
    assert sorted(torch.cat(parts).tolist()) == list(range(n))
    for cls in set(labels):
        n_cls = labels.count(cls)
        for part in parts:
            got = sum(labels[i] == cls for i in part.tolist())
            assert abs(got - n_cls * len(part) / n) <= 1 + 1e-9
    again = split(n, fr, seed=seed, stratify=torch.tensor(labels))
    assert all(torch.equal(x, y) for x, y in zip(parts, again, strict=True))


def test_dataset_gives_subsets_and_counts_are_accepted() -> None:
    data = TensorDataset(torch.arange(10))
    parts = split(data, (6, 3, 1), seed=0)
    assert all(isinstance(p, Subset) for p in parts)
    assert [len(p) for p in parts] == [6, 3, 1]
    assert sorted(int(p[i][0]) for p in parts for i in range(len(p))) == list(range(10))


def test_stratify_string_labels() -> None:
    labels = ["cat"] * 30 + ["dog"] * 70
    _, val = split(100, (0.9, 0.1), seed=3, stratify=labels)
    assert sum(labels[i] == "cat" for i in val.tolist()) == 3


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((100, (0.5, 0.4)), {}, "must sum to 1"),
        ((100, (1.2, -0.2)), {}, "must be positive"),
        ((100, (60, 30)), {}, "sum to the number of samples"),
        ((2, (0.4, 0.3, 0.3)), {}, "into 3 non-empty parts"),
        ((10, (0.5, 0.5)), {"stratify": [0] * 9}, "9 labels but there are 10 samples"),
        ((10, ()), {}, "at least one"),
        ((5, (0.98, 0.01, 0.01)), {}, "would be empty"),
    ],
)
def test_bad_input(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split(*args, seed=0, **kwargs)


def test_seed_must_be_an_int() -> None:
    with pytest.raises(TypeError, match="seed must be an int"):
        split(10, (0.5, 0.5), seed=None)  # type: ignore[arg-type]


def test_stratify_must_be_one_label_per_sample_and_parts_must_not_be_empty() -> None:
    with pytest.raises(
        ValueError, match=r"multi-hot \(N, K\) matrix of 0 and 1; got shape \(10, 2\)"
    ):
        split(10, (0.5, 0.5), seed=0, stratify=torch.full((10, 2), 3))
    with pytest.raises(TypeError, match="hashable"):
        split(4, (0.5, 0.5), seed=0, stratify=[[0], [1], [0], [1]])
    with pytest.raises(ValueError, match="part 1 would be empty"):
        split(10, (10, 0), seed=0)
    with pytest.raises(ValueError, match="part 0 would be empty"):
        part_sizes(5, (0, 5))


def test_kfold_is_disjoint_complete_stratified_and_seeded() -> None:
    labels = [0] * 23 + [1] * 11 + [2] * 6
    folds = kfold(labels, 5, seed=4)
    everything = torch.cat(folds).sort().values
    assert torch.equal(everything, torch.arange(40))  # complete and disjoint
    for c, total in ((0, 23), (1, 11), (2, 6)):
        counts = [sum(labels[i] == c for i in f.tolist()) for f in folds]
        assert max(counts) - min(counts) <= 1 and sum(counts) == total
    again = kfold(labels, 5, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(folds, again, strict=True))


def test_kfold_keeps_groups_whole_and_lowers_k_to_the_number_of_groups() -> None:
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    groups = ["a", "a", "b", "b", "c", "c", "d", "d"]
    folds = kfold(labels, 5, groups=groups)
    assert len(folds) == 4
    for fold in folds:
        assert len({groups[i] for i in fold.tolist()}) == 1
    with pytest.raises(ValueError, match="at least 2 groups, got 1"):
        kfold([0, 1], 2, groups=["x", "x"])
    with pytest.raises(ValueError, match="k must be an integer of at least 2, got 1"):
        kfold([0, 1], 1)
