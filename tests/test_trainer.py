"""The Trainer: learning, steps, evaluation, prediction and every check before work."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tlkit
from tlkit import (
    Callback,
    EarlyStopping,
    FreezePolicy,
    GradualUnfreeze,
    HistoryLogger,
    ModelCheckpoint,
    Trainer,
    heads,
)

from .helpers import Recording, loader, trainer_for, uint8_loader
from .jobs.common import ColourDataset, small_net

JOBS = Path(__file__).parent / "jobs"


def test_reaches_high_accuracy_and_frozen_region_is_untouched(tiny) -> None:
    torch.manual_seed(0)
    FreezePolicy(up_to="layer1").apply(tiny)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    trainer = trainer_for(tiny, lr=0.05)
    history = trainer.fit(loader(192), loader(64, seed=1, shuffle=False), epochs=8)
    assert trainer.evaluate(loader(64, seed=1, shuffle=False))["accuracy"] > 0.95
    after = tiny.state_dict()
    for name in (
        "conv1.weight",
        "bn1.weight",
        "bn1.running_mean",
        "bn1.running_var",
        "layer1.0.weight",
        "layer1.1.running_mean",
    ):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["layer2.0.weight"], after["layer2.0.weight"])
    assert not torch.equal(before["layer2.1.running_mean"], after["layer2.1.running_mean"])
    assert len(history) == 8 and history["val_accuracy"][-1] > 0.95
    record = history.records[-1]
    assert {
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
        "images_per_sec",
    } <= set(record)


def test_default_optimizer_holds_only_trainable_parameters(tiny) -> None:
    FreezePolicy(train_only=["fc"]).apply(tiny)
    trainer = Trainer(tiny, device="cpu", verbose=False)
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert held == {id(tiny.fc.weight), id(tiny.fc.bias)}


def test_log_softmax_head_gets_nll_loss_and_predict_gives_probabilities() -> None:
    torch.manual_seed(0)
    model = small_net()
    model[-1] = heads.mlp(8, 3, hidden=(8,), log_softmax=True)
    trainer = trainer_for(model)
    assert isinstance(trainer.loss, nn.NLLLoss)
    trainer.fit(loader(), epochs=2)
    probs = trainer.predict(loader(shuffle=False))
    assert probs.shape == (96, 3)
    torch.testing.assert_close(probs.sum(1), torch.ones(96))
    x = torch.stack([ColourDataset(96)[i][0] for i in range(4)])
    torch.testing.assert_close(trainer.predict(x), model.eval()(x).exp())


def test_evaluate_reports_top5_per_class_and_confusion() -> None:
    torch.manual_seed(0)
    x = torch.randn(60, 4)
    y = torch.arange(60) % 6
    model = nn.Linear(4, 6)
    result = trainer_for(model).evaluate(DataLoader(TensorDataset(x, y), batch_size=16))
    cm = result["confusion_matrix"]
    assert cm.shape == (6, 6) and int(cm.sum()) == 60 and cm.sum(1).tolist() == [10] * 6
    assert result["accuracy"] == pytest.approx(float(cm.diag().sum()) / 60)
    assert result["per_class_accuracy"] == pytest.approx((cm.diag() / 10).tolist())
    pred5 = model(x).topk(5, 1).indices
    assert result["top5_accuracy"] == pytest.approx(
        float((pred5 == y[:, None]).any(1).float().mean())
    )


def test_grad_accumulation_matches_a_larger_batch() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    data = TensorDataset(x, y)
    base = nn.Linear(5, 3)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    Trainer(a, optimizer=torch.optim.SGD(a.parameters(), lr=0.5), device="cpu", verbose=False).fit(
        DataLoader(data, batch_size=32), epochs=2
    )
    Trainer(
        b,
        optimizer=torch.optim.SGD(b.parameters(), lr=0.5),
        device="cpu",
        verbose=False,
        grad_accum_steps=2,
    ).fit(DataLoader(data, batch_size=16), epochs=2)
    torch.testing.assert_close(a.weight, b.weight)


def test_clip_grad_norm_bounds_the_update() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    start = model.weight.detach().clone()
    data = DataLoader(
        TensorDataset(torch.randn(8, 5) * 100, torch.zeros(8, dtype=torch.long)), batch_size=8
    )
    Trainer(
        model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        clip_grad_norm=0.01,
        device="cpu",
        verbose=False,
    ).fit(data, epochs=1)
    assert (model.weight - start).norm() <= 0.01 + 1e-6


def test_bf16_autocast_on_cpu_runs() -> None:
    torch.manual_seed(0)
    model = small_net()
    trainer = trainer_for(model, precision="bf16")
    history = trainer.fit(loader(), epochs=1)
    assert trainer.precision == "bf16" and history["train_loss"][0] == history["train_loss"][0]


def test_batch_transform_augments_training_batches_only_and_the_model_learns(tiny) -> None:
    torch.manual_seed(0)
    transform = Recording(tlkit.augment.BatchAugment(8, scale=(0.5, 1.0)))
    trainer = trainer_for(tiny, lr=0.05, batch_transform=transform)
    train, val = uint8_loader(192), uint8_loader(64, seed=1, shuffle=False)
    trainer.fit(train, val, epochs=8)
    modes = [training for training, _ in transform.calls]
    assert modes == ([True] * len(train) + [False] * len(val)) * 8
    assert {dtype for _, dtype in transform.calls} == {torch.uint8}
    transform.calls.clear()
    assert trainer.evaluate(val)["accuracy"] > 0.95
    probs = trainer.predict(next(iter(val))[0])
    assert probs.shape == (16, 3) and transform.calls == [(False, torch.uint8)] * (len(val) + 1)


def test_batch_transform_runs_repeat_exactly_from_the_seed(tiny) -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        model = copy.deepcopy(tiny)
        torch.manual_seed(seed)
        transform = tlkit.augment.BatchAugment(8, scale=(0.3, 1.0))
        trainer_for(model, batch_transform=transform).fit(uint8_loader(64), epochs=2)
        return model.state_dict()

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["conv1.weight"], other["conv1.weight"])


def test_empty_loader() -> None:
    empty = DataLoader(
        TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=4
    )
    with pytest.raises(ValueError, match="train_loader is empty"):
        trainer_for(small_net()).fit(empty, epochs=1)
    with pytest.raises(ValueError, match="loader is empty"):
        trainer_for(small_net()).evaluate(empty)


def test_labels_out_of_range_for_the_head() -> None:
    data = DataLoader(TensorDataset(torch.rand(8, 3, 8, 8), torch.full((8,), 5)), batch_size=4)
    with pytest.raises(ValueError, match=r"label 5 is out of range for a head with 3 outputs"):
        trainer_for(small_net()).fit(data, epochs=1)


def test_nll_loss_on_logits_is_an_error_and_ce_on_log_softmax_warns() -> None:
    with pytest.raises(ValueError, match="NLLLoss needs log-probabilities"):
        trainer_for(small_net(), loss=nn.NLLLoss()).fit(loader(), epochs=1)
    model = small_net()
    model.append(nn.LogSoftmax(dim=1))
    with pytest.warns(UserWarning, match="pass loss=nn.NLLLoss"):
        trainer_for(model, loss=nn.CrossEntropyLoss())


def test_bad_trainer_arguments() -> None:
    with pytest.raises(ValueError, match="precision must be"):
        Trainer(small_net(), precision="fp8", device="cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grad_accum_steps"):
        Trainer(small_net(), grad_accum_steps=0, device="cpu")
    with pytest.raises(ValueError, match="no trainable parameters"):
        model = small_net()
        model.requires_grad_(False)
        Trainer(model, device="cpu")
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        trainer_for(small_net()).fit(loader(), epochs=0)
    with pytest.raises(KeyError, match="monitored metric 'val_loss'"):
        trainer_for(small_net(), callbacks=[EarlyStopping("val_loss")]).fit(loader(), epochs=1)
    with pytest.raises(ValueError, match="every_n_steps must be a positive integer, got 0"):
        ModelCheckpoint(every_n_steps=0)


# ---------------------------------------------------------------------------- hostile inputs
class CountBatches(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_batch_end(self, trainer, *, batch, optimizer_stepped, **kwargs):
        self.batches += 1


def tensor_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 16) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def test_negative_or_zero_clip_norm_is_refused_at_construction() -> None:
    for bad in (-1.0, 0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="clip_grad_norm must be a positive finite number"):
            Trainer(small_net(), device="cpu", clip_grad_norm=bad)  # type: ignore[arg-type]


def test_an_optimizer_over_frozen_parameters_only_is_refused_before_any_batch() -> None:
    model = small_net()
    optimizer = torch.optim.SGD(model[0].parameters(), lr=0.1)
    model[0].requires_grad_(False)
    counter = CountBatches()
    trainer = Trainer(model, optimizer=optimizer, device="cpu", verbose=False, callbacks=[counter])
    with pytest.raises(ValueError, match="none requires grad"):
        trainer.fit(loader(), epochs=2)
    assert counter.batches == 0
    other = torch.optim.SGD(small_net().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="none of the model's parameters"):
        Trainer(small_net(), optimizer=other, device="cpu", verbose=False).fit(loader(), epochs=1)


def test_a_dataset_is_wrapped_in_a_loader_and_other_things_are_refused() -> None:
    torch.manual_seed(0)
    trainer = trainer_for(small_net())
    history = trainer.fit(ColourDataset(64), ColourDataset(32, seed=1), epochs=2, batch_size=16)
    assert len(history) == 2 and history["val_accuracy"][-1] is not None
    assert trainer.batches_per_epoch == 4  # 64 images in batches of 16
    with pytest.raises(ValueError, match="batch_size applies to a Dataset"):
        trainer.fit(loader(), epochs=1, batch_size=8)
    for bad in (None, torch.zeros(4, 3), "data", 3):
        with pytest.raises(TypeError, match="train_loader must be a DataLoader"):
            trainer.fit(bad, epochs=1)  # type: ignore[arg-type]


def test_pil_images_from_a_dataset_get_a_clear_error_naming_the_fix() -> None:
    from PIL import Image

    class Pictures(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, index: int):
            return Image.new("RGB", (8, 8)), 0

    with pytest.raises(TypeError, match="PIL images: give it a transform"):
        trainer_for(small_net()).fit(DataLoader(Pictures(), batch_size=4), epochs=1)


@pytest.mark.parametrize(
    "convert",
    [
        lambda y: y.int(),
        lambda y: y.float(),
        lambda y: y[:, None],
        lambda y: torch.nn.functional.one_hot(y, 3).float(),
        lambda y: torch.nn.functional.one_hot(y, 3),
        lambda y: y.to(torch.uint8),
    ],
    ids=["int32", "float", "column", "one-hot-float", "one-hot-int", "uint8"],
)
def test_labels_users_obviously_mean_train_exactly_like_int64(convert) -> None:
    data = ColourDataset(64)
    x, y = data.images, data.labels

    def run(labels: torch.Tensor) -> list[float]:
        torch.manual_seed(0)
        trainer = trainer_for(small_net())
        history = trainer.fit(tensor_loader(x, labels), tensor_loader(x, labels), epochs=2)
        return history["train_loss"] + history["val_accuracy"]

    assert run(convert(y)) == run(y)


def test_labels_that_are_not_class_indices_are_named_in_the_error() -> None:
    x = torch.rand(8, 3, 8, 8)
    cases = {
        "whole class indices": torch.tensor([0.5, 1, 2, 0, 1, 2, 0, 1]),
        "class scores or probabilities": torch.full((8, 3), 1 / 3),
        "shape \\(batch,\\)": torch.zeros(8, 2, 2, dtype=torch.long),
        "out of range": torch.full((8,), -1),
    }
    for message, labels in cases.items():
        counter = CountBatches()
        with pytest.raises(ValueError, match=message):
            trainer_for(small_net(), callbacks=[counter]).fit(tensor_loader(x, labels), epochs=1)
        assert counter.batches == 0


def test_a_model_returning_a_tuple_or_a_per_sample_loss_is_a_clear_error() -> None:
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_net()

        def forward(self, x):
            out = self.net(x)
            return out, out

    with pytest.raises(TypeError, match="returned a tuple of 2"):
        trainer_for(Pair()).fit(loader(), epochs=1)
    with pytest.raises(ValueError, match="reduction='none'"):
        trainer_for(small_net(), loss=nn.CrossEntropyLoss(reduction="none"))
    with pytest.raises(ValueError, match="must be a scalar"):
        trainer_for(small_net(), loss=lambda out, y: out.sum(1)).fit(loader(), epochs=1)


def test_bad_constructor_and_prediction_arguments() -> None:
    with pytest.raises(TypeError, match=r"model must be an nn\.Module, got NoneType"):
        Trainer(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callbacks must be"):
        Trainer(small_net(), device="cpu", callbacks=[object()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        Trainer(small_net(), device="cpu", optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device must be"):
        Trainer(small_net(), device="gpu")
    trainer = trainer_for(small_net())
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        trainer.predict(torch.rand(4, 3, 8, 8), batch_size=0)
    with pytest.raises(ValueError, match="data is empty"):
        trainer.predict(torch.rand(0, 3, 8, 8))


def test_errors_that_used_to_come_after_an_epoch_now_come_first(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        (ModelCheckpoint(blocker / "ckpt", monitor=None), NotADirectoryError, "is a file"),
        (ModelCheckpoint(tmp_path, monitor="val_loss"), KeyError, "needs a val_loader"),
        (EarlyStopping("val_accuracy"), KeyError, "val_accuracy"),
        (GradualUnfreeze({1: "nope"}), KeyError, "nope"),
        (HistoryLogger(blocker / "h.csv"), NotADirectoryError, "is a file"),
    ]
    for callback, error, message in cases:
        counter = CountBatches()
        with pytest.raises(error, match=message):
            trainer_for(small_net(), callbacks=[callback, counter]).fit(loader(), epochs=2)
        assert counter.batches == 0, callback


def test_flip_tta_averages_the_two_views_in_evaluate_and_predict() -> None:
    torch.manual_seed(0)
    model = small_net().eval()
    trainer = trainer_for(model)
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(trainer.predict(x, tta=True), expected)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    data = DataLoader(TensorDataset(x, y), batch_size=3)
    metrics = trainer.evaluate(data, tta=True)
    nll = torch.nn.functional.nll_loss(expected.log(), y)
    assert metrics["loss"] == pytest.approx(float(nll), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(float((expected.argmax(1) == y).float().mean()))
    assert not trainer.tta  # only for that call


def test_a_trainer_is_freed_when_its_last_reference_goes() -> None:
    # no reference cycle: under DDP a trainer kept alive until interpreter shutdown takes its
    # process group's threads with it, and gloo aborts the process there
    import gc
    import weakref

    gc.disable()
    try:
        trainer = Trainer(torch.nn.Linear(2, 2), device="cpu", verbose=False)
        trainer.fit([(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))], epochs=1)
        alive = weakref.ref(trainer)
        del trainer
        assert alive() is None
    finally:
        gc.enable()
