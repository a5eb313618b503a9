"""A generic, resumable training loop for fine-tuning classifiers on plain PyTorch objects.

[tlkit.Trainer][] takes any ``nn.Module``, ``DataLoader``s, a ``torch.optim`` optimizer and
callbacks. The loop lives here; distributed set-up is in [tlkit.distributed][], checkpoint files
and random state in [tlkit.checkpoint][], the cached-feature probe in [tlkit.features][].
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from . import _steps, distributed
from ._utils import atomic_save, check_positive_int
from .callbacks import Callback
from .checkpoint import FORMAT, EpochPosition, read_checkpoint, rng_state, set_rng_state
from .features import FeatureBatches, cache_head_inputs
from .history import History
from .metrics import ClassificationMeter
from .progress import ProgressBar

__all__ = ["NonFiniteLossError", "Trainer"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Step = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """The training loss or the weights became NaN or infinite; the message says where.

    Examples:
        >>> issubclass(NonFiniteLossError, FloatingPointError)
        True
    """


class Trainer:
    """Train and evaluate a classifier: plain PyTorch in, history and checkpoints out.

    Args:
        model: Any ``nn.Module`` returning ``(N, C)`` logits or log-probabilities.
        optimizer: A ``torch.optim`` optimizer; default ``AdamW(lr=1e-3)`` over the parameters
            that require gradients.
        loss: The loss, reducing to a scalar; default ``NLLLoss`` when the model ends in
            ``LogSoftmax``, else ``CrossEntropyLoss``.
        device: ``"auto"`` (CUDA, else MPS, else CPU), or any ``torch.device`` spec.
        precision: ``"auto"`` (bf16 autocast on CUDA where supported, else fp32), ``"fp32"``,
            ``"bf16"`` or ``"fp16"`` (with a gradient scaler).
        callbacks: [tlkit.Callback][] instances; a quiet-when-not-a-terminal
            [tlkit.ProgressBar][] is added unless one is given.
        grad_accum_steps: Batches per optimizer step.
        clip_grad_norm: Clip the gradient norm to this positive value before each step.
        channels_last: Use the channels-last memory format for model and inputs.
        batch_transform: A callable applied to every input batch once it is on the device, e.g.
            [tlkit.augment.BatchAugment][]. An ``nn.Module`` is moved to the device and put in
            train mode for training batches, in eval mode otherwise.
        compile: Wrap the model with ``torch.compile``.
        checkpoint_dir: Default folder of [tlkit.ModelCheckpoint][] and of the
            ``interrupted.pt`` written on Ctrl-C.
        log_every: Batches between loss checks (one host sync each): a NaN or infinite loss
            stops training within this many batches, naming the first bad batch. Every
            checkpoint write checks first, so no checkpoint is written after a bad loss.
        verbose: Print a summary at the start of ``fit`` and callback messages (rank 0).

    Subclasses can override [tlkit.Trainer.train_step][] and [tlkit.Trainer.eval_step][] (a
    model with several inputs, a custom loss): each maps a batch to ``(loss, outputs, labels)``.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or an argument has the wrong type.
        ValueError: For a bad ``precision``, ``grad_accum_steps``, ``clip_grad_norm`` or
            ``log_every``, a loss with ``reduction='none'``, or nothing to train.

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
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        check_positive_int("grad_accum_steps", grad_accum_steps)
        check_positive_int("log_every", log_every)
        if clip_grad_norm is not None and not (
            isinstance(clip_grad_norm, (int, float)) and 0 < clip_grad_norm < math.inf
        ):
            raise ValueError(f"clip_grad_norm must be a positive number or None, got {clip_grad_norm!r}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        if batch_transform is not None and not callable(batch_transform):
            raise TypeError(f"batch_transform must be callable, got {type(batch_transform).__name__}")
        bad = [c for c in callbacks if not isinstance(c, Callback)]
        if bad:
            raise TypeError(f"callbacks must be tlkit.Callback instances, got {bad[0]!r}")
        distributed.init_process_group()
        self.rank, self.local_rank, self.world_size = distributed.world()
        self.device = _steps.resolve_device(device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.precision = _steps.resolve_precision(precision, self.device)
        self.autocast = _steps.autocast_factory(self.precision, self.device)
        self.model = model.to(self.device)
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if isinstance(batch_transform, nn.Module):
            batch_transform.to(self.device)
        self.batch_transform = batch_transform
        log_probs_head = _steps.ends_in_log_softmax(model)
        if optimizer is None:
            params = [p for p in model.parameters() if p.requires_grad]
            if not params:
                raise ValueError(
                    "the model has no trainable parameters; unfreeze some or pass an optimizer"
                )
            optimizer = torch.optim.AdamW(params, lr=1e-3)
        self.optimizer = optimizer
        if loss is None:
            loss = nn.NLLLoss() if log_probs_head else nn.CrossEntropyLoss()
        elif log_probs_head and isinstance(loss, nn.CrossEntropyLoss):
            import warnings

            warnings.warn(
                "the model ends in LogSoftmax and the loss is CrossEntropyLoss, which applies "
                "log-softmax again (harmless, log-softmax is idempotent, but wasted work); "
                "pass loss=nn.NLLLoss()",
                stacklevel=2,
            )
        _steps.check_loss_module(loss)
        self.loss = loss
        self.outputs_log_probs = log_probs_head or isinstance(loss, nn.NLLLoss)
        given = list(callbacks)
        if not any(isinstance(c, ProgressBar) for c in given):
            given.append(ProgressBar())
        self.callbacks = sorted(given, key=lambda c: c.order)
        self.grad_accum_steps = grad_accum_steps
        self.clip_grad_norm = clip_grad_norm
        self.compile = compile
        self.checkpoint_dir = Path(checkpoint_dir)
        self.log_every = log_every
        self.verbose = verbose
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.history = History()
        self.epochs_done = self.global_step = 0
        self.should_stop = False
        self.last_step_taken = True
        self.max_epochs = 0
        self.batches_per_epoch: int | None = None
        self.position = EpochPosition()
        self._meter: ClassificationMeter | None = None
        self._epoch_start = 0.0
        self._unchecked: list[torch.Tensor] = []  # training losses not yet checked for NaN
        self._checked = 0  # batches of this epoch whose losses were checked
        self._check_next = False  # the next step checks outputs, labels and loss
        self._classes = 0  # outputs per sample, known after the first batch
        self._module = distributed.wrap_model(self.model, self.device, compile=compile)

    # ------------------------------------------------------------------ small public helpers
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
        distributed.barrier()

    def refresh_module(self) -> None:
        """Rebuild the DDP/compile wrapper after the set of trainable parameters changed."""
        if self.world_size > 1 or self.compile:
            self._module = distributed.wrap_model(self.model, self.device, compile=self.compile)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a parameter group to the optimizer, tell the callbacks, rebuild the DDP wrapper.

        [tlkit.LRScheduler][] extends its scheduler to the new group in its
        ``on_param_group_added`` hook.
        """
        self.optimizer.add_param_group(group)
        self._notify("on_param_group_added", group=self.optimizer.param_groups[-1])
        self.refresh_module()

    def running_metrics(self) -> dict[str, float]:
        """Loss, accuracy and images/s of the epoch so far on this process (one host sync)."""
        if self._meter is None:
            return {}
        out = self._meter.running()
        elapsed = time.perf_counter() - self._epoch_start
        if elapsed > 0:
            out["images_per_sec"] = self._meter.count / elapsed
        return out

    def _notify(self, hook: str, **kwargs: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, **kwargs)

    # ------------------------------------------------------------------ steps
    def inputs(self, x: torch.Tensor, *, train: bool) -> torch.Tensor:
        """Move an input batch to the device and apply ``batch_transform`` and channels-last."""
        x = x.to(self.device, non_blocking=self.device.type == "cuda")
        transform = self.batch_transform
        if transform is not None:
            if isinstance(transform, nn.Module):
                transform.train(train)
            x = transform(x)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """Class indices on the device (int32, integral float, ``(N, 1)``, one-hot converted).

        Labels still on the CPU are checked against the head's class count (once known).
        """
        y = _steps.to_labels(y)
        if self._classes and y.device.type == "cpu":
            _steps.check_label_range(y, self._classes)
        return y.to(self.device, non_blocking=self.device.type == "cuda")

    def train_step(self, batch: Any) -> Step:
        """Forward one training batch: ``(loss, outputs, labels)``; the loop does the rest."""
        x, y = self.inputs(batch[0], train=True), self.labels(batch[1])
        with self.autocast():
            outputs = self._module(x)
            if self._check_next:
                self._check_first(outputs, y)
            return self.loss(outputs, y), outputs, y

    def eval_step(self, batch: Any) -> Step:
        """Forward one evaluation batch (in ``no_grad`` and eval mode): ``(loss, outputs, labels)``."""
        x, y = self.inputs(batch[0], train=False), self.labels(batch[1])
        with self.autocast():
            outputs = self._module(x)
            if self._check_next:
                self._check_first(outputs, y)
            return self.loss(outputs, y), outputs, y

    def _check_batch(self, batch: Any) -> None:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"batches must be (inputs, targets) pairs, got {type(batch).__name__}")
        _steps.check_inputs(batch[0])

    def _check_first(self, outputs: Any, y: torch.Tensor) -> None:
        """The first batch's checks, between forward and loss (before any update)."""
        self._check_next = False
        _steps.check_outputs(outputs)
        self._classes = outputs.shape[1]
        _steps.check_label_range(y, self._classes)
        with torch.no_grad():
            loss = self.loss(outputs, y)
        _steps.check_first_loss(loss, outputs, isinstance(self.loss, nn.NLLLoss))

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        train_loader: Iterable[Any] | Dataset[Any],
        val_loader: Iterable[Any] | Dataset[Any] | None = None,
        *,
        epochs: int,
        batch_size: int | None = None,
        resume_from: str | Path | None = None,
        cache_features: bool = False,
        cache_one_view: bool = False,
    ) -> History:
        """Train for ``epochs`` epochs in total (counting epochs done before a resume).

        Everything checkable is checked before the first batch trains: arguments, callbacks
        (monitored metrics, checkpoint folders), the optimizer, and the first batch's inputs,
        outputs, labels and loss.

        Args:
            train_loader: Batches of ``(inputs, targets)``: a ``DataLoader`` (kept as given) or
                any iterable of batches; a map-style ``Dataset`` is wrapped in a shuffling
                ``DataLoader`` of ``batch_size``.
            val_loader: Optional validation batches (or a ``Dataset``), evaluated every epoch.
            epochs: Total number of epochs.
            batch_size: Batch size for a ``Dataset`` (default 32); an error with a loader.
            resume_from: A checkpoint written by this trainer (``last.pt``, ``interrupted.pt``);
                training continues exactly where it stopped. Build model, optimizer, freeze
                policy, callbacks and loaders (generator included) as in the run that saved it.
            cache_features: Linear-probe fast path: when only the classifier head is trainable,
                run the frozen body once (see [tlkit.features.cache_head_inputs][]) and train
                the head on the cached features.
            cache_one_view: Accept caching when the training data is randomly augmented.

        Returns:
            The [tlkit.History][] (also at ``trainer.history``).

        Raises:
            TypeError: For something that is not a loader or dataset, non-tensor inputs
                (e.g. PIL images), or a model that does not return a tensor.
            ValueError: For an empty loader, bad labels, a loss/head mismatch, an optimizer
                with nothing to train, a bad checkpoint, or ``cache_features`` with a trainable
                body or random augmentation (without ``cache_one_view``).
            KeyError: For a monitored metric the epochs will not have.
            NonFiniteLossError: When the loss becomes NaN or infinite (epoch and batch named).
            KeyboardInterrupt: Re-raised after writing ``interrupted.pt``.
        """
        check_positive_int("epochs", epochs)
        train_loader = self._as_loader("train_loader", train_loader, batch_size, shuffle=True)
        if val_loader is not None:
            val_loader = self._as_loader("val_loader", val_loader, batch_size, shuffle=False)
        keys = ["epoch", "train_loss", "train_accuracy", "lr", "seconds", "images_per_sec"]
        if val_loader is not None:
            keys += ["val_loss", "val_accuracy", "val_top5_accuracy"]
        self._notify("on_fit_check", metrics=tuple(keys))
        self.max_epochs = epochs
        skip = self.resume(resume_from, loader=train_loader) if resume_from is not None else 0
        train_loader = distributed.distributed_loader(train_loader, train=True)
        val_loader = distributed.distributed_loader(val_loader, train=False)
        saved = self._module, self.batch_transform
        if cache_features:
            if self.world_size > 1:
                raise ValueError("cache_features is not supported under torchrun; use one process")
            head, train_loader, val_loader = cache_head_inputs(
                self.model, train_loader, val_loader, one_view=cache_one_view,
                batch_transform=self.batch_transform, device=self.device, autocast=self.autocast,
            )  # fmt: skip
            self._module, self.batch_transform = head, None  # features are transformed already
            self.log(f"cached {len(train_loader.y)} training features of size {train_loader.x.shape[1]}")
        self.batches_per_epoch = len(train_loader) if isinstance(train_loader, Sized) else None
        self._summary(cache_features)
        self._notify("on_fit_start")
        first = True
        try:
            while self.epochs_done < epochs and not self.should_stop:
                self._run_epoch(train_loader, val_loader, skip, first=first)
                skip, first = 0, False
        except KeyboardInterrupt as exc:
            path = self.checkpoint_dir / "interrupted.pt"
            self.save_checkpoint(path)
            self.log(f"interrupted: saved {path}; resume with fit(..., resume_from={str(path)!r})")
            self._notify("on_exception", exception=exc)
            raise
        except BaseException as exc:
            self._notify("on_exception", exception=exc)
            raise
        finally:
            if cache_features:
                self._module, self.batch_transform = saved
        self._notify("on_fit_end")
        return self.history

    def _as_loader(self, name: str, data: Any, batch_size: int | None, shuffle: bool) -> Any:
        if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
            if not hasattr(data, "__len__"):
                raise TypeError(f"{name} is a Dataset without __len__; wrap it in a DataLoader")
            size = batch_size if batch_size is not None else 32
            check_positive_int("batch_size", size)
            data = DataLoader(data, batch_size=size, shuffle=shuffle)
        elif batch_size is not None:
            raise ValueError(
                f"batch_size applies to a Dataset; {name} is a {type(data).__name__}, whose "
                "batches are already made"
            )
        if data is None or isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(
            data, Iterable
        ):
            raise TypeError(
                f"{name} must be a DataLoader (or an iterable of (inputs, targets) batches, or a "
                f"Dataset), got {type(data).__name__}"
            )
        if isinstance(data, Sized) and len(data) == 0:
            raise ValueError(f"{name} is empty: it yields no batch")
        dataset = getattr(data, "dataset", None)
        collate = getattr(data, "collate_fn", None)
        if isinstance(dataset, Dataset) and getattr(collate, "__name__", "") == "default_collate":
            with contextlib.suppress(IndexError, KeyError, TypeError, NotImplementedError):
                state = rng_state()  # reading an item must not move the random streams
                try:
                    item = dataset[0]
                finally:
                    set_rng_state(state)
                if isinstance(item, (tuple, list)) and item:
                    _steps.check_inputs(item[0], collated=False)
        return data

    def _check_optimizer(self) -> None:
        held = [p for g in self.optimizer.param_groups for p in g["params"]]
        if not any(p.requires_grad for p in held):
            raise ValueError(
                f"the optimizer holds {len(held)} tensors and none requires grad (all frozen), "
                "so training would change nothing; build it over "
                "[p for p in model.parameters() if p.requires_grad] after freezing"
            )
        mine = {id(p) for p in self.model.parameters()}
        if not any(id(p) in mine for p in held):
            raise ValueError("the optimizer holds none of the model's parameters; build it over "
                             "this model's parameters")  # fmt: skip

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

    def _run_epoch(self, train_loader: Any, val_loader: Any, skip: int, *, first: bool) -> None:
        epoch = self.epochs_done
        if skip == 0 or not self.position.inside_epoch:
            self.position = EpochPosition(start_rng=rng_state(train_loader))
        sampler = getattr(train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        self._notify("on_epoch_start", epoch=epoch)
        if first:  # after on_epoch_start, which may unfreeze (GradualUnfreeze)
            self._check_optimizer()
        record = self._train_epoch(train_loader, epoch, skip, check=first)
        if val_loader is not None:
            val = self._evaluate(val_loader, confusion=False)
            record.update({f"val_{k}": v for k, v in val.items() if k != "count"})
        self.history.records.append(record)
        self.epochs_done = epoch + 1
        self.position = EpochPosition()
        self._notify("on_epoch_end", epoch=epoch, metrics=record)

    def _train_epoch(
        self, loader: Iterable[Any], epoch: int, skip: int, *, check: bool
    ) -> dict[str, Any]:
        module = self._module  # read after on_epoch_start: GradualUnfreeze may rebuild it
        module.train()
        meter = self._meter = ClassificationMeter(top5=False)
        position = self.position
        if position.resume_meter is not None and skip > 0:  # metrics of the batches before
            meter.load_state_dict(position.resume_meter, device=self.device)
        self._epoch_start = time.perf_counter() - (position.resume_seconds if skip else 0.0)
        self._unchecked, self._checked = [], skip
        accum, total, log_every = self.grad_accum_steps, self.batches_per_epoch, self.log_every
        no_sync = getattr(module, "no_sync", None)
        self.optimizer.zero_grad(set_to_none=True)
        index = -1
        for index, batch in enumerate(loader):
            if index < skip:
                if index == skip - 1 and position.resume_rng is not None:
                    set_rng_state(position.resume_rng)  # as it was after batch `skip - 1`
                continue
            if check and index == skip:  # the first batch of this fit: check it all
                self._check_batch(batch)
                self._check_next, self._classes = True, 0
            self._notify("on_batch_start", batch=index)
            step_now = (index + 1) % accum == 0 or index + 1 == total
            if step_now or no_sync is None:
                loss, outputs, y = self.train_step(batch)
                self.scaler.scale(loss / accum if accum > 1 else loss).backward()
            else:
                with no_sync():
                    loss, outputs, y = self.train_step(batch)
                    self.scaler.scale(loss / accum).backward()
            if step_now:
                self._optimizer_step()
            meter.update(loss, outputs.detach(), y)
            self._unchecked.append(loss.detach())
            position.batches_done = index + 1
            self._notify("on_batch_end", batch=index, optimizer_stepped=step_now)
            if (index + 1) % log_every == 0:
                self.check_finite()
        if index < 0 or index < skip - 1:
            what = "no batch" if index < 0 else f"{index + 1} batches"
            raise ValueError(
                f"train_loader yielded {what} this epoch"
                + (f", but the checkpoint resumed from was written after batch {skip}; resume "
                   "with the same data and batch size" if skip else "")
            )  # fmt: skip
        position.end_rng = rng_state()
        if (index + 1) % accum != 0 and total is None:  # iterable loader: flush the last step
            self._optimizer_step()
        self.check_finite()
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

    def check_finite(self) -> None:
        """Raise [tlkit.NonFiniteLossError][] if a training loss since the last check was NaN
        or infinite (one host sync; called every ``log_every`` batches and before every save)."""
        pending, start = self._unchecked, self._checked
        if not pending:
            return
        self._unchecked, self._checked = [], start + len(pending)
        finite = torch.isfinite(torch.stack(pending).float())
        if bool(finite.all()):
            return
        first = start + int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(
            f"the loss became NaN or infinite at epoch {self.epochs_done + 1}, batch {first + 1}; "
            "training stopped and no checkpoint was written after it (lower the learning "
            "rate, clip gradients with clip_grad_norm=, or check the inputs)"
        )

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, loader: Iterable[Any] | Dataset[Any], *, batch_size: int | None = None) -> dict[str, Any]:
        """Loss, accuracy, top-5 accuracy (>= 5 classes), per-class accuracy, confusion matrix.

        Args:
            loader: Batches of ``(inputs, targets)``, or a ``Dataset`` (batched by
                ``batch_size``, default 32).

        Returns:
            A dict with ``loss``, ``accuracy``, ``top5_accuracy`` (5+ classes),
            ``per_class_accuracy`` (a list; NaN for absent classes), ``confusion_matrix``
            (rows: true class, columns: predicted) and ``count``.

        Raises:
            ValueError: For an empty loader or labels out of range.
        """
        loader = self._as_loader("loader", loader, batch_size, shuffle=False)
        loader = distributed.distributed_loader(loader, train=False)
        return self._evaluate(loader, confusion=True, check=True)

    @torch.no_grad()
    def _evaluate(
        self, loader: Iterable[Any], *, confusion: bool, check: bool = False
    ) -> dict[str, Any]:
        meter = ClassificationMeter(confusion=confusion)
        cpu_labels = self.device.type == "cpu"
        self._module.eval()
        for index, batch in enumerate(loader):
            if check and index == 0:
                self._check_batch(batch)
                self._check_next, self._classes = True, 0
            loss, outputs, y = self.eval_step(batch)
            meter.update(loss.float(), outputs.float(), y)
        return meter.compute()

    @torch.no_grad()
    def predict(self, data: Iterable[Any] | torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities for a tensor of inputs or a loader (targets, if any, ignored).

        Works whether the model ends in logits or in ``LogSoftmax``.

        Returns:
            A CPU tensor of shape ``(N, C)`` whose rows sum to 1.

        Raises:
            ValueError: For ``batch_size < 1`` or no input at all.
        """
        check_positive_int("batch_size", batch_size)
        self._module.eval()
        batches: Iterable[Any] = data.split(batch_size) if isinstance(data, torch.Tensor) else data
        probs = []
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            _steps.check_inputs(x)
            with self.autocast():
                out = _steps.check_outputs(self._module(self.inputs(x, train=False))).float()
            probs.append((out.exp() if self.outputs_log_probs else out.softmax(1)).cpu())
        if not probs:
            raise ValueError("predict got no input: the data is empty")
        return torch.cat(probs)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs: model, optimizer, scaler, counters, callbacks, RNG, history.

        Between epochs, the random state is the current one. Inside an epoch (a checkpoint
        written by a callback's ``on_batch_end``, or on Ctrl-C) it is the state the epoch started
        with, plus ``batches_done``, the running metrics and the random state after the last
        batch done: a resume replays the epoch's data order, skips the batches done and
        continues exactly where the run stopped.

        Examples:
            >>> sorted(Trainer(torch.nn.Linear(2, 2), device="cpu").state_dict())[:4]
            ['batches_done', 'callbacks', 'epochs_done', 'global_step']
        """
        position = self.position
        batches_done = position.batches_done if position.inside_epoch else 0
        partial = None
        if batches_done > 0 and self._meter is not None:
            partial = {
                "rng": position.end_rng if position.end_rng is not None else rng_state(),
                "meter": self._meter.state_dict(),
                "seconds": time.perf_counter() - self._epoch_start,
            }
        return {
            "tlkit_checkpoint": FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_class": type(self.optimizer).__name__,
            "scaler": self.scaler.state_dict(),
            "epochs_done": self.epochs_done,
            "batches_done": batches_done,
            "partial_epoch": partial,
            "global_step": self.global_step,
            "should_stop": self.should_stop,
            "callbacks": {key: cb.state_dict() for key, cb in self._callback_items()},
            "rng": position.start_rng if position.inside_epoch else rng_state(),
            "history": self.history.records,
        }

    def save_checkpoint(self, path: str | Path) -> None:
        """Write [tlkit.Trainer.state_dict][] to ``path`` atomically (rank 0 only).

        Raises:
            NonFiniteLossError: Instead of writing, when a loss since the last check or a
                weight is NaN or infinite: a checkpoint never holds a diverged run.
        """
        self.check_finite()
        bad = [n for n, t in self.model.state_dict().items()
               if t.is_floating_point() and not bool(torch.isfinite(t).all())]  # fmt: skip
        if bad:
            raise NonFiniteLossError(
                f"{len(bad)} tensors of the model hold NaN or infinite values (first: {bad[0]}); "
                f"{str(path)!r} was not written, so the last good checkpoint is kept"
            )
        if self.is_global_zero:
            atomic_save(self.state_dict(), path)
        self.barrier()

    def _callback_items(self) -> list[tuple[str, Callback]]:
        items: list[tuple[str, Callback]] = []
        for callback in self.callbacks:
            name = type(callback).__name__
            items.append((name if all(k != name for k, _ in items) else f"{name}_{len(items)}", callback))
        return items

    def resume(self, path: str | Path, *, loader: Any = None) -> int:
        """Restore the state saved in ``path`` (see [tlkit.checkpoint.read_checkpoint][]).

        Args:
            path: A checkpoint written by [tlkit.Trainer.save_checkpoint][].
            loader: The training loader, whose own generators are restored too.

        Returns:
            The batches already done in the epoch the checkpoint was written in.
        """
        state = read_checkpoint(path)
        self.load_state_dict(state, source=str(path))
        set_rng_state(state["rng"], loader)
        done = int(state["batches_done"])
        self.log(f"resumed from {path}: {self.epochs_done} epochs done"
                 + (f", {done} batches into the next" if done else ""))  # fmt: skip
        return done

    def load_state_dict(self, state: dict[str, Any], *, source: str = "the checkpoint") -> None:
        """Load what [tlkit.Trainer.state_dict][] returned (all but the random state)."""
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"{source} does not fit this model: {exc}") from exc
        saved = state["callbacks"]
        for key, callback in self._callback_items():
            if key in saved:
                callback.load_state_dict(saved[key])
        self._notify("on_load_checkpoint")  # e.g. GradualUnfreeze re-adds its groups
        self._load_optimizer(state, source)
        self.scaler.load_state_dict(state["scaler"])
        self.refresh_module()
        self.epochs_done, self.global_step = state["epochs_done"], state["global_step"]
        self.should_stop = state["should_stop"]
        self.history = History(list(state["history"]))
        partial = state.get("partial_epoch") or {}
        self.position = EpochPosition(
            start_rng=state["rng"] if state["batches_done"] else None,
            resume_rng=partial.get("rng"),
            resume_meter=partial.get("meter"),
            resume_seconds=float(partial.get("seconds", 0.0)),
        )

    def _load_optimizer(self, state: dict[str, Any], source: str) -> None:
        mine, theirs = type(self.optimizer).__name__, state.get("optimizer_class")
        saved_groups = state["optimizer"]["param_groups"]
        keys = set(saved_groups[0]) - {"params"} if saved_groups else set()
        own_keys = set(self.optimizer.param_groups[0]) - {"params"}
        if (theirs is not None and theirs != mine) or (theirs is None and keys - own_keys):
            raise ValueError(
                f"{source} holds the state of a {theirs or 'different'} optimizer but this "
                f"trainer's is {mine}; build the same optimizer as the run that saved it"
            )
        if len(saved_groups) != len(self.optimizer.param_groups):
            raise ValueError(
                f"the optimizer has {len(self.optimizer.param_groups)} parameter groups but "
                f"{source} has {len(saved_groups)}; build the same optimizer and callbacks as "
                "the run that saved it"
            )
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{source}'s optimizer state does not fit this optimizer: {exc}") from exc
