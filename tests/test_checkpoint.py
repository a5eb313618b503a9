"""Checkpoints and resume: atomic writes, validation, exact continuation after a stop."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import tlkit
from tlkit import (
    Callback,
    ModelCheckpoint,
    NonFiniteLossError,
    Trainer,
)
from tlkit.training.checkpoint import load_file

from .helpers import loader, trainer_for
from .jobs.common import ColourDataset, small_net

JOBS = Path(__file__).parent / "jobs"


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
    last = tlkit.training.checkpoint.read_checkpoint(tmp_path / "last.pt")
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
        "pickled.pt": "pickled Python objects",
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
    state = tlkit.training.checkpoint.read_checkpoint(tmp_path / "interrupted.pt")
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
    assert (
        tlkit.training.checkpoint.read_checkpoint(tmp_path / "interrupted.pt")["batches_done"] == 6
    )
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
    last = tlkit.training.checkpoint.read_checkpoint(killed / "last.pt")
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


def test_nan_in_a_batch_never_reaches_a_checkpoint_even_saving_every_step(tmp_path: Path) -> None:
    class Poison(Callback):
        def on_batch_start(self, trainer, *, batch, **kwargs):
            if batch == 1:
                with torch.no_grad():
                    trainer.model[-1].weight.fill_(float("nan"))

    torch.manual_seed(0)
    checkpoint = ModelCheckpoint(tmp_path, monitor=None, every_n_steps=1)
    trainer = trainer_for(small_net(), callbacks=[Poison(), checkpoint])  # log_every=50
    with pytest.raises(NonFiniteLossError, match="epoch 1, batch 2"):
        trainer.fit(loader(), epochs=1)
    last = tlkit.training.checkpoint.read_checkpoint(tmp_path / "last.pt")
    assert last["batches_done"] == 1  # written after batch 1, never after the bad batch 2
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert not (tmp_path / "interrupted.pt").exists()


def test_nan_weights_with_a_finite_loss_are_not_saved(tmp_path: Path) -> None:
    model = small_net()
    trainer = trainer_for(model)
    with torch.no_grad():
        model[0].bias[0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"0\.bias"):
        trainer.save_checkpoint(tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_stale_temporary_files_of_a_killed_writer_are_removed_at_the_next_save(
    tmp_path: Path,
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    stale = tmp_path / f".last.pt.{dead.stdout.strip()}.abcd.tmp"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".last.pt.{os.getppid()}.efgh.tmp"  # a running writer's: kept
    live.write_bytes(b"y")
    other = tmp_path / ".best.pt.1.zz.tmp"  # another target's: not ours to judge now
    other.write_bytes(b"z")
    trainer_for(small_net()).save_checkpoint(tmp_path / "last.pt")
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "last.pt").is_file()


class _SavedSampler(torch.utils.data.Sampler[int]):
    """Shuffles from its own counter, which it saves (like torchdata's samplers)."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(1000 + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state):
        self.epoch = state["epoch"]


def _loaders(kind: str) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders built the same way in every process."""
    data, val = ColourDataset(64, augment=True), ColourDataset(32, seed=5)
    if kind == "generator":  # PyTorch's reproducibility advice
        gen = torch.Generator().manual_seed(7)
        train = DataLoader(data, batch_size=16, shuffle=True, generator=gen)
    elif kind == "sampler":
        train = DataLoader(data, batch_size=16, sampler=_SavedSampler(64))
    else:
        train = DataLoader(data, batch_size=16, shuffle=True)
    return train, DataLoader(val, batch_size=16)


@pytest.mark.parametrize("loader_kind", ["global", "generator", "sampler"])
@pytest.mark.parametrize("checkpoint", ["mid-epoch", "epoch end", "best", "fit end"])
def test_resume_from_every_kind_of_checkpoint_equals_the_uninterrupted_run(
    tmp_path: Path, checkpoint: str, loader_kind: str
) -> None:
    class CtrlC(Callback):
        def on_batch_end(self, trainer, *, batch, optimizer_stepped, **kwargs):
            if trainer.epochs_done == 1 and batch == 2:
                raise KeyboardInterrupt

    def run(epochs: int, extra: list[Callback], resume: Path | None = None) -> tlkit.Trainer:
        torch.manual_seed(0)
        model = small_net(dropout=0.3)
        trainer = trainer_for(model, callbacks=extra, checkpoint_dir=tmp_path)
        trainer.fit(*_loaders(loader_kind), epochs=epochs, resume_from=resume)
        return trainer

    reference = run(4, []).model
    if checkpoint == "mid-epoch":
        with pytest.raises(KeyboardInterrupt):
            run(4, [CtrlC()])
        path = tmp_path / "interrupted.pt"
    elif checkpoint == "fit end":
        path = tmp_path / "fit-end.pt"
        run(2, []).save_checkpoint(path)
    else:
        monitor = "val_loss" if checkpoint == "best" else None
        run(2, [ModelCheckpoint(tmp_path, monitor=monitor)])
        path = tmp_path / ("best.pt" if checkpoint == "best" else "last.pt")
    torch.manual_seed(123)  # the resumed process starts from other random states
    resumed = run(4, [], resume=path).model
    for (name, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_refuses_another_optimizer_a_folder_and_another_format(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = trainer_for(small_net(), callbacks=[ModelCheckpoint(tmp_path, monitor=None)])
    trainer.fit(loader(), epochs=1)  # Adam
    model = small_net()
    sgd = Trainer(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                  device="cpu", verbose=False)  # fmt: skip
    with pytest.raises(ValueError, match="Adam optimizer but this trainer's is SGD"):
        sgd.fit(loader(), epochs=2, resume_from=tmp_path / "last.pt")
    with pytest.raises(IsADirectoryError, match=r"is a folder; it holds last\.pt"):
        trainer_for(small_net()).fit(loader(), epochs=2, resume_from=tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["tlkit_checkpoint"] = 99
    torch.save(state, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format 99, but this tlkit reads format 1; upgrade"):
        trainer_for(small_net()).fit(loader(), epochs=2, resume_from=tmp_path / "future.pt")


def test_resume_refuses_a_checkpoint_with_nan_weights(tmp_path: Path) -> None:
    trainer = trainer_for(small_net(), checkpoint_dir=tmp_path)
    trainer.fit(loader(), epochs=1)
    state = trainer.state_dict()
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, tmp_path / "bad.pt")
    fresh = trainer_for(small_net(), checkpoint_dir=tmp_path)
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    with pytest.raises(ValueError, match=f"NaN or infinite weights .*first: {name}"):
        fresh.fit(loader(), epochs=2, resume_from=tmp_path / "bad.pt")
    assert all(torch.equal(before[k], v) for k, v in fresh.model.state_dict().items())


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.remove, ("never-called",))


def test_unreadable_files_are_named_in_one_plain_sentence_and_no_pickle_runs(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[:100])
    (tmp_path / "text.pt").write_text("hello")
    with open(tmp_path / "payload.pt", "wb") as handle:
        pickle.dump(_Payload(), handle, protocol=4)
    expected = {
        "truncated.pt": "it is truncated or not a PyTorch file",
        "text.pt": "it is truncated or not a PyTorch file",
        "payload.pt": "it holds pickled Python objects, which tlkit does not load",
    }
    for name, why in expected.items():
        with pytest.raises(ValueError) as caught:
            load_file(tmp_path / name, what="model")
        message = str(caught.value)
        assert message == f"cannot read model {str(tmp_path / name)!r}: {why}" + (
            " (they could run code)" if name == "payload.pt" else ""
        )
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
