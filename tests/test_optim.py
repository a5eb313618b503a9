"""Discriminative parameter groups."""

from __future__ import annotations

from pathlib import Path

import pytest

import tlkit
from tlkit import (
    FreezePolicy,
)

JOBS = Path(__file__).parent / "jobs"


def test_discriminative_param_groups_train_with_their_rates(tiny) -> None:
    groups = tlkit.discriminative_param_groups(tiny, 0.1, decay=0.1)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("conv1", pytest.approx(1e-5)),
        ("bn1", pytest.approx(1e-4)),
        ("layer1", pytest.approx(1e-3)),
        ("layer2", pytest.approx(1e-2)),
        ("fc", 0.1),
    ]
    FreezePolicy(up_to="bn1").apply(tiny)
    assert [g["name"] for g in tlkit.discriminative_param_groups(tiny, 0.1)] == [
        "layer1",
        "layer2",
        "fc",
    ]
    with pytest.raises(KeyError, match="layr1"):
        tlkit.discriminative_param_groups(tiny, 0.1, stages=["layr1"])
