"""Callbacks: the effect of each, and the hook contract every callback class keeps."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import pytest
import torch

import tlkit
from tlkit import (
    Callback,
    EarlyStopping,
    FreezePolicy,
    GradualUnfreeze,
    HistoryLogger,
    LRScheduler,
    ModelCheckpoint,
    Trainer,
    callbacks,
)

from .helpers import loader, trainer_for
from .jobs.common import small_net

JOBS = Path(__file__).parent / "jobs"


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


def test_progress_bar_shows_loss_accuracy_and_speed_and_is_quiet_when_disabled(capsys) -> None:
    torch.manual_seed(0)
    trainer_for(small_net(), callbacks=[tlkit.ProgressBar(refresh_every=2, enable=True)]).fit(
        loader(64), epochs=1
    )
    shown = capsys.readouterr().err
    assert "epoch 1/1" in shown and "loss=" in shown and "acc=" in shown and "img_s=" in shown
    trainer_for(small_net(), callbacks=[tlkit.ProgressBar(enable=False)]).fit(loader(64), epochs=1)
    assert capsys.readouterr().err == ""
