"""The top blocks tuned on cached activations: the cut reproduces the network, training moves
only the top, and the averaged network's logits are the mean of the two networks'."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from torch import nn

import tlkit
from tlkit.model.network import StackedBackbones, build_head
from tlkit.recipes import executor, planner, probing, top_blocks
from tlkit.recipes.settings import AUTO
from tlkit.recipes.top_blocks import _Top, averaged_network, split_network


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "resnet18", "torchvision resnet18"])
def test_the_cut_network_computes_what_the_whole_one_does(name: str) -> None:
    torch.manual_seed(0)
    if name.startswith("torchvision"):
        model = torchvision.models.resnet18(num_classes=3).eval()
    else:
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


@pytest.mark.parametrize("verdict", ["as judged", "kept"])
def test_auto_tunes_the_top_blocks_where_fine_tuning_everything_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verdict: str
) -> None:
    g = np.random.default_rng(0)
    root = tmp_path / "data"
    for c, colour in enumerate(((200, 60, 60), (60, 60, 200), (60, 180, 60))):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(12):  # noisy tints: no two images alike, the classes plain to see
            pixels = np.clip(g.normal(colour, 60, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    # fine-tuning everything never fits: the plan tunes the top blocks instead
    slow = replace(AUTO, min_finetune_epochs=10**6)
    monkeypatch.setattr(executor, "plan", functools.partial(planner.plan, settings=slow))
    if verdict == "kept":  # the keep rule prefers the averaged network, whatever it scored
        monkeypatch.setattr(top_blocks, "clearly_better", lambda *a, **k: (True, 0.1, 0.01))
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, budget="10m",
                            image_size=32, verbose=False)  # fmt: skip
    recipe = result.recipe
    assert recipe.seconds["top blocks"] > 0 and "fine-tuning" not in recipe.seconds
    (added,) = [g for g in recipe.gains if g["choice"] == "top blocks"]
    assert added["judged_on"] == "held-out fold" and added["images"] < 36
    assert added["kept"] is (recipe.kept == "probe+top blocks")
    (verdict,) = [r for r in recipe.reasons if r.startswith("top 2 stages of resnet18")]
    assert f"{100 * added['gain']:+.1f} ± {100 * added['standard_error']:.1f}" in recipe.describe()
    assert verdict.split(": kept the ")[1].startswith(
        "probe and" if added["kept"] else "probe alone"
    )
    if verdict == "kept":  # one network of the probe's body and the tuned one, saved whole
        assert recipe.kept == "probe+top blocks" and result.backbones == ["resnet18"] * 2
        assert [r["stage"] for r in result.history.records][-1] == "top blocks"
        files = sorted(root.rglob("*.png"))[::7]
        loaded = tlkit.load_model(result.save(tmp_path / "model.pt"))
        torch.testing.assert_close(loaded.predict(files), result.predict(files))


def test_the_tuning_head_has_not_seen_the_images_the_tuned_network_is_judged_on() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (60,), generator=g)  # labels no feature predicts: only memorised
    noise = torch.randn(60, 200, generator=g)
    views = torch.stack([noise, noise])
    candidate = probing.Candidate("a", nn.Identity(), 8, (0.0,) * 3, (1.0,) * 3, features=views)
    choice = probing.choose_probe([candidate], y, 2, seed=0, log=lambda m: None)
    net = nn.Identity()
    stage = probing.ProbeStage(
        choice, net, 8, torch.zeros(60, 2), net, "a", {"a": 8}, {}, {"a": []}, start=(views, y)
    )
    held = torch.arange(45, 60)

    def accuracy_on_held(head: nn.Linear) -> float:
        return float((head(noise[held]).argmax(1) == y[held]).float().mean())

    assert accuracy_on_held(stage.tuning_head()) == 1.0  # fitted on every image: memorised
    assert accuracy_on_held(stage.tuning_head(torch.arange(45))) < 0.8  # never saw them
