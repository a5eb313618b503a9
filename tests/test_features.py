"""Cached features: extract_features, the cached linear probe and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import tlkit
from tlkit import (
    FreezePolicy,
)

from .helpers import loader, trainer_for, uint8_loader

JOBS = Path(__file__).parent / "jobs"


def test_feature_cache_trains_only_the_head_and_matches_uncached_features(tiny) -> None:
    torch.manual_seed(0)
    FreezePolicy(train_only=["fc"]).apply(tiny)
    body_before = tiny.layer2[0].weight.detach().clone()
    trainer = trainer_for(tiny, lr=0.05)
    history = trainer.fit(
        loader(192), loader(64, seed=1, shuffle=False), epochs=10, cache_features=True
    )
    assert torch.equal(body_before, tiny.layer2[0].weight)
    assert isinstance(tiny.fc, nn.Linear)  # the head is back in place
    cached_val = history["val_accuracy"][-1]
    assert trainer.evaluate(loader(64, seed=1, shuffle=False))["accuracy"] == pytest.approx(
        cached_val
    )


def test_feature_cache_refuses_random_augmentation_unless_accepted(tiny) -> None:
    FreezePolicy(train_only=["fc"]).apply(tiny)
    with pytest.raises(ValueError, match="cache_one_view=True"):
        trainer_for(tiny).fit(loader(augment=True), epochs=1, cache_features=True)
    trainer_for(tiny).fit(loader(augment=True), epochs=1, cache_features=True, cache_one_view=True)


def test_feature_cache_refuses_a_trainable_body(tiny) -> None:
    FreezePolicy(up_to="layer1").apply(tiny)
    with pytest.raises(ValueError, match=r"only the head 'fc' trainable.*layer2"):
        trainer_for(tiny).fit(loader(), epochs=1, cache_features=True)


def test_batch_transform_counts_as_random_for_the_feature_cache(tiny) -> None:
    FreezePolicy(train_only=["fc"]).apply(tiny)
    trainer = trainer_for(tiny, batch_transform=tlkit.augment.BatchAugment(8))
    with pytest.raises(ValueError, match=r"random batch_transform.*cache_one_view=True"):
        trainer.fit(uint8_loader(32), epochs=1, cache_features=True)
    trainer.fit(uint8_loader(32), epochs=1, cache_features=True, cache_one_view=True)
    with pytest.raises(TypeError, match="batch_transform must be callable, got str"):
        trainer_for(tiny, batch_transform="flip")
