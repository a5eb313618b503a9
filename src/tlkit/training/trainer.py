"""A generic, resumable training loop for fine-tuning classifiers on plain PyTorch objects.

[tlkit.Trainer][] takes any ``nn.Module``, ``DataLoader``s, a ``torch.optim`` optimizer and
callbacks. The loop lives here; distributed set-up is in [tlkit.distributed][], checkpoint files
and random state in [tlkit.training.checkpoint][], the cached-feature probe in [tlkit.features][].

One concept: the loop a user reads top to bottom (its steps, fit, epochs and evaluation); the
argument and batch checks are in ``tlkit.training.steps``, checkpoint files in
[tlkit.training.checkpoint][], and what happens around the loop in [tlkit.callbacks][].
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from .. import devices, distributed
from .._utils import check_positive_int
from ..callbacks import Callback, ProgressBar
from ..features import cache_head_inputs
from ..history import History
from ..metrics import ClassificationMeter
from ..tta import flip_average
from . import steps as _steps
from .checkpoint import CheckpointConnector, EpochPosition, rng_state

__all__ = ["Trainer"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Step = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Trainer:
    """Train and evaluate a classifier: plain PyTorch in, history and checkpoints out.

    Args:
        model: Any ``nn.Module`` returning ``(N, C)`` logits or log-probabilities.
        optimizer: A ``torch.optim`` optimizer; default ``AdamW(lr=1e-3)`` over the trainable
            parameters.
        loss: A loss reducing to a scalar; default ``NLLLoss`` after a ``LogSoftmax``, else
            ``CrossEntropyLoss``.
        device: ``"auto"`` (CUDA, else MPS, else CPU), or any ``torch.device`` spec.
        precision: ``"auto"`` (bf16 on CUDA where supported, else fp32), ``"fp32"``, ``"bf16"``
            or ``"fp16"`` (with a gradient scaler).
        callbacks: [tlkit.Callback][]s; a [tlkit.ProgressBar][] (quiet when stderr is not a
            terminal) is added unless one is given.
        grad_accum_steps: Batches per optimizer step.
        clip_grad_norm: Clip the gradient norm to this positive value before each step.
        channels_last: Use the channels-last memory format for model and inputs.
        batch_transform: Applied to each input batch on the device (e.g.
            [tlkit.augment.BatchAugment][]); a module runs in train mode for training batches.
        compile: Wrap the model with ``torch.compile``.
        checkpoint_dir: Default folder of [tlkit.ModelCheckpoint][] and of ``interrupted.pt``.
        log_every: Batches between NaN checks of the loss (one host sync each); every
            checkpoint write checks too, so no checkpoint follows a bad loss.
        verbose: Print a summary at the start of ``fit`` and callback messages (rank 0).

    Override [tlkit.Trainer.train_step][] and [tlkit.Trainer.eval_step][] for other batch
    layouts: each maps a batch to ``(loss, outputs, labels)``.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or an argument has the wrong type.
        ValueError: For a bad ``precision``, ``grad_accum_steps``, ``clip_grad_norm`` or
            ``log_every``, a loss with ``reduction='none'``, or nothing to train.

    Examples:
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(256, 2)
        >>> data = TensorDataset(x, (x[:, 0] > 0).long())
        >>> model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
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
        _steps.check_trainer_arguments(
            model,
            optimizer,
            callbacks,
            grad_accum_steps,
            clip_grad_norm,
            batch_transform,
            log_every,
        )
        distributed.init_process_group()
        self.rank, self.local_rank, self.world_size = distributed.world()
        self.device = devices.resolve_device(device, self.local_rank, select=True)
        self.precision = devices.resolve_precision(precision, self.device)
        self.autocast = devices.autocast_factory(self.precision, self.device)
        self.model, self.channels_last = model.to(self.device), channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        if isinstance(batch_transform, nn.Module):
            batch_transform.to(self.device)
        self.batch_transform = batch_transform
        self.optimizer = optimizer or _steps.default_optimizer(model)
        self.loss = _steps.resolve_loss(loss, model)
        nll = isinstance(self.loss, nn.NLLLoss)
        self.outputs_log_probs = nll or _steps.ends_in_log_softmax(model)
        bar = [] if any(isinstance(c, ProgressBar) for c in callbacks) else [ProgressBar()]
        self.callbacks = sorted([*callbacks, *bar], key=lambda c: c.order)
        self.grad_accum_steps, self.clip_grad_norm = grad_accum_steps, clip_grad_norm
        self.compile, self.checkpoint_dir = compile, Path(checkpoint_dir)
        self.log_every, self.verbose = log_every, verbose
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.history = History()
        self.epochs_done = self.global_step = self.max_epochs = 0
        self.should_stop, self.last_step_taken = False, True
        self.batches_per_epoch: int | None = None
        self.position = EpochPosition()
        self.checkpoints = CheckpointConnector(self)
        self.train_loader: Any = None  # the loader of the current (or last) fit
        self._losses = _steps.LossWatch()
        self.tta = False  # evaluate(tta=True): validation-style passes average flipped views
        self._check_next = False  # the next step checks outputs, labels and loss
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
        """Add a parameter group to the optimizer, tell the callbacks (``on_param_group_added``:
        [tlkit.LRScheduler][] extends its scheduler), rebuild the DDP wrapper."""
        self.optimizer.add_param_group(group)
        self._notify("on_param_group_added", group=self.optimizer.param_groups[-1])
        self.refresh_module()

    def running_metrics(self) -> dict[str, float]:
        """Loss, accuracy and images/s of the epoch so far on this process (one host sync)."""
        return self.position.running()

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
        """Class indices on the device (int32, integral float, ``(N, 1)``, one-hot converted);
        multi-hot ``(N, K)`` targets as floats when the loss is a multi-label one
        (``BCEWithLogitsLoss``, ``MultiLabelSoftMarginLoss``)."""
        targets = _steps.to_targets(y, self.loss)
        return targets.to(self.device, non_blocking=self.device.type == "cuda")

    def train_step(self, batch: Any) -> Step:
        """Forward one training batch: ``(loss, outputs, labels)``; the loop does the rest."""
        return self._forward(batch, train=True)

    def eval_step(self, batch: Any) -> Step:
        """Forward one evaluation batch (``no_grad``, eval mode): ``(loss, outputs, labels)``."""
        return self._forward(batch, train=False)

    def _forward(self, batch: Any, *, train: bool) -> Step:
        x, y = self.inputs(batch[0], train=train), self.labels(batch[1])
        with self.autocast():
            outputs = self._module(x) if train or not self.tta else self._flip_average(x)
            if self._check_next:  # the first batch: outputs, labels and loss, before any update
                self._check_next = False
                _steps.check_first(outputs, y, self.loss)
            try:
                return self.loss(outputs, y), outputs, y
            except (IndexError, RuntimeError):  # free when nothing fails
                _steps.check_label_range(y, outputs.shape[1])  # a clearer error when that is it
                raise

    def _flip_average(self, x: torch.Tensor) -> torch.Tensor:  # test-time augmentation
        return flip_average(self._module, x, log_probs=self.outputs_log_probs)

    # ------------------------------------------------------------------ fit
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs: model, optimizer, scaler, counters, callbacks, RNG, history.

        Between epochs, the random state is the current one. Inside an epoch (a checkpoint
        written by a callback's ``on_batch_end``, or on Ctrl-C) it is the state the epoch started
        with, plus ``batches_done``, the running metrics and the random state after the last
        batch done: a resume replays the epoch's data order, skips the batches done and
        continues exactly where the run stopped. See [tlkit.training.checkpoint.trainer_state][].

        Examples:
            >>> sorted(Trainer(torch.nn.Linear(2, 2), device="cpu").state_dict())[:4]
            ['batches_done', 'callbacks', 'epochs_done', 'global_step']
        """
        return self.checkpoints.state_dict()

    def load_state_dict(self, state: dict[str, Any], *, source: str = "the checkpoint") -> None:
        """Load what [tlkit.Trainer.state_dict][] returned (all but the random state)."""
        self.checkpoints.load_state_dict(state, source=source)

    def save_checkpoint(self, path: str | Path) -> None:
        """Write [tlkit.Trainer.state_dict][] to ``path`` atomically (rank 0 only).

        Raises:
            NonFiniteLossError: Instead of writing, when a loss since the last check or a
                weight is NaN or infinite: a checkpoint never holds a diverged run.
        """
        self.checkpoints.save(path)

    def resume(self, path: str | Path, *, loader: Any = None) -> int:
        """Restore the state saved in ``path`` (see
        [tlkit.training.checkpoint.read_checkpoint][]) and the generators of ``loader``, the
        training loader; returns the batches already done in the epoch the checkpoint was
        written in."""
        return self.checkpoints.resume(path, loader=loader)

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
        sharded: bool = False,
    ) -> History:
        """Train for ``epochs`` epochs in total (counting epochs done before a resume).

        Everything checkable is checked before the first update: arguments, callbacks
        (monitored metrics, folders), the optimizer, the first batch's inputs, outputs, labels
        and loss.

        Args:
            train_loader: A ``DataLoader`` (used as given) or any iterable of
                ``(inputs, targets)`` batches; a ``Dataset`` is wrapped in a shuffling
                ``DataLoader`` of ``batch_size`` (default 32).
            val_loader: Optional validation batches (or a ``Dataset``), evaluated every epoch.
            epochs: Total number of epochs.
            batch_size: Batch size for a ``Dataset``.
            resume_from: A checkpoint of this trainer (``last.pt``, ``interrupted.pt``); the run
                continues exactly where it stopped given the same model, optimizer, callbacks
                and loaders (generator included).
            cache_features: When only the head trains, run the frozen body once and train the
                head on the cached features ([tlkit.features.cache_head_inputs][]).
            cache_one_view: Accept caching randomly augmented data (one view per image).
            sharded: Under ``torchrun``, the loaders already give each process its own part of
                the data: used as given (no ``DistributedSampler``). Every process must then get
                as many training batches.

        Returns:
            The [tlkit.History][] (also at ``trainer.history``).

        Raises:
            TypeError: For something that is not a loader or dataset, non-tensor inputs
                (e.g. PIL images), or a model that does not return a tensor.
            ValueError: For an empty loader, bad labels, a loss/head mismatch, an optimizer
                with nothing to train, a bad checkpoint, or an impossible feature cache.
            KeyError: For a monitored metric the epochs will not have.
            NonFiniteLossError: When the loss becomes NaN or infinite (epoch and batch named).
            KeyboardInterrupt: Re-raised after writing ``interrupted.pt``.
        """
        check_positive_int("epochs", epochs)
        train: Any = _steps.as_loader("train_loader", train_loader, batch_size, shuffle=True)
        val: Any = None
        if val_loader is not None:
            val = _steps.as_loader("val_loader", val_loader, batch_size, shuffle=False)
        self._notify("on_fit_check", metrics=_steps.epoch_keys(validation=val is not None))
        self.max_epochs = epochs
        skip = self.resume(resume_from, loader=train) if resume_from is not None else 0
        if not sharded:
            train = distributed.distributed_loader(train, train=True)
            val = distributed.distributed_loader(val, train=False)
        saved = self._module, self.batch_transform
        if cache_features:  # train the head alone on features computed once
            head, train, val = cache_head_inputs(
                self.model,
                train,
                val,
                one_view=cache_one_view,
                batch_transform=self.batch_transform,
                device=self.device,
                autocast=self.autocast,
                distributed=self.world_size > 1,
                log=self.log,
            )
            self._module, self.batch_transform = head, None  # features are transformed already
        self.batches_per_epoch = len(train) if isinstance(train, Sized) else None
        self.train_loader = train  # its generators and samplers are part of every checkpoint
        self.log(_steps.summary(self, cache_features))
        self._notify("on_fit_start")
        first = True
        try:
            while self.epochs_done < epochs and not self.should_stop:
                self._run_epoch(train, val, skip, first=first)
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

    def _run_epoch(self, train_loader: Any, val_loader: Any, skip: int, *, first: bool) -> None:
        epoch = self.epochs_done
        if skip == 0 or not self.position.inside_epoch:
            self.position = EpochPosition(start_rng=rng_state(train_loader))
        sampler = getattr(train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        self._notify("on_epoch_start", epoch=epoch)
        if first:  # after on_epoch_start, which may unfreeze (GradualUnfreeze)
            _steps.check_optimizer(self.optimizer, self.model)
        record = self._train_epoch(train_loader, epoch, skip, check=first)
        if val_loader is not None:
            val = self._evaluate(val_loader, confusion=False)
            record.update({f"val_{k}": v for k, v in val.items() if k != "count"})
        self.history.records.append(record)
        self.epochs_done = epoch + 1
        self.position = EpochPosition()
        self._notify("on_epoch_end", epoch=epoch, metrics=record)
        self.should_stop = bool(distributed.most(self.should_stop))  # one stops: all stop

    def _train_epoch(
        self, loader: Iterable[Any], epoch: int, skip: int, *, check: bool
    ) -> dict[str, Any]:
        module = self._module  # read after on_epoch_start: GradualUnfreeze may rebuild it
        module.train()
        position = self.position
        meter = ClassificationMeter(top5=False)
        position.begin(meter, skip, self.device)  # a resumed epoch keeps its earlier metrics
        self._losses.reset(skip)
        accum, total, log_every = self.grad_accum_steps, self.batches_per_epoch, self.log_every
        no_sync = getattr(module, "no_sync", None)
        self.optimizer.zero_grad(set_to_none=True)
        index = -1
        for index, batch in enumerate(loader):
            if index < skip:  # a resumed epoch: replay the order, skip what was done
                position.skipped(index, skip)
                continue
            if check and index == skip and type(self).train_step is Trainer.train_step:
                _steps.check_batch(batch)  # the first batch of this fit: check it all
                self._check_next = True
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
            meter.update(loss, outputs, y)  # the meter detaches
            self._losses.pending.append(loss.detach())
            position.batches_done = index + 1
            self._notify("on_batch_end", batch=index, optimizer_stepped=step_now)
            if (index + 1) % log_every == 0:
                self.check_finite()
        _steps.check_batches_seen(index, skip)
        position.end_rng = rng_state(loader)
        if (index + 1) % accum != 0 and total is None:  # iterable loader: flush the last step
            self._optimizer_step()
        self.check_finite()
        seconds = time.perf_counter() - position.started
        return _steps.epoch_record(epoch, meter.compute(), self.optimizer, seconds)

    def _optimizer_step(self) -> None:
        self.last_step_taken = _steps.optimizer_step(
            self.optimizer, self.scaler, self.clip_grad_norm
        )
        self.global_step += 1

    def check_finite(self) -> None:
        """Raise [tlkit.NonFiniteLossError][] if a training loss since the last check was NaN
        or infinite (one host sync; called every ``log_every`` batches and before every save)."""
        self._losses.check(self.epochs_done)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self,
        loader: Iterable[Any] | Dataset[Any],
        *,
        batch_size: int | None = None,
        tta: bool = False,
    ) -> dict[str, Any]:
        """Metrics over ``loader`` (batches of ``(inputs, targets)``, or a ``Dataset``);
        ``tta=True`` averages the probabilities of each image and its mirror image.

        Returns:
            ``loss``, ``accuracy``, ``top5_accuracy`` (5+ classes), ``per_class_accuracy`` (NaN
            for absent classes), ``confusion_matrix`` (rows: true, columns: predicted), ``count``.

        Raises:
            ValueError: For an empty loader or labels out of range.
        """
        if tta and isinstance(self.loss, _steps.MULTI_LABEL_LOSSES):
            raise ValueError(
                "evaluate(tta=True) averages softmax probabilities; with a multi-label loss "
                "average the mirror images' predict() probabilities instead"
            )
        batches: Any = _steps.as_loader("loader", loader, batch_size, shuffle=False)
        batches = distributed.distributed_loader(batches, train=False)
        self.tta, tta = tta, self.tta
        try:
            return self._evaluate(batches, confusion=True, check=True)
        finally:
            self.tta = tta

    @torch.no_grad()
    def _evaluate(
        self, loader: Iterable[Any], *, confusion: bool, check: bool = False
    ) -> dict[str, Any]:
        meter = ClassificationMeter(confusion=confusion)
        self._module.eval()
        for index, batch in enumerate(loader):
            if check and index == 0 and type(self).eval_step is Trainer.eval_step:
                _steps.check_batch(batch)
                self._check_next = True
            loss, outputs, y = self.eval_step(batch)
            meter.update(loss.float(), outputs.float(), y)
        return meter.compute()

    @torch.no_grad()
    def predict(
        self, data: Iterable[Any] | torch.Tensor, *, batch_size: int = 256, tta: bool = False
    ) -> torch.Tensor:
        """Class probabilities ``(N, C)`` on the CPU for a tensor of inputs or a loader (targets
        ignored), whether the model ends in logits or in ``LogSoftmax``; ``tta=True`` averages
        each image's with its mirror image's. With a multi-label loss (``BCEWithLogitsLoss``,
        ``MultiLabelSoftMarginLoss``), each label's own probability (sigmoid).

        Raises:
            ValueError: For ``batch_size < 1`` or no input at all.
        """
        check_positive_int("batch_size", batch_size)
        self._module.eval()
        batches: Iterable[Any] = data
        if isinstance(data, torch.Tensor):
            batches = data.split(batch_size) if len(data) else []
        probs = []
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            _steps.check_inputs(x)
            x = self.inputs(x, train=False)
            if isinstance(self.loss, _steps.MULTI_LABEL_LOSSES):
                views = torch.cat([x, x.flip(-1)]) if tta else x
                with self.autocast():
                    out = _steps.check_outputs(self._module(views)).float().sigmoid()
                probs.append(out.view(1 + tta, len(x), -1).mean(0).cpu())
                continue
            with self.autocast():
                out = self._flip_average(x) if tta else _steps.check_outputs(self._module(x))
            log_probs = tta or self.outputs_log_probs
            probs.append((out.float().exp() if log_probs else out.float().softmax(1)).cpu())
        if not probs:
            raise ValueError("predict got no input: the data is empty")
        return torch.cat(probs)
