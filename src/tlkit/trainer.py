"""A generic, resumable training loop for fine-tuning classifiers on plain PyTorch objects.

:class:`Trainer` takes any ``nn.Module``, ``DataLoader``s, a ``torch.optim`` optimizer and
callbacks. It keeps metrics on the device (no per-step host sync beyond logging), handles mixed
precision, gradient accumulation and clipping, runs under ``torchrun`` with DDP, and saves
checkpoints that restore everything a bit-identical continuation needs.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset

from ._utils import (
    CHECKPOINT_FORMAT,
    atomic_save,
    check_positive_int,
    rng_state,
    set_rng_state,
    world,
)
from .callbacks import Callback, ProgressBar
from .heads import _find_classifier, _set_module
from .metrics import ClassificationMeter

__all__ = ["History", "NonFiniteLossError", "Trainer"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_RANDOM_OPS = ("RandAugment", "TrivialAugmentWide", "AutoAugment", "AugMix", "ColorJitter")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and batch.

    Examples:
        >>> issubclass(NonFiniteLossError, FloatingPointError)
        True
    """


@dataclass
class History:
    """Per-epoch records of a ``fit``: losses, accuracies, learning rates, time, images/s.

    ``history["val_accuracy"]`` is that column over epochs; ``history.records`` the rows.

    Examples:
        >>> h = History([{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}])
        >>> h["val_loss"], h.best("val_loss")["epoch"]
        ([0.5, 0.4], 2)
    """

    records: list[dict[str, Any]] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[Any]:
        if self.records and key not in self.records[-1]:
            raise KeyError(
                f"no column {key!r} in the history; columns: {', '.join(self.records[-1])}"
            )
        return [r.get(key) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def best(self, key: str, mode: Literal["min", "max", "auto"] = "auto") -> dict[str, Any]:
        """The record with the best value of ``key`` (``auto``: max for accuracies, else min)."""
        values = self[key]
        if not values:
            raise ValueError("the history is empty")
        maximise = mode == "max" or (mode == "auto" and "acc" in key)
        pick = max if maximise else min
        index = pick(range(len(values)), key=lambda i: values[i])
        return self.records[index]

    def __str__(self) -> str:
        if not self.records:
            return "(empty history)"
        keys = [k for k in self.records[0] if not isinstance(self.records[0][k], (list, dict))]
        rows = [keys] + [[_fmt(r.get(k)) for k in keys] for r in self.records]
        widths = [max(len(row[i]) for row in rows) for i in range(len(keys))]
        return "\n".join(
            "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _ends_in_log_softmax(model: nn.Module) -> bool:
    leaves = [m for m in model.modules() if not list(m.children())]
    return bool(leaves) and isinstance(leaves[-1], nn.LogSoftmax)


def _resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank)
    return resolved


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp32"
    return precision


def _unwrap_dataset(dataset: Any) -> Any:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def _transform_ops(transform: Any) -> Iterator[Any]:
    yield transform
    for child in getattr(transform, "transforms", None) or ():
        yield from _transform_ops(child)


def _has_random_transform(dataset: Any) -> bool:
    """Whether items of ``dataset`` come out differently on each read (a random augmentation)."""
    base = _unwrap_dataset(dataset)
    for attr in ("transform", "transforms"):
        for op in _transform_ops(getattr(base, attr, None)):
            name = type(op).__name__
            if name.startswith("Random") or name in _RANDOM_OPS:
                return True
    with contextlib.suppress(Exception):
        for index in range(min(3, len(dataset))):
            a, b = dataset[index][0], dataset[index][0]
            if isinstance(a, torch.Tensor) and not torch.equal(a, b):
                return True
    return False


class _TensorBatches:
    """Mini-batches over in-memory tensors (cached features): no workers, no collation."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, shuffle: bool) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n).to(self.x.device) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                yield (
                    self.x[start : start + self.batch_size],
                    self.y[start : start + self.batch_size],
                )
            else:
                idx = order[start : start + self.batch_size]
                yield self.x[idx], self.y[idx]


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Trainer:
    """Train and evaluate a classifier: plain PyTorch in, history and checkpoints out.

    Args:
        model: Any ``nn.Module`` returning ``(N, C)`` logits or log-probabilities.
        optimizer: A ``torch.optim`` optimizer; default ``AdamW(lr=1e-3)`` over the parameters
            that require gradients.
        loss: The loss; default ``NLLLoss`` when the model ends in ``LogSoftmax``, else
            ``CrossEntropyLoss``. ``NLLLoss`` on a model that outputs logits is an error.
        device: ``"auto"`` (CUDA, else MPS, else CPU), or any ``torch.device`` spec.
        precision: ``"auto"`` (bf16 autocast on CUDA where supported, else fp32), ``"fp32"``,
            ``"bf16"`` or ``"fp16"`` (with a gradient scaler).
        callbacks: :class:`~tlkit.callbacks.Callback` instances; a quiet-when-not-a-terminal
            :class:`~tlkit.callbacks.ProgressBar` is added unless one is given.
        grad_accum_steps: Batches per optimizer step.
        clip_grad_norm: Clip the gradient norm to this value before each step.
        channels_last: Use the channels-last memory format for model and inputs.
        batch_transform: A callable applied to every input batch once it is on the device, e.g.
            :class:`tlkit.augment.BatchAugment` (augmentation on the GPU). An ``nn.Module`` is
            moved to the device and put in train mode for training batches, in eval mode for
            evaluation, prediction and the validation features of ``cache_features``.
        compile: Wrap the model with ``torch.compile``.
        checkpoint_dir: Default folder of :class:`~tlkit.callbacks.ModelCheckpoint` and of the
            ``interrupted.pt`` written on Ctrl-C.
        log_every: Batches between loss checks (one host sync each): a NaN or infinite loss
            stops training within this many batches, naming the first bad batch.
        verbose: Print a summary at the start of ``fit`` and callback messages (rank 0).

    Raises:
        ValueError: For a bad ``precision``, ``grad_accum_steps < 1`` or a model with nothing
            to train and no optimizer.

    Examples:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(256, 2)
        >>> data = TensorDataset(x, (x[:, 0] > 0).long())
        >>> model = torch.nn.Sequential(
        ...     torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        ... )
        >>> optimizer = torch.optim.Adam(model.parameters(), 0.05)
        >>> trainer = Trainer(model, optimizer=optimizer, verbose=False)
        >>> history = trainer.fit(DataLoader(data, batch_size=32, shuffle=True), epochs=5)
        >>> trainer.evaluate(DataLoader(data, batch_size=64))["accuracy"] > 0.95
        True
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        loss: nn.Module | None = None,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        callbacks: Sequence[Callback] = (),
        grad_accum_steps: int = 1,
        clip_grad_norm: float | None = None,
        channels_last: bool = False,
        batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        compile: bool = False,
        checkpoint_dir: str | Path = "checkpoints",
        log_every: int = 50,
        verbose: bool = True,
    ) -> None:
        if grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
        self.rank, self.local_rank, self.world_size = world()
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            # The group is ours, so we tear it down: left to interpreter shutdown, gloo's
            # threads can abort the process ("terminate called without an active exception").
            atexit.register(_destroy_process_group)
        self.device = _resolve_device(device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.precision = _resolve_precision(precision, self.device)
        self.model = model.to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError(
                f"batch_transform must be callable, got {type(batch_transform).__name__}"
            )
        if isinstance(batch_transform, nn.Module):
            batch_transform.to(self.device)
        self.batch_transform = batch_transform
        self.log_probs_head = _ends_in_log_softmax(model)
        if optimizer is None:
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError(
                    "the model has no trainable parameters; unfreeze some or pass an optimizer"
                )
            optimizer = torch.optim.AdamW(params, lr=1e-3)
        self.optimizer = optimizer
        self.loss = self._resolve_loss(loss)
        self.outputs_log_probs = self.log_probs_head or isinstance(self.loss, nn.NLLLoss)
        given = list(callbacks)
        if not any(isinstance(c, ProgressBar) for c in given):
            given.append(ProgressBar())
        self.callbacks = sorted(given, key=lambda c: c.order)
        self.grad_accum_steps = grad_accum_steps
        self.clip_grad_norm = clip_grad_norm
        self.compile = compile
        self.checkpoint_dir = Path(checkpoint_dir)
        self.log_every = max(1, log_every)
        self.verbose = verbose
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.history = History()
        self.epochs_done = 0
        self.global_step = 0
        self.should_stop = False
        self.last_step_taken = True
        self.max_epochs = 0
        self.batches_per_epoch: int | None = None
        # where we are inside an epoch, for mid-epoch checkpoints (None between epochs)
        self._batches_done = 0
        self._epoch_rng: dict[str, Any] | None = None  # RNG when the epoch's loader was made
        self._train_end_rng: dict[str, Any] | None = None  # RNG when the training batches ended
        self._meter: ClassificationMeter | None = None
        self._epoch_start = 0.0
        self._resume_partial: dict[str, Any] | None = None
        self._module = self._wrap()

    # ------------------------------------------------------------------ set-up
    def _resolve_loss(self, loss: nn.Module | None) -> nn.Module:
        if loss is None:
            return nn.NLLLoss() if self.log_probs_head else nn.CrossEntropyLoss()
        if self.log_probs_head and isinstance(loss, nn.CrossEntropyLoss):
            warnings.warn(
                "the model ends in LogSoftmax and the loss is CrossEntropyLoss, which applies "
                "log-softmax again (harmless, log-softmax is idempotent, but wasted work); "
                "pass loss=nn.NLLLoss()",
                stacklevel=3,
            )
        return loss

    def _wrap(self) -> nn.Module:
        module: nn.Module = self.model
        if self.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        if self.compile:
            module = torch.compile(module)  # type: ignore[assignment]
        return module

    def refresh_module(self) -> None:
        """Rebuild the DDP/compile wrapper after the set of trainable parameters changed."""
        if self.world_size > 1 or self.compile:
            self._module = self._wrap()

    @property
    def is_global_zero(self) -> bool:
        """Whether this process is rank 0 (the one that writes files and prints)."""
        return self.rank == 0

    def log(self, message: str) -> None:
        """Print ``message`` on rank 0 when ``verbose``."""
        if self.verbose and self.is_global_zero:
            print(message, flush=True)

    def barrier(self) -> None:
        """Wait for every process (no-op without ``torch.distributed``)."""
        if dist.is_available() and dist.is_initialized():
            dist.barrier()

    def _notify(self, hook: str, **kwargs: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, **kwargs)

    def _callback_states(self) -> dict[str, Any]:
        return {
            key: cb.state_dict()
            for key, cb in zip(self._callback_keys(), self.callbacks, strict=True)
        }

    def _callback_keys(self) -> list[str]:
        keys: list[str] = []
        for callback in self.callbacks:
            name = type(callback).__name__
            keys.append(name if name not in keys else f"{name}_{len(keys)}")
        return keys

    def _prepare_loader(self, loader: Any, *, train: bool) -> Any:
        if self.world_size == 1 or not isinstance(loader, DataLoader):
            return loader
        if isinstance(loader.sampler, DistributedSampler):
            return loader
        if loader.batch_size is None:
            raise ValueError(
                "under torchrun the loader needs a DistributedSampler; this one uses a custom "
                "batch_sampler, so build it with DistributedSampler yourself"
            )
        sampler: DistributedSampler[Any] = DistributedSampler(
            loader.dataset, shuffle=train and isinstance(loader.sampler, RandomSampler), seed=0
        )
        extra: dict[str, Any] = (
            {"prefetch_factor": loader.prefetch_factor} if loader.num_workers > 0 else {}
        )
        self.log(
            f"using a DistributedSampler over {self.world_size} processes "
            f"({'train' if train else 'eval'})"
        )
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            worker_init_fn=loader.worker_init_fn,
            persistent_workers=loader.persistent_workers,
            **extra,
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _inputs(self, x: torch.Tensor, *, train: bool, transform: bool = True) -> torch.Tensor:
        x = x.to(self.device, non_blocking=self.device.type == "cuda")
        batch_transform = self.batch_transform
        if transform and batch_transform is not None:
            if isinstance(batch_transform, nn.Module):
                batch_transform.train(train)
            x = batch_transform(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _to_device(
        self, batch: Any, *, train: bool = False, transform: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(
                f"training batches must be (inputs, targets) pairs, got {type(batch).__name__}"
            )
        x, y = batch[0], batch[1]
        non_blocking = self.device.type == "cuda"
        x = self._inputs(x, train=train, transform=transform)
        return x, y.to(self.device, non_blocking=non_blocking), y

    def _check_batch(self, outputs: torch.Tensor, y_host: torch.Tensor, first: bool) -> None:
        if outputs.ndim != 2:
            raise ValueError(
                f"the model must return (batch, classes) scores, got shape {tuple(outputs.shape)}"
            )
        classes = outputs.shape[1]
        if y_host.device.type == "cpu" or first:
            low, high = (int(v) for v in torch.aminmax(y_host))
            if low < 0 or high >= classes:
                bad = high if high >= classes else low
                raise ValueError(
                    f"label {bad} is out of range for a head with {classes} outputs "
                    f"(valid labels 0..{classes - 1}); check num_classes of the head"
                )
        if first and isinstance(self.loss, nn.NLLLoss):
            lse = outputs.detach().float().logsumexp(1)
            if not torch.allclose(lse, torch.zeros_like(lse), atol=1e-3):
                raise ValueError(
                    "NLLLoss needs log-probabilities but the model outputs logits (rows do not "
                    "log-sum-exp to 0); use nn.CrossEntropyLoss() or end the head in LogSoftmax "
                    "(tlkit.heads.mlp(..., log_softmax=True))"
                )

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        *,
        epochs: int,
        resume_from: str | Path | None = None,
        cache_features: bool = False,
        cache_one_view: bool = False,
    ) -> History:
        """Train for ``epochs`` epochs in total (counting epochs done before a resume).

        Args:
            train_loader: Batches of ``(inputs, targets)``.
            val_loader: Optional validation batches, evaluated after every epoch.
            epochs: Total number of epochs.
            resume_from: A checkpoint written by this trainer (``last.pt``, ``interrupted.pt``);
                training continues where it stopped. Build model, optimizer, freeze policy and
                callbacks as in the run that saved it.
            cache_features: Linear-probe fast path: when only the classifier head is trainable,
                run the frozen body once over the data (eval mode) and train the head on the
                cached features.
            cache_one_view: Accept caching when the training data has random augmentation or
                the trainer has a ``batch_transform`` (each image is then seen through one fixed
                random view).

        Returns:
            The :class:`History` (also at ``trainer.history``).

        Raises:
            ValueError: For an empty loader, labels out of range, a loss/head mismatch, a bad
                checkpoint, or ``cache_features`` with trainable body parameters or random
                augmentation (without ``cache_one_view``).
            NonFiniteLossError: When the loss becomes NaN or infinite (epoch and batch named).
            KeyboardInterrupt: Re-raised after writing ``interrupted.pt``.
        """
        check_positive_int("epochs", epochs)
        for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
            if loader is not None and hasattr(loader, "__len__") and len(loader) == 0:  # type: ignore[arg-type]
                raise ValueError(f"{name} is empty: it yields no batch")
        self.max_epochs = epochs
        skip = 0
        if resume_from is not None:
            skip = self._resume(resume_from)
        train_loader = self._prepare_loader(train_loader, train=True)
        if val_loader is not None:
            val_loader = self._prepare_loader(val_loader, train=False)
        head: nn.Module | None = None
        if cache_features:
            head, train_loader, val_loader = self._cache(train_loader, val_loader, cache_one_view)
        self.batches_per_epoch = len(train_loader) if isinstance(train_loader, Sized) else None
        self._summary(cache_features)
        self._notify("on_fit_start")
        try:
            while self.epochs_done < epochs and not self.should_stop:
                epoch = self.epochs_done
                if skip == 0 or self._epoch_rng is None:
                    self._epoch_rng = rng_state()
                sampler = getattr(train_loader, "sampler", None)
                if isinstance(sampler, DistributedSampler):
                    sampler.set_epoch(epoch)
                self._notify("on_epoch_start", epoch=epoch)
                # read after on_epoch_start: GradualUnfreeze may have rebuilt the DDP wrapper
                module = head if head is not None else self._module
                record = self._train_epoch(module, train_loader, epoch, skip)
                skip = 0
                if val_loader is not None:
                    val = self._evaluate(module, val_loader, confusion=False)
                    record.update({f"val_{k}": v for k, v in val.items() if k != "count"})
                self.history.records.append(record)
                self.epochs_done = epoch + 1
                self._batches_done = 0
                self._epoch_rng = self._train_end_rng = None
                self._notify("on_epoch_end", epoch=epoch, metrics=record)
        except KeyboardInterrupt as exc:
            path = self.checkpoint_dir / "interrupted.pt"
            self.save_checkpoint(path)
            self.log(f"interrupted: saved {path}; resume with fit(..., resume_from={str(path)!r})")
            self._notify("on_exception", exception=exc)
            raise
        except BaseException as exc:
            self._notify("on_exception", exception=exc)
            raise
        self._notify("on_fit_end")
        return self.history

    def _summary(self, cached: bool) -> None:
        named = list(self.model.named_parameters())
        trainable = [p for _, p in named if p.requires_grad]
        frozen = [p for _, p in named if not p.requires_grad]
        lines = [
            f"tlkit Trainer: device {self.device}, precision {self.precision}, "
            f"{self.world_size} process{'es' if self.world_size > 1 else ''}"
            + (", cached features" if cached else ""),
            f"  trainable {len(trainable)} tensors ({sum(p.numel() for p in trainable):,} params), "
            f"frozen {len(frozen)} tensors ({sum(p.numel() for p in frozen):,} params)",
            f"  loss {type(self.loss).__name__}, optimizer {type(self.optimizer).__name__}",
        ]
        for i, group in enumerate(self.optimizer.param_groups):
            count = sum(p.numel() for p in group["params"])
            lines.append(
                f"  param group {i}: {len(group['params'])} tensors, {count:,} params, "
                f"lr {group['lr']:.3g}"
            )
        self.log("\n".join(lines))

    def _train_epoch(
        self, module: nn.Module, loader: Iterable[Any], epoch: int, skip: int
    ) -> dict[str, Any]:
        module.train()
        cached = isinstance(loader, _TensorBatches)  # features: batch_transform already applied
        meter = self._meter = ClassificationMeter(top5=False)
        partial, self._resume_partial = self._resume_partial, None
        elapsed = 0.0
        if partial is not None and skip > 0:  # the metrics and time of the batches before
            meter.load_state_dict(partial["meter"], device=self.device)
            elapsed = float(partial["seconds"])
        accum = self.grad_accum_steps
        total = self.batches_per_epoch
        bad = torch.tensor(-1, device=self.device)
        ddp = isinstance(module, DistributedDataParallel)
        self.optimizer.zero_grad(set_to_none=True)
        self._epoch_start = time.perf_counter() - elapsed
        index = -1
        for index, batch in enumerate(loader):
            if index < skip:
                if index == skip - 1 and partial is not None:
                    set_rng_state(partial["rng"])  # as it was after batch `skip - 1`
                continue
            self._notify("on_batch_start", batch=index)
            x, y, y_host = self._to_device(batch, train=True, transform=not cached)
            step_now = (index + 1) % accum == 0 or (total is not None and index + 1 == total)
            sync = contextlib.nullcontext() if step_now or not ddp else cast(Any, module).no_sync()
            with sync:
                with self._autocast():
                    outputs = module(x)
                if index == skip or y_host.device.type == "cpu":
                    self._check_batch(outputs, y_host, first=index == skip)
                with self._autocast():
                    loss = self.loss(outputs, y)
                self.scaler.scale(loss / accum if accum > 1 else loss).backward()
            if step_now:
                self._optimizer_step()
            meter.update(loss.float(), outputs.detach().float(), y)
            bad = torch.where(torch.isfinite(loss.detach()) | (bad >= 0), bad, index)
            self._batches_done = index + 1
            self._notify("on_batch_end", batch=index, optimizer_stepped=step_now)
            if (index + 1) % self.log_every == 0:
                self._raise_if_nonfinite(bad, epoch)
        if index < 0:
            raise ValueError("train_loader yielded no batch this epoch")
        if index < skip - 1:
            raise ValueError(
                f"train_loader yielded {index + 1} batches, but the checkpoint resumed from was "
                f"written after batch {skip} of this epoch; resume with the same data and "
                "batch size"
            )
        self._train_end_rng = rng_state()
        if (
            index + 1
        ) % accum != 0 and total is None:  # iterable loader: flush the last partial step
            self._optimizer_step()
        self._raise_if_nonfinite(bad, epoch)
        metrics = meter.compute()
        seconds = time.perf_counter() - self._epoch_start
        return {
            "epoch": epoch + 1,
            "train_loss": metrics["loss"],
            "train_accuracy": metrics["accuracy"],
            "lr": [float(g["lr"]) for g in self.optimizer.param_groups],
            "seconds": seconds,
            "images_per_sec": metrics["count"] / seconds if seconds > 0 else float("nan"),
        }

    def _optimizer_step(self) -> None:
        if self.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [
                p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None
            ]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.last_step_taken = self.scaler.get_scale() >= scale
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1

    def _raise_if_nonfinite(self, bad: torch.Tensor, epoch: int) -> None:
        first = int(bad.item())
        if first >= 0:
            raise NonFiniteLossError(
                f"the loss became NaN or infinite at epoch {epoch + 1}, batch {first + 1}; "
                "training stopped and no checkpoint was written after it (lower the learning "
                "rate, clip gradients with clip_grad_norm=, or check the inputs)"
            )

    def running_metrics(self) -> dict[str, float]:
        """Loss, accuracy and images/s of the epoch so far on this process (one host sync)."""
        if self._meter is None:
            return {}
        out = self._meter.running()
        elapsed = time.perf_counter() - self._epoch_start
        if elapsed > 0:
            out["images_per_sec"] = self._meter.count / elapsed
        return out

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, loader: Iterable[Any]) -> dict[str, Any]:
        """Loss, accuracy, top-5 accuracy (>= 5 classes), per-class accuracy, confusion matrix.

        Args:
            loader: Batches of ``(inputs, targets)``.

        Returns:
            A dict with ``loss``, ``accuracy``, ``top5_accuracy`` (5+ classes),
            ``per_class_accuracy`` (a list; NaN for absent classes), ``confusion_matrix``
            (rows: true class, columns: predicted) and ``count``.

        Raises:
            ValueError: For an empty loader or labels out of range.
        """
        if hasattr(loader, "__len__") and len(loader) == 0:  # type: ignore[arg-type]
            raise ValueError("the loader is empty: it yields no batch")
        return self._evaluate(
            self._module, self._prepare_loader(loader, train=False), confusion=True
        )

    @torch.no_grad()
    def _evaluate(
        self, module: nn.Module, loader: Iterable[Any], *, confusion: bool
    ) -> dict[str, Any]:
        module.eval()
        cached = isinstance(loader, _TensorBatches)
        meter = ClassificationMeter(confusion=confusion)
        for index, batch in enumerate(loader):
            x, y, y_host = self._to_device(batch, transform=not cached)
            with self._autocast():
                outputs = module(x)
            self._check_batch(outputs, y_host, first=index == 0)
            with self._autocast():
                loss = self.loss(outputs, y)
            meter.update(loss.float(), outputs.float(), y)
        return meter.compute()

    @torch.no_grad()
    def predict(self, data: Iterable[Any] | torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities for a tensor of inputs or a loader (targets, if any, ignored).

        Works whether the model ends in logits or in ``LogSoftmax``.

        Returns:
            A CPU tensor of shape ``(N, C)`` whose rows sum to 1.
        """
        self._module.eval()
        if isinstance(data, torch.Tensor):
            batches: Iterable[Any] = data.split(batch_size)
        else:
            batches = data
        probs = []
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = self._inputs(x, train=False)
            with self._autocast():
                out = self._module(x).float()
            probs.append((out.exp() if self.outputs_log_probs else out.softmax(1)).cpu())
        return torch.cat(probs)

    # ------------------------------------------------------------------ feature cache
    def _cache(
        self, train_loader: Any, val_loader: Any, one_view: bool
    ) -> tuple[nn.Module, _TensorBatches, _TensorBatches | None]:
        if self.world_size > 1:
            raise ValueError(
                "cache_features is not supported under torchrun; train the head on one process"
            )
        path, _ = _find_classifier(self.model)
        head = self.model.get_submodule(path)
        outside = [
            n
            for n, p in self.model.named_parameters()
            if p.requires_grad and not n.startswith(path + ".")
        ]
        if outside:
            raise ValueError(
                f"cache_features needs only the head {path!r} trainable, but {len(outside)} other "
                f"tensors train (first: {', '.join(outside[:3])}); freeze them with "
                f"tlkit.FreezePolicy(train_only=[{path!r}])"
            )
        dataset = getattr(train_loader, "dataset", None)
        if not one_view and (
            self.batch_transform is not None
            or (dataset is not None and _has_random_transform(dataset))
        ):
            where = "batch_transform" if self.batch_transform is not None else "training transform"
            raise ValueError(
                f"cache_features with a random {where} would train on one random view "
                "of each image forever; use a deterministic transform for the cached run, or pass "
                "cache_one_view=True to accept caching one view"
            )
        _set_module(self.model, path, nn.Identity())
        try:
            train = self._features(
                train_loader,
                shuffle=True,
                batch_size=getattr(train_loader, "batch_size", None),
                train=True,
            )
            val = (
                self._features(val_loader, shuffle=False, batch_size=None, train=False)
                if val_loader is not None
                else None
            )
        finally:
            _set_module(self.model, path, head)
        self.log(
            f"cached {len(train.y)} training features of size {train.x.shape[1]} "
            "from the frozen body"
        )
        return head, train, val

    @torch.no_grad()
    def _features(
        self, loader: Any, *, shuffle: bool, batch_size: int | None, train: bool
    ) -> _TensorBatches:
        self.model.eval()
        xs, ys = [], []
        size = 0
        for batch in loader:
            x, y, _ = self._to_device(batch, train=train)
            with self._autocast():
                xs.append(self.model(x).float().flatten(1))
            ys.append(y)
            size = size or len(y)
        if not xs:
            raise ValueError("the loader is empty: it yields no batch")
        return _TensorBatches(torch.cat(xs), torch.cat(ys), batch_size or size, shuffle=shuffle)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs: model, optimizer, scaler, counters, callbacks, RNG, history.

        Between epochs, the RNG state is the current one. Inside an epoch (a checkpoint written
        by a callback's ``on_batch_end``, or on Ctrl-C) it is the state the epoch started with,
        plus ``batches_done``, the running metrics and the RNG state after the last batch done:
        a resume replays the epoch's data order, skips the batches done and continues exactly
        where the run stopped.

        Examples:
            >>> sorted(Trainer(torch.nn.Linear(2, 2), device="cpu").state_dict())[:4]
            ['batches_done', 'callbacks', 'epochs_done', 'global_step']
        """
        mid_epoch = self._epoch_rng is not None
        batches_done = self._batches_done if mid_epoch else 0
        partial = None
        if batches_done > 0 and self._meter is not None:
            after = self._train_end_rng if self._train_end_rng is not None else rng_state()
            partial = {
                "rng": after,
                "meter": self._meter.state_dict(),
                "seconds": time.perf_counter() - self._epoch_start,
            }
        return {
            "tlkit_checkpoint": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epochs_done": self.epochs_done,
            "batches_done": batches_done,
            "partial_epoch": partial,
            "global_step": self.global_step,
            "should_stop": self.should_stop,
            "callbacks": self._callback_states(),
            "rng": self._epoch_rng if mid_epoch else rng_state(),
            "history": self.history.records,
        }

    def save_checkpoint(self, path: str | Path) -> None:
        """Write :meth:`state_dict` to ``path`` atomically (rank 0 only), between epochs or
        inside one (see :meth:`state_dict`)."""
        if self.is_global_zero:
            atomic_save(self.state_dict(), path)
        self.barrier()

    @staticmethod
    def load_checkpoint(path: str | Path) -> dict[str, Any]:
        """Read a tlkit checkpoint with ``torch.load(weights_only=True)``, validating it.

        Raises:
            FileNotFoundError: If ``path`` does not exist.
            ValueError: If the file is truncated, holds pickled objects, or is not a tlkit
                checkpoint.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"cannot read checkpoint {str(path)!r} with torch.load(weights_only=True): it is "
                f"truncated, not a PyTorch file, or holds pickled objects ({exc})"
            ) from exc
        if not isinstance(state, dict) or state.get("tlkit_checkpoint") != CHECKPOINT_FORMAT:
            keys = list(state)[:5] if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"{str(path)!r} is not a tlkit training checkpoint (format {CHECKPOINT_FORMAT}); "
                f"found {keys}. For bare weights use tlkit.load_weights(model, path)"
            )
        return state

    def _resume(self, path: str | Path) -> int:
        state = self.load_checkpoint(path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {str(path)!r} does not fit this model: {exc}") from exc
        saved = state["callbacks"]
        for key, callback in zip(self._callback_keys(), self.callbacks, strict=True):
            if key in saved:
                callback.on_load_checkpoint(self, state=saved[key])
        groups = len(state["optimizer"]["param_groups"])
        if groups != len(self.optimizer.param_groups):
            raise ValueError(
                f"the optimizer has {len(self.optimizer.param_groups)} parameter groups but the "
                f"checkpoint has {groups}; build the same optimizer and callbacks as the run "
                "that saved it"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.refresh_module()
        self.epochs_done = state["epochs_done"]
        self.global_step = state["global_step"]
        self.should_stop = state["should_stop"]
        self.history = History(list(state["history"]))
        self._epoch_rng = state["rng"]
        self._resume_partial = state.get("partial_epoch")
        set_rng_state(state["rng"])
        self.log(
            f"resumed from {path}: {self.epochs_done} epochs done"
            + (f", {state['batches_done']} batches into the next" if state["batches_done"] else "")
        )
        return int(state["batches_done"])
