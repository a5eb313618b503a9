from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from tlkit import heads, replace_head

# (constructor, input size): small members of each family keep the suite fast
TORCHVISION = [
    ("resnet18", 64),
    ("resnext50_32x4d", 64),
    ("efficientnet_b0", 64),
    ("mobilenet_v3_small", 64),
    ("convnext_tiny", 64),
    ("densenet121", 64),
    ("vgg11", 32),
    ("vit_b_16", 224),
    ("swin_t", 64),
    ("regnet_x_400mf", 64),
]
TIMM = [
    ("resnet10t", 64),
    ("efficientnet_lite0", 64),
    ("mobilenetv3_small_050", 64),
    ("convnext_atto", 64),
    ("vit_tiny_patch16_224", 224),
]


def _build(source: str, name: str) -> nn.Module:
    if source == "timm":
        return timm.create_model(name)
    return torchvision.models.get_model(name)


@pytest.mark.parametrize(
    ("source", "name", "size"),
    [("torchvision", n, s) for n, s in TORCHVISION] + [("timm", n, s) for n, s in TIMM],
)
def test_replace_head_on_many_architectures(source: str, name: str, size: int) -> None:
    model = _build(source, name).eval()
    seen: list[int] = []

    def builder(in_features: int) -> nn.Module:
        seen.append(in_features)
        return heads.mlp(in_features, 7, hidden=(16,))

    replace_head(model, builder)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    new_heads = [m for m in model.modules() if isinstance(m, heads.Head)]
    assert len(new_heads) == 1 and new_heads[0].in_features == seen[0]
    # replacing again swaps the tlkit head whole, not its last Linear
    replace_head(model, 3)
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 3)
    assert len([m for m in model.modules() if isinstance(m, heads.Head)]) == 1


def test_timm_get_classifier_sees_the_new_head() -> None:
    model = timm.create_model("resnet10t")
    replace_head(model, lambda n: heads.linear(n, 5))
    assert isinstance(model.get_classifier(), heads.Head)
    assert model.num_classes == 5


def test_convnext_keeps_norm_and_flatten_in_front_of_the_head() -> None:
    model = replace_head(torchvision.models.convnext_tiny(), 4)
    assert (
        isinstance(model.classifier[0], nn.Module)
        and type(model.classifier[0]).__name__ == "LayerNorm2d"
    )
    assert isinstance(model.classifier[2], heads.Head)


def test_seed_head_structure_and_output_is_log_probabilities() -> None:
    head = heads.mlp(2048, 10, hidden=(128,), dropout=0.4, log_softmax=True)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.LogSoftmax]
    assert head[0].in_features == 2048 and head[0].out_features == 128 and head[2].p == 0.4
    assert head.log_softmax
    out = head.eval()(torch.randn(4, 2048))
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))


def test_mlp_options() -> None:
    head = heads.mlp(32, 4, hidden=(16, 8), activation="gelu", batch_norm=True, dropout=0.1)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout] * 2 + [nn.Linear]
    assert head[0].bias is None  # BatchNorm follows, so the bias is redundant
    custom = heads.mlp(8, 2, hidden=(4,), activation=lambda: nn.Hardswish())
    assert isinstance(custom[1], nn.Hardswish)
    assert [type(m) for m in heads.linear(8, 2)] == [nn.Linear]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: heads.mlp(0, 10), ValueError, "in_features must be a positive integer"),
        (lambda: heads.mlp(8, 10, hidden=(0,)), ValueError, "hidden size"),
        (lambda: heads.mlp(8, 10, dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
        (lambda: heads.mlp(8, 10, activation="rellu"), KeyError, "did you mean 'relu'"),
    ],
)
def test_bad_head_arguments(call, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_no_classifier_found_is_a_type_error_naming_what_was_tried() -> None:
    with pytest.raises(TypeError, match=r"tried \.fc, \.classifier, \.heads, \.head"):
        replace_head(nn.Sequential(nn.Conv2d(3, 4, 3)), 2)
    with pytest.raises(TypeError, match="SqueezeNet"):
        replace_head(torchvision.models.squeezenet1_0(), 2)


def test_bad_head_argument_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="head must be"):
        replace_head(torchvision.models.resnet18(), "mlp")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must return an nn\.Module"):
        replace_head(torchvision.models.resnet18(), lambda n: n)  # type: ignore[arg-type, return-value]


def test_a_head_of_the_wrong_width_is_refused_naming_both_widths() -> None:
    model = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"takes 999 input features but .* receives 512"):
        replace_head(model, nn.Linear(999, 10))
    with pytest.raises(ValueError, match="takes 7 input features"):
        replace_head(model, nn.Sequential(nn.Dropout(0.1), nn.Linear(7, 10)))
    replace_head(model, nn.Sequential(nn.Dropout(0.1), nn.Linear(512, 10)))  # the right width
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_find_head_and_headless_give_the_body_features() -> None:
    model = torchvision.models.mobilenet_v3_small().eval()
    path, width = heads.find_head(model)
    with heads.headless(model) as (where, head):
        features = model(torch.zeros(2, 3, 64, 64))
    assert where == path and features.shape == (2, width)
    assert model.get_submodule(path) is head
