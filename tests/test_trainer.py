from __future__ import annotations

import copy
import inspect
import json
import os
import signal
import subprocess
import sys
import time
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
    LRScheduler,
    ModelCheckpoint,
    NonFiniteLossError,
    Trainer,
    callbacks,
    heads,
)

from .jobs.common import ColourDataset, small_net

JOBS = Path(__file__).parent / "jobs"


def loader(
    n: int = 96, *, seed: int = 0, batch_size: int = 16, shuffle: bool = True, **kw
) -> DataLoader:
    return DataLoader(ColourDataset(n, seed=seed, **kw), batch_size=batch_size, shuffle=shuffle)


def trainer_for(model: nn.Module, lr: float = 0.05, **kwargs) -> Trainer:
    params = [p for p in model.parameters() if p.requires_grad]
    return Trainer(
        model, optimizer=torch.optim.Adam(params, lr=lr), device="cpu", verbose=False, **kwargs
    )


# ---------------------------------------------------------------------------- learning
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


# ---------------------------------------------------------------------------- callbacks
def test_checkpoints_are_written_atomically_and_load_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = small_net()
    cb = ModelCheckpoint(tmp_path, monitor="val_accuracy", restore_best=True)
    trainer = trainer_for(model, callbacks=[cb])
    history = trainer.fit(loader(), loader(32, seed=1, shuffle=False), epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pt",
        "last.pt",
    ]  # no temp files left
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epochs_done"] == 3 and best["epochs_done"] == history.best("val_accuracy")["epoch"]
    for key, value in best["model"].items():  # restore_best put the best weights back
        assert torch.equal(model.state_dict()[key], value)


def test_early_stopping_stops(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = small_net(bn=False)  # lr 0 and no BatchNorm: the validation loss never improves
    trainer = trainer_for(model, lr=0.0, callbacks=[EarlyStopping("val_loss", patience=2)])
    history = trainer.fit(loader(), loader(32, seed=1), epochs=20)
    assert len(history) == 3  # best at epoch 1, two epochs without improvement


def test_history_logger_csv_and_json(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = small_net()
    trainer = trainer_for(
        model, callbacks=[HistoryLogger(tmp_path / "h.csv"), HistoryLogger(tmp_path / "h.json")]
    )
    trainer.fit(loader(), epochs=2)
    rows = (tmp_path / "h.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_accuracy,lr_0") and len(rows) == 3
    assert [r["epoch"] for r in json.loads((tmp_path / "h.json").read_text())] == [1, 2]
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        HistoryLogger(tmp_path / "h.txt")


def test_lr_scheduler_per_step_and_per_epoch() -> None:
    torch.manual_seed(0)
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    trainer = Trainer(
        model,
        optimizer=opt,
        callbacks=[LRScheduler(sched, interval="step")],
        device="cpu",
        verbose=False,
    )
    history = trainer.fit(loader(64), epochs=2)  # 4 steps per epoch
    assert history["lr"] == [[0.5**4], [0.5**8]]
    model2 = small_net()
    opt2 = torch.optim.SGD(model2.parameters(), lr=1.0)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.1)
    trainer2 = Trainer(
        model2, optimizer=opt2, callbacks=[LRScheduler(sched2)], device="cpu", verbose=False
    )
    assert trainer2.fit(loader(64), epochs=2)["lr"] == [[1.0], [pytest.approx(0.1)]]


def test_gradual_unfreeze_adds_groups_by_identity_and_new_params_train(tiny) -> None:
    torch.manual_seed(0)
    FreezePolicy(train_only=["fc"]).apply(tiny)
    before = tiny.layer2[0].weight.detach().clone()
    conv1 = tiny.conv1.weight.detach().clone()
    gu = GradualUnfreeze({1: "layer2"}, lr=0.01)
    trainer = trainer_for(tiny, callbacks=[gu])
    history = trainer.fit(loader(), epochs=2)
    assert len(trainer.optimizer.param_groups) == 2
    new_group = trainer.optimizer.param_groups[1]["params"]
    assert {id(p) for p in new_group} == {id(p) for p in tiny.layer2.parameters()}
    assert not torch.equal(before, tiny.layer2[0].weight) and torch.equal(conv1, tiny.conv1.weight)
    assert history["lr"] == [[0.05], [0.05, 0.01]]
    tiny.train()
    assert (
        tiny.layer2[1].training and not tiny.bn1.training
    )  # released BN in the unfrozen stage only


def test_gradual_unfreeze_state_survives_resume(tiny, tmp_path: Path) -> None:
    torch.manual_seed(0)
    base = copy.deepcopy(tiny)
    FreezePolicy(train_only=["fc"]).apply(tiny)
    trainer_for(
        tiny, callbacks=[GradualUnfreeze({1: "layer2"}), ModelCheckpoint(tmp_path, monitor=None)]
    ).fit(loader(), epochs=2)
    FreezePolicy(train_only=["fc"]).apply(base)
    resumed = trainer_for(base, callbacks=[GradualUnfreeze({1: "layer2"})])
    resumed.fit(loader(), epochs=3, resume_from=tmp_path / "last.pt")
    assert len(resumed.optimizer.param_groups) == 2 and resumed.epochs_done == 3
    assert all(p.requires_grad for p in base.layer2.parameters())


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


def test_every_callback_hook_has_the_contract_signature() -> None:
    def walk(cls: type) -> list[type]:
        return [cls] + [c for sub in cls.__subclasses__() for c in walk(sub)]

    classes = [c for c in walk(Callback) if c.__module__.startswith("tlkit.")]
    assert set(callbacks.__all__) <= {c.__name__ for c in classes}
    for cls in classes:
        for name, fn in inspect.getmembers(cls, inspect.isfunction):
            if not name.startswith("on_"):
                continue
            params = list(inspect.signature(fn).parameters.values())
            assert [p.name for p in params[:2]] == ["self", "trainer"], (cls, name)
            assert params[1].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, (cls, name)
            assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:-1]), (cls, name)
            assert params[-1].kind is inspect.Parameter.VAR_KEYWORD, (cls, name)
            assert hasattr(Callback, name), f"{cls.__name__}.{name} is not a base hook"


# ---------------------------------------------------------------------------- feature cache
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


# ---------------------------------------------------------------------------- batch transform
def uint8_loader(n: int, *, seed: int = 0, shuffle: bool = True, size: int = 12) -> DataLoader:
    data = ColourDataset(n, seed=seed, size=size)
    images = (data.images * 255).round().to(torch.uint8)
    return DataLoader(TensorDataset(images, data.labels), batch_size=16, shuffle=shuffle)


class Recording(nn.Module):
    """Wraps a batch transform and records the mode and input of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, x.dtype))
        return self.inner(x)


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


def test_batch_transform_counts_as_random_for_the_feature_cache(tiny) -> None:
    FreezePolicy(train_only=["fc"]).apply(tiny)
    trainer = trainer_for(tiny, batch_transform=tlkit.augment.BatchAugment(8))
    with pytest.raises(ValueError, match=r"random batch_transform.*cache_one_view=True"):
        trainer.fit(uint8_loader(32), epochs=1, cache_features=True)
    trainer.fit(uint8_loader(32), epochs=1, cache_features=True, cache_one_view=True)
    with pytest.raises(TypeError, match="batch_transform must be callable, got str"):
        trainer_for(tiny, batch_transform="flip")


# ---------------------------------------------------------------------------- faults and bad input
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


def test_nan_loss_stops_naming_epoch_and_batch_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    class Poison(Callback):
        def on_batch_start(self, trainer, *, batch, **kwargs):
            if trainer.epochs_done == 1 and batch == 2:
                with torch.no_grad():
                    trainer.model[-1].weight.fill_(float("nan"))

    torch.manual_seed(0)
    model = small_net()
    trainer = trainer_for(
        model, callbacks=[Poison(), ModelCheckpoint(tmp_path, monitor=None)], log_every=1
    )
    with pytest.raises(NonFiniteLossError, match="epoch 2, batch 3"):
        trainer.fit(loader(), epochs=3)
    last = tlkit.checkpoint.read_checkpoint(tmp_path / "last.pt")
    assert last["epochs_done"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_bad_checkpoints_each_give_one_clear_error(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = small_net()
    trainer = trainer_for(model, callbacks=[ModelCheckpoint(tmp_path, monitor=None)])
    trainer.fit(loader(), epochs=1)
    good = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["history"] = [{"epoch": 1, "note": Path("x")}]
    torch.save(state, tmp_path / "pickled.pt")
    cases = {
        "truncated.pt": "truncated",
        "weights.pt": "not a tlkit training checkpoint",
        "pickled.pt": "pickled objects",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            trainer_for(small_net()).fit(loader(), epochs=2, resume_from=tmp_path / name)
    with pytest.raises(ValueError, match="does not fit this model"):
        trainer_for(nn.Sequential(nn.Flatten(), nn.Linear(192, 3))).fit(
            loader(), epochs=2, resume_from=tmp_path / "last.pt"
        )
    with pytest.raises(FileNotFoundError):
        trainer_for(small_net()).fit(loader(), epochs=2, resume_from=tmp_path / "nope.pt")


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


@pytest.mark.parametrize("random", [False, True], ids=["plain", "dropout-and-augmentation"])
def test_ctrl_c_saves_interrupted_checkpoint_and_resume_is_exact(
    tmp_path: Path, random: bool
) -> None:
    class CtrlC(Callback):
        def on_batch_end(self, trainer, *, batch, optimizer_stepped, **kwargs):
            if trainer.epochs_done == 1 and batch == 2:
                raise KeyboardInterrupt

    def run(extra: list[Callback], resume: Path | None = None) -> nn.Module:
        torch.manual_seed(0)
        model = small_net(dropout=0.3 if random else 0.0)
        trainer = trainer_for(model, callbacks=extra, checkpoint_dir=tmp_path)
        history = trainer.fit(loader(augment=random), epochs=3, resume_from=resume)
        model.train_losses = history["train_loss"]  # type: ignore[assignment]
        return model

    reference = run([])
    with pytest.raises(KeyboardInterrupt):
        run([CtrlC()])
    state = tlkit.checkpoint.read_checkpoint(tmp_path / "interrupted.pt")
    assert state["epochs_done"] == 1 and state["batches_done"] == 3
    resumed = run([], resume=tmp_path / "interrupted.pt")
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert resumed.train_losses == reference.train_losses


def test_ctrl_c_during_validation_resumes_without_retraining_the_epoch(tmp_path: Path) -> None:
    class Interruptible(ColourDataset):
        armed = False

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            if self.armed:
                Interruptible.armed = False
                raise KeyboardInterrupt
            return super().__getitem__(index)

    class ArmInEpoch1(Callback):
        def on_batch_end(self, trainer, *, batch, optimizer_stepped, **kwargs):
            if trainer.epochs_done == 1 and batch == 5:  # the last training batch
                Interruptible.armed = True

    def run(extra: list[Callback], resume: Path | None = None) -> tuple[nn.Module, list]:
        torch.manual_seed(0)
        model = small_net(dropout=0.3)
        trainer = trainer_for(model, callbacks=extra, checkpoint_dir=tmp_path)
        val = DataLoader(Interruptible(32, seed=1), batch_size=16)
        history = trainer.fit(loader(augment=True), val, epochs=3, resume_from=resume)
        return model, history.records

    reference, records = run([])
    with pytest.raises(KeyboardInterrupt):
        run([ArmInEpoch1()])
    assert tlkit.checkpoint.read_checkpoint(tmp_path / "interrupted.pt")["batches_done"] == 6
    resumed, resumed_records = run([], resume=tmp_path / "interrupted.pt")
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    for a, b in zip(records, resumed_records, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


@pytest.mark.parametrize("every_n_steps", [None, 2], ids=["epoch-end", "mid-epoch"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(
    tmp_path: Path, every_n_steps: int | None
) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    script = str(JOBS / "resume_job.py")
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, script, "--out", str(full)], check=True, env=env, timeout=300)
    every = ["--every-n-steps", str(every_n_steps)] if every_n_steps else []
    proc = subprocess.Popen(
        [sys.executable, script, "--out", str(killed), "--stall", "2:3", *every], env=env
    )
    try:
        deadline = time.monotonic() + 300
        while not (killed / "stalled").exists():
            assert proc.poll() is None, "the job ended before stalling"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()
    assert not (killed / "final.pt").exists()
    last = tlkit.checkpoint.read_checkpoint(killed / "last.pt")
    # 6 batches per epoch; killed inside batch 3 of epoch 2 (0-based), before its checkpoint
    assert (last["epochs_done"], last["batches_done"]) == ((2, 2) if every_n_steps else (2, 0))
    subprocess.run(
        [sys.executable, script, "--out", str(killed), "--resume", str(killed / "last.pt")],
        check=True,
        env=env,
        timeout=300,
    )
    a = torch.load(full / "final.pt", weights_only=True)
    b = torch.load(killed / "final.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    best_full = torch.load(full / "best.pt", weights_only=True)
    best_resumed = torch.load(killed / "best.pt", weights_only=True)
    assert best_full["epochs_done"] == best_resumed["epochs_done"]
    # the resumed epoch's training metrics include the batches done before the kill
    history = json.loads((full / "history.json").read_text())
    assert json.loads((killed / "history.json").read_text()) == history


@pytest.mark.parametrize("unfreeze", [False, True], ids=["plain", "gradual-unfreeze"])
def test_ddp_two_processes_match_one_process(tmp_path: Path, unfreeze: bool) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(JOBS / "ddp_job.py")
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    extra = ["--unfreeze"] if unfreeze else []
    single = [sys.executable, script, "--out", str(one), "--batch-size", "16", *extra]
    subprocess.run(single, check=True, env=env, timeout=300)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    double = [*launcher, script, "--out", str(two), "--batch-size", "8", *extra]
    subprocess.run(double, check=True, env=env, timeout=300)
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    assert m2["eval"]["count"] == 64
    for r1, r2 in zip(m1["history"], m2["history"], strict=True):
        for key in r1:
            assert r2[key] == pytest.approx(r1[key], abs=1e-4), key
    assert m2["eval"]["accuracy"] == pytest.approx(m1["eval"]["accuracy"], abs=1e-6)
    # with gradual unfreezing the conv trains from epoch 2: its gradients must be all-reduced
    assert m2["conv_weight_sum"] == pytest.approx(m1["conv_weight_sum"], abs=1e-4)
    assert sorted(p.name for p in two.iterdir()) == ["last.pt", "metrics.json"]


def test_a_failed_checkpoint_write_leaves_the_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tlkit import _utils

    target = tmp_path / "last.pt"
    _utils.atomic_save({"step": torch.tensor(1)}, target)
    before = target.read_bytes()

    def crash(obj, handle):  # writes half a file, then the process "dies"
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(_utils.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _utils.atomic_save({"step": torch.tensor(2)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_progress_bar_shows_loss_accuracy_and_speed_and_is_quiet_when_disabled(capsys) -> None:
    torch.manual_seed(0)
    trainer_for(small_net(), callbacks=[tlkit.ProgressBar(refresh_every=2, enable=True)]).fit(
        loader(64), epochs=1
    )
    shown = capsys.readouterr().err
    assert "epoch 1/1" in shown and "loss=" in shown and "acc=" in shown and "img_s=" in shown
    trainer_for(small_net(), callbacks=[tlkit.ProgressBar(enable=False)]).fit(loader(64), epochs=1)
    assert capsys.readouterr().err == ""
