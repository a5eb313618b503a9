from __future__ import annotations

import pytest
import torch

import tlkit
from tlkit.groups import near_duplicate_groups


def test_near_duplicates_are_grouped_transitively_and_distinct_images_are_not() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 64, generator=g)
    frames = base[:, None] + 0.05 * torch.randn(5, 4, 64, generator=g)  # 4 frames each
    groups = near_duplicate_groups(frames.reshape(20, 64))
    assert groups.tolist() == [i // 4 for i in range(20)]
    # a ~ b and b ~ c (cosine 0.966), a and c not (0.866): one group all the same
    angles = torch.tensor([0.0, 15.0, 30.0]).deg2rad()
    chain = torch.stack([angles.cos(), angles.sin(), torch.zeros(3)], 1)
    mirrored = torch.cat([chain, -chain]) + 7.0  # mean 7: centring brings it back to 0
    assert near_duplicate_groups(mirrored, threshold=0.95).tolist() == [0, 0, 0, 1, 1, 1]
    assert near_duplicate_groups(mirrored, threshold=0.99).tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="threshold must be in"):
        near_duplicate_groups(base, threshold=0)


def test_file_name_groups_join_sprites_by_their_first_words_and_leave_camera_names_alone() -> None:
    sprites = [f"{unit}-{pose}.png" for unit in ("orc", "elf", "imp", "ent", "gnu")
               for pose in ("attack-1", "attack-2", "defend")]  # fmt: skip
    groups = tlkit.file_name_groups(sprites, [0] * 15, folds=5)
    assert len(groups.unique()) == 5  # one group per unit: all its poses together
    assert all(len(set(groups[i : i + 3].tolist())) == 1 for i in range(0, 15, 3))
    # every name shares its first word: grouping by it would hold the whole class together
    camera = [f"IMG_{i:04d}.jpg" for i in range(10)]
    assert len(tlkit.file_name_groups(camera, [0] * 10).unique()) == 10
    # groups never join two classes, even under one name
    assert tlkit.file_name_groups(["a-1", "a-2", "a-1", "a-2"], [0, 0, 1, 1], folds=2).tolist() == [
        0,
        1,
        2,
        3,
    ]


def test_file_name_groups_go_deeper_when_the_first_word_holds_too_much_of_a_class() -> None:
    names = [
        f"human_{unit}_{i}.png"
        for unit in ("bowman", "mage", "thief", "scout", "guard")
        for i in range(4)
    ]
    groups = tlkit.file_name_groups(names, [0] * 20, folds=5)
    assert len(groups.unique()) == 5  # "human" is the whole class; "human_bowman" a unit
    with pytest.raises(ValueError, match="labels has 2 labels but there are 20"):
        tlkit.file_name_groups(names, [0, 1])
    with pytest.raises(ValueError, match="folds must be an integer"):
        tlkit.file_name_groups(names, [0] * 20, folds=1)


def test_join_groups_joins_transitively() -> None:
    assert tlkit.join_groups([0, 1, 2, 3], [0, 0, 1, 1], [5, 6, 6, 7]).tolist() == [0, 0, 0, 0]
    assert tlkit.join_groups([3, 3, 4]).tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="same length"):
        tlkit.join_groups([0, 1], [0])
