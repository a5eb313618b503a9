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
    assert set(callbacks.__all__) - {"TrainerLike"} <= {c.__name__ for c in classes}
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


def test_ema_follows_timm_v3_semantics_and_is_loaded_at_the_end() -> None:
    torch.manual_seed(0)
    model = small_net()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[dict[str, torch.Tensor]] = []

    class Record(Callback):
        order = 5  # after the optimizer step, before the EMA update

        def on_batch_end(self, trainer, *, batch, optimizer_stepped, **kwargs):
            seen.append({k: v.clone() for k, v in trainer.model.state_dict().items()})

    ema = tlkit.EMA(decay=0.9, warmup_gamma=1.0, warmup_power=1.0)
    trainer_for(model, callbacks=[Record(), ema]).fit(loader(48), epochs=1)
    expected = {k: v.clone() for k, v in start.items()}
    for t, state in enumerate(seen):
        decay = min(0.9, 1 - (1 + t) ** -1.0)  # timm ModelEmaV3's warm-up
        for key, value in state.items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value
            else:
                expected[key] = value
    assert ema.updates == len(seen) == 3
    for key, value in model.state_dict().items():  # apply_at_end loaded the average
        torch.testing.assert_close(value, expected[key].to(value.dtype), rtol=1e-5, atol=1e-6)
    assert not torch.equal(model.state_dict()["6.weight"], seen[-1]["6.weight"])


def test_ema_state_survives_a_resume_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    def run(epochs: int, resume: Path | None = None) -> tlkit.EMA:
        torch.manual_seed(0)
        ema = tlkit.EMA(decay=0.95, apply_at_end=False)
        trainer = trainer_for(small_net(), callbacks=[ema, ModelCheckpoint(tmp_path, monitor=None)])
        trainer.fit(loader(), epochs=epochs, resume_from=resume)
        return ema

    full = run(3)
    run(2)
    resumed = run(3, resume=tmp_path / "last.pt")
    assert resumed.updates == full.updates
    for key, value in full.shadow.items():
        assert torch.equal(value, resumed.shadow[key]), key
    for bad in ({"decay": 1.0}, {"decay": -0.1}, {"decay": 0.5, "min_decay": 0.9},
                {"every_n_steps": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            tlkit.EMA(**bad)
