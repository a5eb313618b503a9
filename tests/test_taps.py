"""tlkit.LayerTaps: pooled intermediate layers beside the final features, and the probe's
choice of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

import tlkit
from tlkit.model.network import final_linear
from tlkit.recipes import probing
from tlkit.taps import LayerTaps, default_layers, pool

from .test_recipes import colours


def resnet() -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    return net.eval()


def test_the_output_is_each_layer_pooled_then_the_final_features() -> None:
    net = resnet()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stem = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        second = net.layer2(net.layer1(stem))
        third = net.layer3(second)
        expected = torch.cat([third.mean((2, 3)), second.mean((2, 3)), net(x)], 1)
        got = LayerTaps(net, ["layer3", "layer2"])(x)  # in the order given
    torch.testing.assert_close(got, expected)
    # the hooks live only during the forward pass: the network is left as it was
    assert not net.layer2._forward_hooks and not net.layer3._forward_hooks
    assert LayerTaps(net, ["layer3"]).out_features(64) == 256 + 512


def test_the_wrapper_saves_traces_and_exports_as_a_plain_module() -> None:
    tapped = LayerTaps(resnet(), ["layer2", "layer3"]).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = tapped(x)
        traced = torch.jit.trace(tapped, x, check_trace=False)
        torch.testing.assert_close(traced(x), expected)
        program = torch.export.export(tapped, (x,))
        torch.testing.assert_close(program.module()(x), expected)
    assert all(k.startswith("body.") for k in tapped.state_dict())


def test_bad_layers_are_named_before_any_forward_pass() -> None:
    with pytest.raises(ValueError, match="'layer9' is not a layer of ResNet; close names"):
        LayerTaps(resnet(), ["layer9"])
    with pytest.raises(TypeError, match="list of names, got the string 'layer2'"):
        LayerTaps(resnet(), "layer2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shape \(1, 2, 3, 4, 5\)"):
        pool(torch.zeros(1, 2, 3, 4, 5))
    skipped = nn.Sequential(nn.Identity(), nn.Identity())
    skipped.forward = lambda x: x  # type: ignore[method-assign]  # runs none of its layers
    with pytest.raises(RuntimeError, match=r"\['0'\] did not run"):
        LayerTaps(skipped, ["0"])(torch.zeros(1, 3))


def test_default_layers_follow_the_networks_stages() -> None:
    assert default_layers(torchvision.models.resnet18()) == ["layer2", "layer3"]
    assert default_layers(torchvision.models.vgg11()) == []
    lite = timm.create_model("tf_efficientnet_lite0")
    # every block from stride 8; the last block's 320 channels are not yet the final 1280
    assert default_layers(lite) == [f"blocks.{i}" for i in range(2, 7)]
    # the last stage of a ResNet pooled is its final features: left out
    assert default_layers(timm.create_model("resnet18")) == ["layer2", "layer3"]


def choose(taps: torch.Tensor, final: torch.Tensor, y: torch.Tensor) -> probing.ProbeChoice:
    features = torch.stack([torch.cat([taps, final], 1)] * 2)
    candidate = probing.Candidate("a", nn.Identity(), 8, (0.0,) * 3, (1.0,) * 3, taps=["t"],
                                  tap_dim=taps.shape[1], features=features)  # fmt: skip
    return probing.choose_probe([candidate], y, 2, seed=0, log=lambda message: None)


def test_the_probe_reads_intermediate_layers_unless_the_final_features_are_clearly_better() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat(30)

    def signal(d: int, strength: float) -> torch.Tensor:
        return torch.randn(60, d, generator=g) + torch.nn.functional.one_hot(y, d) * strength

    inside = choose(signal(8, 1.5), torch.randn(60, 8, generator=g), y)  # told apart inside only
    assert inside.taps and inside.reasons[1].startswith("with intermediate layers (a: t)")
    assert inside.probe.weight_.shape[1] == 16
    # 200 dimensions of noise inside: the final features alone are clearly better
    final = choose(torch.randn(60, 200, generator=g), signal(8, 1.0), y)
    assert not final.taps and final.reasons[1].startswith("final features only")
    assert final.probe.weight_.shape[1] == 8


def test_a_tapped_probe_saves_loads_and_predicts_the_same(tmp_path: Path) -> None:
    root = colours(tmp_path / "data")
    result = tlkit.finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
                            image_size=32, verbose=False)  # fmt: skip
    assert result.taps == [["layer2", "layer3"]]
    assert any(r.startswith("with intermediate layers (resnet18: layer2, layer3)")
               for r in result.recipe.reasons)  # fmt: skip
    head = final_linear(result.model)
    assert head.in_features == 128 + 256 + 512
    loaded = tlkit.load_model(result.save(tmp_path / "model.pt"))
    assert loaded.taps == result.taps
    files = [root / "red" / "0.png", root / "blue" / "1.png"]
    torch.testing.assert_close(loaded.predict(files), result.predict(files))
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    state["taps"] = [["layer2"], ["layer3"]]  # two lists for one backbone
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="taps must be one list of layer names per backbone"):
        tlkit.load_model(tmp_path / "edited.pt")


def test_zoomed_views_train_the_probe_unless_it_is_clearly_worse_for_them() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat(30)
    signal = torch.randn(60, 8, generator=g) + torch.nn.functional.one_hot(y, 8) * 1.5

    def candidate(zoomed: torch.Tensor) -> probing.Candidate:  # image, mirror, two zooms
        views = torch.stack([signal, signal, zoomed, zoomed])
        return probing.Candidate("a", nn.Identity(), 8, (0.0,) * 3, (1.0,) * 3, features=views)

    alike = probing.choose_probe([candidate(signal + 0.1)], y, 2, seed=0, log=lambda m: None)
    assert alike.zoom and any(r.startswith("with zoomed copies") for r in alike.reasons)
    (added,) = [g for g in alike.gains if g["choice"] == "zoomed views"]
    assert added["kept"] and added["judged_on"] == "out of fold" and added["images"] == 60
    # zoomed copies whose features carry the other class's signal: clearly worse, left out
    swapped = torch.randn(60, 8, generator=g) + torch.nn.functional.one_hot(1 - y, 8) * 3
    worse = probing.choose_probe([candidate(swapped)], y, 2, seed=0, log=lambda m: None)
    assert not worse.zoom and any(r.startswith("without zoomed copies") for r in worse.reasons)
    (lost,) = [g for g in worse.gains if g["choice"] == "zoomed views"]
    assert not lost["kept"] and lost["gain"] < -lost["standard_error"] < 0
    # two views only (no time for the zooms): nothing said, nothing zoomed
    plain = probing.Candidate("a", nn.Identity(), 8, (0.0,) * 3, (1.0,) * 3,
                              features=torch.stack([signal, signal]))  # fmt: skip
    unzoomed = probing.choose_probe([plain], y, 2, seed=0, log=lambda m: None)
    assert not unzoomed.zoom and not any("zoomed" in r for r in unzoomed.reasons)
    assert "zoomed views" not in [g["choice"] for g in unzoomed.gains]  # not judged: not said


def test_the_zoomed_views_enlarge_the_centre_and_shrink_the_image_with_its_edges() -> None:
    from tlkit.recipes.views import VIEWS

    x = torch.zeros(1, 3, 40, 40)
    x[..., 10:30, 10:30] = 1.0  # a bright square in the middle, half the side
    zoomed_in, zoomed_out = VIEWS["zoom in"](x), VIEWS["zoom out"](x)
    assert zoomed_in.shape == zoomed_out.shape == x.shape
    side = lambda img: int((img[0, 0, 20] > 0.5).sum())  # noqa: E731  the square's width
    assert side(zoomed_in) > side(x) > side(zoomed_out)
    assert float(zoomed_out[..., 0, :].abs().max()) == 0.0  # the edges extended: still dark
    torch.testing.assert_close(VIEWS["mirror"](x), x.flip(-1))
    with pytest.raises(ValueError, match="unknown view 'crop': the views are image, mirror"):
        probing.features(probing.Candidate("a", nn.Identity(), 8, (0.0,) * 3, (1.0,) * 3),
                         None, views=("image", "crop"))  # type: ignore[arg-type]  # fmt: skip
