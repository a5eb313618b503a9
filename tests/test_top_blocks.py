"""The top blocks tuned on cached activations: the cut reproduces the network, training moves
only the top, and the averaged network's logits are the mean of the two networks'."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

from tlkit.model.network import StackedBackbones, build_head
from tlkit.recipes.top_blocks import _Top, averaged_network, split_network


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18"])
def test_the_cut_network_computes_what_the_whole_one_does(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=3).eval()
    split = split_network(model, blocks=2)
    assert split is not None
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(split.logits(split.prefix(x)), model(x), atol=1e-5)
    prefix = {id(p) for p in split.prefix.parameters()}
    assert prefix and not prefix & {id(p) for p in split.tail.parameters()}


def test_a_network_without_stages_is_not_cut() -> None:
    assert split_network(nn.Sequential(nn.Flatten(), nn.Linear(12, 2))) is None


@pytest.mark.parametrize("blocks", [0, -1, 1.5, True])
def test_a_bad_number_of_blocks_is_refused(blocks: object) -> None:
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    with pytest.raises(ValueError, match=f"blocks must be a positive int.*got {blocks!r}"):
        split_network(model, blocks=blocks)  # type: ignore[arg-type]


def test_training_the_top_moves_its_weights_and_keeps_batch_norm_statistics() -> None:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    split = split_network(model, blocks=1)
    assert split is not None
    top = _Top(split).train()
    norms = [m for m in top.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    prefix = [p.clone() for p in split.prefix.parameters()]
    tail = [p.clone() for p in split.tail.parameters()]
    with torch.no_grad():
        h = split.prefix(torch.randn(4, 3, 64, 64))
    optimizer = torch.optim.SGD(top.parameters(), lr=0.1)
    nn.functional.cross_entropy(top(h), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, norms, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(prefix, split.prefix.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(tail, split.tail.parameters(), strict=True))


def _pooled(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_the_averaged_network_gives_the_mean_of_both_logits() -> None:
    torch.manual_seed(0)
    probe_net = StackedBackbones([_pooled(4), _pooled(5)], [16, 12], build_head(9, 3)).eval()
    tuned = timm.create_model("resnet18", pretrained=False, num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = (probe_net(x) + tuned(x)) / 2
        both = averaged_network(SimpleNamespace(model=probe_net, size=16), tuned, 16, 3)
        assert isinstance(both, StackedBackbones) and len(both.bodies) == 3
        assert torch.allclose(both(x), expected, atol=1e-5)
