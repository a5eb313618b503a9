"""Checkpoint files and the state a bit-identical resume needs.

Everything tlkit reads from disk goes through [tlkit.training.checkpoint.load_file][] (one
``torch.load(weights_only=True)``, one set of error messages). A training checkpoint is a dict
written by [tlkit.Trainer.save_checkpoint][] and checked by
[tlkit.training.checkpoint.read_checkpoint][]. Random state is captured with
[tlkit.training.checkpoint.rng_state][]: the global generators of torch, Python, NumPy and
CUDA, plus the generators and stateful samplers of a ``DataLoader``, so that a resumed epoch
draws the same data order as the run that stopped.
"""

from __future__ import annotations

import os
import random
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from .._utils import atomic_save, check_state_finite, check_weights_finite, load_file
from ..history import History

__all__ = [
    "CheckpointConnector",
    "CheckpointedTrainer",
    "EpochPosition",
    "callback_keys",
    "load_file",
    "load_trainer_state",
    "read_checkpoint",
    "rng_state",
    "set_rng_state",
    "trainer_state",
]

FORMAT = 1
"""Version of the training-checkpoint layout written by this tlkit."""

_REQUIRED = ("model", "optimizer", "epochs_done", "global_step", "rng", "history", "callbacks")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a training checkpoint written by [tlkit.Trainer][].

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        IsADirectoryError: If ``path`` is a folder.
        ValueError: If the file is unreadable, is not a tlkit training checkpoint, or was
            written in another format version.

    Examples:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/weights.pt"
        >>> torch.save(torch.nn.Linear(2, 2).state_dict(), path)
        >>> read_checkpoint(path)
        Traceback (most recent call last):
        ...
        ValueError: ...is not a tlkit training checkpoint...
    """
    state = load_file(path)
    if not isinstance(state, dict) or "tlkit_checkpoint" not in state:
        keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"{str(path)!r} is not a tlkit training checkpoint (format {FORMAT}); found {keys}. "
            "For bare weights use tlkit.load_weights(model, path)"
        )
    version = state["tlkit_checkpoint"]
    if version != FORMAT:
        newer = isinstance(version, int) and version > FORMAT
        raise ValueError(
            f"{str(path)!r} is a tlkit checkpoint of format {version!r}, but this tlkit reads "
            f"format {FORMAT}; "
            + ("upgrade tlkit to resume it" if newer else "resume it with the tlkit that wrote it")
        )
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks {', '.join(missing)}; it is damaged")
    return state


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator``s a DataLoader's sampling draws from, each once."""
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(
            getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None
        ),
    ]
    for gen in candidates:
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def _stateful_samplers(loader: Any) -> list[Any]:
    samplers = [getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)]
    return [
        s
        for s in samplers
        if s is not None
        and callable(getattr(s, "state_dict", None))
        and callable(getattr(s, "load_state_dict", None))
    ]


def rng_state(loader: Any = None) -> dict[str, Any]:
    """Every random state a training loop consumes, in a ``weights_only``-loadable form.

    Args:
        loader: Also capture this DataLoader's own generators (``DataLoader(generator=...)``,
            a sampler's ``generator``) and the ``state_dict()`` of samplers that have one.

    Examples:
        >>> state = rng_state()
        >>> a = torch.rand(1)
        >>> set_rng_state(state)
        >>> bool(torch.rand(1) == a)
        True
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        state["numpy"] = (kind, torch.from_numpy(np.array(keys)), pos, has_gauss, cached)
    except ImportError:  # pragma: no cover - numpy comes with torchvision
        pass
    if loader is not None:
        state["loader_generators"] = [g.get_state() for g in _loader_generators(loader)]
        state["samplers"] = [s.state_dict() for s in _stateful_samplers(loader)]
    return state


def set_rng_state(state: dict[str, Any], loader: Any = None) -> None:
    """Restore what [tlkit.training.checkpoint.rng_state][] captured (``loader``'s part onto
    ``loader``).

    Raises:
        ValueError: If ``loader`` has a different number of generators than when captured.

    Examples:
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(range(8), shuffle=True, generator=torch.Generator())
        >>> state = rng_state(loader)
        >>> first = list(loader)
        >>> set_rng_state(state, loader)
        >>> list(loader) == first
        True
    """
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    if loader is None:
        return
    generators = _loader_generators(loader)
    saved = state.get("loader_generators", [])
    if len(saved) != len(generators):
        raise ValueError(
            f"the checkpoint holds the state of {len(saved)} DataLoader generator(s) but this "
            f"train_loader has {len(generators)}; resume with a loader built like the original "
            "(same generator= and sampler)"
        )
    for gen, gen_state in zip(generators, saved, strict=True):
        gen.set_state(gen_state)
    for sampler, sampler_state in zip(
        _stateful_samplers(loader), state.get("samplers", []), strict=False
    ):
        sampler.load_state_dict(sampler_state)


@dataclass
class EpochPosition:
    """Where training stands inside the current epoch, for checkpoints written mid-epoch.

    Attributes:
        start_rng: Random state when the epoch's data iteration began (``None`` between epochs).
        batches_done: Training batches finished in this epoch.
        end_rng: Random state when the epoch's training batches ended (set before validation).
        resume_rng: On resume, the random state after the last batch done before the stop.
        resume_meter: On resume, the running metric sums of the batches done before the stop.
        resume_seconds: On resume, the training time of those batches.
        meter: The epoch's running [tlkit.ClassificationMeter][].
        started: ``time.perf_counter()`` when the epoch started (less resumed time).

    Examples:
        >>> EpochPosition().inside_epoch, EpochPosition(start_rng=rng_state()).inside_epoch
        (False, True)
    """

    start_rng: dict[str, Any] | None = None
    batches_done: int = 0
    end_rng: dict[str, Any] | None = None
    resume_rng: dict[str, Any] | None = None
    resume_meter: dict[str, Any] | None = None
    resume_seconds: float = 0.0
    meter: Any = None
    started: float = 0.0

    @property
    def inside_epoch(self) -> bool:
        """Whether an epoch has started and not finished."""
        return self.start_rng is not None

    def skipped(self, index: int, skip: int) -> None:
        """Batch ``index`` of a resumed epoch was done before: after the last one, restore the
        random state as it was then (augmentation and dropout continue exactly)."""
        if index == skip - 1 and self.resume_rng is not None:
            set_rng_state(self.resume_rng)

    def begin(self, meter: Any, skip: int, device: Any) -> None:
        """Start the epoch's clock and ``meter``, continuing a resumed epoch's metrics."""
        self.meter = meter
        if skip and self.resume_meter is not None:
            meter.load_state_dict(self.resume_meter, device=device)
        self.started = time.perf_counter() - (self.resume_seconds if skip else 0.0)

    def running(self) -> dict[str, float]:
        """Loss, accuracy and images/s of the epoch so far (one host sync)."""
        if self.meter is None:
            return {}
        out: dict[str, float] = self.meter.running()
        elapsed = time.perf_counter() - self.started
        if elapsed > 0:
            out["images_per_sec"] = self.meter.count / elapsed
        return out


@runtime_checkable
class CheckpointedTrainer(Protocol):
    """What checkpointing reads and restores of a [tlkit.Trainer][].

    Examples:
        >>> import torch
        >>> from tlkit import Trainer
        >>> from tlkit.checkpoint import CheckpointedTrainer
        >>> isinstance(Trainer(torch.nn.Linear(2, 2)), CheckpointedTrainer)
        True
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    callbacks: list[Any]
    history: History
    position: EpochPosition
    epochs_done: int
    global_step: int
    should_stop: bool
    train_loader: Any

    @property
    def is_global_zero(self) -> bool: ...
    def check_finite(self) -> None: ...
    def refresh_module(self) -> None: ...
    def barrier(self) -> None: ...
    def log(self, message: str) -> None: ...


def callback_keys(callbacks: Sequence[Any]) -> list[str]:
    """The key of each callback's state in a checkpoint: its class name, numbered if repeated.

    Examples:
        >>> from tlkit import EarlyStopping, ProgressBar
        >>> callback_keys([ProgressBar(), EarlyStopping(), EarlyStopping()])
        ['ProgressBar', 'EarlyStopping', 'EarlyStopping_2']
    """
    keys: list[str] = []
    for callback in callbacks:
        name = type(callback).__name__
        keys.append(name if name not in keys else f"{name}_{len(keys)}")
    return keys


def trainer_state(trainer: CheckpointedTrainer) -> dict[str, Any]:
    """The checkpoint dict of a [tlkit.Trainer][]: what [tlkit.Trainer.state_dict][] returns.

    Examples:
        >>> from tlkit import Trainer
        >>> state = trainer_state(Trainer(torch.nn.Linear(2, 2), device="cpu", verbose=False))
        >>> state["tlkit_checkpoint"] == FORMAT, state["epochs_done"], state["batches_done"]
        (True, 0, 0)
    """
    position = trainer.position
    batches_done = position.batches_done if position.inside_epoch else 0
    partial = None
    if batches_done > 0 and position.meter is not None:
        partial = {
            "rng": position.end_rng if position.end_rng is not None else rng_state(),
            "meter": position.meter.state_dict(),
            "seconds": time.perf_counter() - position.started,
        }
    callbacks = trainer.callbacks
    return {
        "tlkit_checkpoint": FORMAT,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "optimizer_class": type(trainer.optimizer).__name__,
        "scaler": trainer.scaler.state_dict(),
        "epochs_done": trainer.epochs_done,
        "batches_done": batches_done,
        "partial_epoch": partial,
        "global_step": trainer.global_step,
        "should_stop": trainer.should_stop,
        "callbacks": {
            k: c.state_dict() for k, c in zip(callback_keys(callbacks), callbacks, strict=True)
        },
        "rng": position.start_rng if position.inside_epoch else rng_state(trainer.train_loader),
        "history": trainer.history.records,
    }


def load_trainer_state(trainer: CheckpointedTrainer, state: dict[str, Any], *, source: str) -> None:
    """Restore a [tlkit.Trainer][] from [tlkit.training.checkpoint.trainer_state][]'s dict, in
    order: model, callbacks (``load_state_dict``, then ``on_load_checkpoint``), optimizer, scaler,
    counters, history, the position inside an epoch. The random state is left to the caller.

    Raises:
        ValueError: If the model, the optimizer's type or its parameter groups do not match.

    Examples:
        >>> from tlkit import Trainer
        >>> a = Trainer(torch.nn.Linear(2, 2), device="cpu", verbose=False)
        >>> b = Trainer(torch.nn.Linear(2, 2), device="cpu", verbose=False)
        >>> load_trainer_state(b, trainer_state(a), source="a")
        >>> bool((a.model.weight == b.model.weight).all())
        True
    """
    check_state_finite(state["model"], source)
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ValueError(f"{source} does not fit this model: {exc}") from exc
    saved = state["callbacks"]
    for key, callback in zip(callback_keys(trainer.callbacks), trainer.callbacks, strict=True):
        if key in saved:
            callback.load_state_dict(saved[key])
    for callback in trainer.callbacks:  # e.g. GradualUnfreeze re-adds its parameter groups
        callback.on_load_checkpoint(trainer)
    _load_optimizer(trainer.optimizer, state, source)
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.epochs_done, trainer.global_step = state["epochs_done"], state["global_step"]
    trainer.should_stop = state["should_stop"]
    trainer.history.records = list(state["history"])
    partial = state.get("partial_epoch") or {}
    trainer.position = EpochPosition(
        start_rng=state["rng"] if state["batches_done"] else None,
        resume_rng=partial.get("rng"),
        resume_meter=partial.get("meter"),
        resume_seconds=float(partial.get("seconds", 0.0)),
    )


def _load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], source: str) -> None:
    mine, theirs = type(optimizer).__name__, state.get("optimizer_class")
    saved_groups = state["optimizer"]["param_groups"]
    keys = set(saved_groups[0]) - {"params"} if saved_groups else set()
    own_keys = set(optimizer.param_groups[0]) - {"params"}
    if (theirs is not None and theirs != mine) or (theirs is None and keys - own_keys):
        raise ValueError(
            f"{source} holds the state of a {theirs or 'different'} optimizer but this "
            f"trainer's is {mine}; build the same optimizer as the run that saved it"
        )
    if len(saved_groups) != len(optimizer.param_groups):
        raise ValueError(
            f"the optimizer has {len(optimizer.param_groups)} parameter groups but {source} has "
            f"{len(saved_groups)}; build the same optimizer and callbacks as the run that saved it"
        )
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise ValueError(f"{source}'s optimizer state does not fit this optimizer: {exc}") from exc


class CheckpointConnector:
    """The [tlkit.Trainer][]'s checkpoint component (the trainer owns one as
    ``trainer.checkpoints``): its state as a dict, saving, resuming.

    It works on the trainer's ``model``, ``optimizer``, ``scaler``, ``callbacks``, counters,
    ``history`` and ``position`` through [tlkit.training.checkpoint.trainer_state][] and
    [tlkit.training.checkpoint.load_trainer_state][]; the file format and the random state are the
    functions above it.

    Examples:
        >>> from tlkit import Trainer
        >>> isinstance(Trainer(torch.nn.Linear(2, 2), device="cpu").checkpoints,
        ...            CheckpointConnector)
        True
    """

    def __init__(self, trainer: CheckpointedTrainer) -> None:
        # a weak reference: a cycle would keep the trainer, and a DDP model's process group
        # threads, alive until interpreter shutdown, where gloo aborts the process
        self._trainer = weakref.ref(trainer)

    @property
    def trainer(self) -> CheckpointedTrainer:
        """The trainer this component belongs to."""
        trainer = self._trainer()
        if trainer is None:
            raise ReferenceError("the Trainer of this CheckpointConnector no longer exists")
        return trainer

    def state_dict(self) -> dict[str, Any]:
        """See [tlkit.Trainer.state_dict][]."""
        return trainer_state(self.trainer)

    def load_state_dict(self, state: dict[str, Any], *, source: str) -> None:
        """See [tlkit.Trainer.load_state_dict][]."""
        load_trainer_state(self.trainer, state, source=source)
        self.trainer.refresh_module()

    def save(self, path: str | Path) -> None:
        """See [tlkit.Trainer.save_checkpoint][]."""
        trainer = self.trainer
        trainer.check_finite()
        check_weights_finite(trainer.model, path)
        if trainer.is_global_zero:
            atomic_save(self.state_dict(), path)
        trainer.barrier()

    def resume(self, path: str | Path, *, loader: Any = None) -> int:
        """See [tlkit.Trainer.resume][]; returns the batches done in the epoch it was written in."""
        state = read_checkpoint(path)
        self.load_state_dict(state, source=str(path))
        set_rng_state(state["rng"], loader)
        done = int(state["batches_done"])
        self.trainer.log(
            f"resumed from {path}: {self.trainer.epochs_done} epochs done"
            + (f", {done} batches into the next" if done else "")
        )
        return done
