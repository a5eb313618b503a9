from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn

from tlkit import FreezePolicy, FreezeReport, unfreeze


def _train_step(model: nn.Module, lr: float = 0.1) -> None:
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    x = torch.randn(4, 3, 8, 8)
    loss = model(x).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return torchvision.models.resnet50()


def test_first_n_matches_the_seed_loop_on_resnet50(resnet50: nn.Module) -> None:
    seed_model = copy.deepcopy(resnet50)
    for i, param in enumerate(seed_model.parameters()):  # the blog post's loop
        if i <= 60:
            param.requires_grad = False
    expected = {n for n, p in seed_model.named_parameters() if not p.requires_grad}

    model = copy.deepcopy(resnet50)
    report = FreezePolicy(first_n=61, bn="train").apply(model)
    assert set(report.frozen) == expected
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == expected
    assert len(report.frozen) == 61
    assert report.frozen[-1] == "layer2.2.conv3.weight"
    assert "layer2.2.bn3.weight" in report.trainable
    assert report.bn_eval == ()


def test_first_n_default_bn_eval_holds_only_fully_frozen_bn(resnet50: nn.Module) -> None:
    model = copy.deepcopy(resnet50)
    report = FreezePolicy(first_n=61).apply(model)
    assert "layer2.2.bn2" in report.bn_eval and "layer2.2.bn3" not in report.bn_eval
    model.train()
    assert not model.layer2[2].bn2.training and model.layer2[2].bn3.training
    assert not model.bn1.training and model.layer3[0].bn1.training


def test_frozen_tensors_bit_identical_and_trainable_ones_move(tiny: nn.Module) -> None:
    report = FreezePolicy(up_to="layer1").apply(tiny)
    before = _snapshot(tiny)
    _train_step(tiny)
    after = tiny.state_dict()
    for name in report.frozen:
        assert torch.equal(before[name], after[name]), name
    for name in report.trainable:
        assert not torch.equal(before[name], after[name]), name


def test_bn_eval_keeps_running_stats_after_train_mode_forward(tiny: nn.Module) -> None:
    FreezePolicy(up_to="layer1").apply(tiny)
    before = _snapshot(tiny)
    tiny.train()
    tiny(torch.randn(8, 3, 8, 8) * 3 + 1)
    after = tiny.state_dict()
    for key in (
        "bn1.running_mean",
        "bn1.running_var",
        "layer1.1.running_mean",
        "layer1.1.num_batches_tracked",
    ):
        assert torch.equal(before[key], after[key]), key
    # the trainable stage's BatchNorm still learns its statistics
    assert not torch.equal(before["layer2.1.running_mean"], after["layer2.1.running_mean"])


def test_bn_train_lets_frozen_bn_statistics_move(tiny: nn.Module) -> None:
    FreezePolicy(up_to="layer1", bn="train").apply(tiny)
    before = _snapshot(tiny)
    tiny.train()
    tiny(torch.randn(8, 3, 8, 8) * 3 + 1)
    assert not torch.equal(before["bn1.running_mean"], tiny.bn1.running_mean)


def test_bn_hold_survives_deepcopy_pickle_and_eval_train_cycles(tiny: nn.Module) -> None:
    FreezePolicy(up_to="layer1").apply(tiny)
    for clone in (copy.deepcopy(tiny), pickle.loads(pickle.dumps(tiny))):
        clone.eval()
        clone.train()
        assert not clone.bn1.training and clone.layer2[1].training
        assert clone.bn1.train() is clone.bn1


def test_reapplying_a_policy_replaces_the_previous_state(tiny: nn.Module) -> None:
    FreezePolicy(up_to="layer2").apply(tiny)
    report = FreezePolicy(names=["conv1"], bn="train").apply(tiny)
    assert report.frozen == ("conv1.weight",)
    tiny.train()
    assert all(m.training for m in tiny.modules())


def test_names_accepts_modules_parameters_and_globs(tiny: nn.Module) -> None:
    report = FreezePolicy(names=["conv1", "bn1.weight", "layer1.*"]).apply(tiny)
    assert report.frozen == (
        "conv1.weight",
        "bn1.weight",
        "layer1.0.weight",
        "layer1.1.weight",
        "layer1.1.bias",
    )
    # bn1 is only partly frozen, so it is not held in eval
    assert report.bn_eval == ("layer1.1",)


def test_train_only_is_the_inverse(tiny: nn.Module) -> None:
    report = FreezePolicy(train_only=["fc"]).apply(tiny)
    assert report.trainable == ("fc.weight", "fc.bias")
    assert set(report.bn_eval) == {"bn1", "layer1.1", "layer2.1"}


def test_indices_ranges_and_negative_indices(tiny: nn.Module) -> None:
    names = [n for n, _ in tiny.named_parameters()]
    assert FreezePolicy(indices=range(1, 3)).select(tiny) == names[1:3]
    assert FreezePolicy(indices=[-1, -2]).select(tiny) == names[-2:]


def test_predicate(tiny: nn.Module) -> None:
    report = FreezePolicy(predicate=lambda name, p: p.ndim == 4).apply(tiny)
    assert report.frozen == ("conv1.weight", "layer1.0.weight", "layer2.0.weight")


def test_up_to_includes_root_parameters_registered_before() -> None:
    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(4))
            self.stem = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

    assert FreezePolicy(up_to="stem").select(WithToken()) == ["token", "stem.weight", "stem.bias"]


def test_report_table_and_counts(resnet50: nn.Module) -> None:
    model = copy.deepcopy(resnet50)
    report = FreezePolicy(first_n=61).apply(model)
    assert report.frozen_numel == sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert report.trainable_numel == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (
        "layer2.2.conv3" in report.fully_frozen_modules
        and "layer2.2" in report.partly_frozen_modules
    )
    assert "layer1.0" not in report.fully_frozen_modules  # only the outermost fully frozen modules
    text = str(report)
    assert "frozen 61 of 161 tensors" in text
    assert "layer2.2.bn3" in text and "partly frozen" in text
    assert FreezeReport.from_model(model) == report


def test_unfreeze_all_and_by_name(tiny: nn.Module) -> None:
    FreezePolicy(up_to="layer2").apply(tiny)
    report = unfreeze(tiny, ["layer2"])
    assert "layer2.0.weight" in report.trainable and "conv1.weight" in report.frozen
    assert "layer2.1" not in report.bn_eval and "bn1" in report.bn_eval
    tiny.train()
    assert tiny.layer2[1].training and not tiny.bn1.training
    report = unfreeze(tiny)
    assert report.frozen == () and report.bn_eval == ()
    tiny.train()
    assert tiny.bn1.training


def test_unknown_layer_name_is_a_key_error_with_close_names(tiny: nn.Module) -> None:
    with pytest.raises(KeyError, match=r"unknown layer 'layr2'; did you mean 'layer2'"):
        FreezePolicy(up_to="layr2").apply(tiny)
    with pytest.raises(KeyError, match="layer1"):
        FreezePolicy(names=["layer1.5"]).apply(tiny)


def test_index_beyond_parameter_count_states_the_count(tiny: nn.Module) -> None:
    count = len(list(tiny.parameters()))
    with pytest.raises(ValueError, match=f"has {count} parameter tensors"):
        FreezePolicy(first_n=count + 1).apply(tiny)
    with pytest.raises(ValueError, match=f"has {count} parameter tensors"):
        FreezePolicy(indices=[count]).apply(tiny)


def test_selector_matching_nothing_is_a_value_error(tiny: nn.Module) -> None:
    with pytest.raises(ValueError, match="matches no parameter"):
        FreezePolicy(names=["decoder.*"]).apply(tiny)
    with pytest.raises(ValueError, match="selects no parameter"):
        FreezePolicy(predicate=lambda n, p: False).apply(tiny)
    with pytest.raises(ValueError, match="no parameters"):
        FreezePolicy(names=["pool"]).apply(tiny)


def test_a_failed_apply_changes_nothing(tiny: nn.Module) -> None:
    with pytest.raises(KeyError):
        FreezePolicy(names=["conv1", "nope"]).apply(tiny)
    assert all(p.requires_grad for p in tiny.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one selector"),
        ({"first_n": 3, "up_to": "layer1"}, "got first_n, up_to"),
        ({"first_n": 0}, "positive integer"),
        ({"first_n": 2, "bn": "frozen"}, "bn must be 'eval' or 'train'"),
        ({"names": []}, "non-empty"),
        ({"up_to": ""}, "layer name"),
    ],
)
def test_bad_policies_are_rejected_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FreezePolicy(**kwargs)


def test_policy_is_frozen_and_names_may_be_a_single_string() -> None:
    policy = FreezePolicy(names="fc")
    assert policy.names == ("fc",)
    with pytest.raises(AttributeError):
        policy.bn = "train"  # type: ignore[misc]


def test_up_to_a_parameter_name_freezes_up_to_and_including_it() -> None:
    model = torchvision.models.resnet18()
    names = [n for n, _ in model.named_parameters()]
    FreezePolicy(up_to="layer1.0.conv1.weight").apply(model)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == names[: names.index("layer1.0.conv1.weight") + 1]
    FreezePolicy(up_to="fc.weight").apply(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.bias"]
