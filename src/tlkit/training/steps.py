"""The helpers of the Trainer's steps: argument, batch and label checks.

Everything here runs once per ``fit`` or on the first batch, except ``to_labels``, which turns
labels users obviously mean (int32, integral floats, ``(N, 1)``, one-hot) into class indices on
every batch at the cost of a dtype and shape check, and ``optimizer_step``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Sized
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .._utils import check_positive_int
from ..callbacks import Callback
from ..exceptions import NonFiniteLossError
from .checkpoint import rng_state, set_rng_state


def epoch_keys(*, validation: bool) -> tuple[str, ...]:
    """The keys of every epoch's history record (``val_*`` with a validation loader)."""
    keys = ("epoch", "train_loss", "train_accuracy", "lr", "seconds", "images_per_sec")
    return keys + (("val_loss", "val_accuracy", "val_top5_accuracy") if validation else ())


def ends_in_log_softmax(model: nn.Module) -> bool:
    leaves = [m for m in model.modules() if not list(m.children())]
    return bool(leaves) and isinstance(leaves[-1], nn.LogSoftmax)


def check_loss_module(loss: Any) -> None:
    if not callable(loss):
        raise TypeError(f"loss must be a callable such as nn.CrossEntropyLoss(), got {loss!r}")
    if getattr(loss, "reduction", "mean") == "none":
        raise ValueError(
            f"loss {type(loss).__name__}(reduction='none') returns one value per sample; the "
            "Trainer needs a scalar: use reduction='mean' (or 'sum')"
        )


def _names(y: torch.Tensor) -> str:
    values = y.flatten()[:6].tolist()
    return f"{values}{'...' if y.numel() > 6 else ''} (dtype {y.dtype}, shape {tuple(y.shape)})"


def to_labels(y: Any) -> torch.Tensor:
    """``(N,)`` int64 class indices from what users obviously mean by labels.

    int64 ``(N,)`` passes through untouched (the per-batch cost is a dtype and a shape check).
    Other integer types and bools are cast; integral floats are cast after a check; ``(N, 1)``
    is flattened; one-hot ``(N, C)`` rows become their index. Anything else raises, naming
    the labels.
    """
    if isinstance(y, torch.Tensor) and y.dtype == torch.long and y.ndim == 1:
        return y
    if not isinstance(y, torch.Tensor):
        raise TypeError(
            f"labels must be a tensor of class indices, got {type(y).__name__}; a Dataset "
            "returning (input, int) pairs collates to one"
        )
    if y.is_complex():
        raise TypeError(f"labels must be class indices, got {_names(y)}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.reshape(-1)
    elif y.ndim == 2 and y.shape[0] > 0:
        one_hot = bool((((y == 0) | (y == 1)).all(1) & (y.sum(1) == 1)).all())
        if not one_hot:
            raise ValueError(
                f"labels of shape {tuple(y.shape)} look like class scores or probabilities; "
                f"the Trainer takes one class index per sample, got {_names(y)}"
            )
        return y.argmax(1)
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (batch,) of class indices, got {_names(y)}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError(f"labels must be whole class indices, got {_names(y)}")
    return y.long()


def check_outputs(outputs: Any) -> torch.Tensor:
    if not isinstance(outputs, torch.Tensor):
        kind = type(outputs).__name__
        size = f" of {len(outputs)}" if isinstance(outputs, (tuple, list, dict)) else ""
        raise TypeError(
            f"the model returned a {kind}{size}; the Trainer needs one (batch, classes) tensor. "
            "Wrap the model so that forward returns the logits (e.g. outputs[0] or "
            "outputs['logits']), or override Trainer.train_step and eval_step"
        )
    if outputs.ndim != 2:
        raise ValueError(
            f"the model must return (batch, classes) scores, got shape {tuple(outputs.shape)}"
        )
    return outputs


MULTI_LABEL_LOSSES = (nn.BCEWithLogitsLoss, nn.MultiLabelSoftMarginLoss)


def to_targets(y: Any, loss: Any) -> torch.Tensor:
    """Labels for ``loss``: multi-hot ``(N, K)`` targets as floats for a multi-label loss
    (``BCEWithLogitsLoss``, ``MultiLabelSoftMarginLoss``), else [to_labels][]'s class indices."""
    if isinstance(loss, MULTI_LABEL_LOSSES) and isinstance(y, torch.Tensor) and y.ndim == 2:
        return y.float()
    return to_labels(y)


def check_label_range(y: torch.Tensor, classes: int) -> None:
    if y.ndim == 2:  # multi-hot targets: one column per output
        if y.shape[1] != classes:
            raise ValueError(
                f"targets have {y.shape[1]} labels per sample but the head has {classes} "
                "outputs; check num_classes of the head"
            )
        return
    low, high = (int(v) for v in torch.aminmax(y))
    if low < 0 or high >= classes:
        bad = high if high >= classes else low
        raise ValueError(
            f"label {bad} is out of range for a head with {classes} outputs "
            f"(valid labels 0..{classes - 1}); check num_classes of the head"
        )


def check_first_loss(loss: Any, outputs: torch.Tensor, nll: bool) -> None:
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"the loss must be a scalar tensor, got {shape}; use a loss with reduction='mean'"
        )
    if nll:
        lse = outputs.detach().float().logsumexp(1)
        if not torch.allclose(lse, torch.zeros_like(lse), atol=1e-3):
            raise ValueError(
                "NLLLoss needs log-probabilities but the model outputs logits (rows do not "
                "log-sum-exp to 0); use nn.CrossEntropyLoss() or end the head in LogSoftmax "
                "(tlkit.heads.mlp(..., log_softmax=True))"
            )


def check_inputs(x: Any, *, collated: bool = True) -> None:
    """Raise a ``TypeError`` for inputs that are not tensors, with a fix for PIL images.

    ``collated=False`` checks one dataset item before batching: only PIL images are refused
    there (numbers, arrays and nested structures collate to tensors).
    """
    if isinstance(x, torch.Tensor):
        return
    first = x[0] if isinstance(x, (list, tuple)) and x else x
    pil = type(first).__module__.startswith("PIL")
    if not collated and not pil:
        return
    kind = f"{type(x).__module__}.{type(x).__name__}"
    hint = (
        "; the dataset yields PIL images: give it a transform that makes tensors, e.g. "
        "tlkit.augment.get('standard', image_size=224)[0], or wrap it in tlkit.WithTransform"
        if pil
        else ""
    )
    where = "batch inputs" if collated else "the dataset's items"
    raise TypeError(f"{where} must be tensors, got {kind}{hint}")


# ---------------------------------------------------------------------- set-up of a Trainer
def check_trainer_arguments(
    model: Any,
    optimizer: Any,
    callbacks: Any,
    grad_accum_steps: Any,
    clip_grad_norm: Any,
    batch_transform: Any,
    log_every: Any,
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_positive_int("grad_accum_steps", grad_accum_steps)
    check_positive_int("log_every", log_every)
    if clip_grad_norm is not None and (
        isinstance(clip_grad_norm, bool)
        or not isinstance(clip_grad_norm, (int, float))
        or not 0 < clip_grad_norm < math.inf
    ):
        raise ValueError(
            f"clip_grad_norm must be a positive finite number or None, got {clip_grad_norm!r}"
        )
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
    if batch_transform is not None and not callable(batch_transform):
        raise TypeError(f"batch_transform must be callable, got {type(batch_transform).__name__}")
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of tlkit.Callback, got {callbacks!r}")
    bad = [c for c in callbacks if not isinstance(c, Callback)]
    if bad:
        raise TypeError(f"callbacks must be tlkit.Callback instances, got {bad[0]!r}")


def default_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            "the model has no trainable parameters; unfreeze some or pass an optimizer"
        )
    return torch.optim.AdamW(params, lr=1e-3)


def resolve_loss(loss: Any, model: nn.Module) -> Any:
    log_probs = ends_in_log_softmax(model)
    if loss is None:
        return nn.NLLLoss() if log_probs else nn.CrossEntropyLoss()
    if log_probs and isinstance(loss, nn.CrossEntropyLoss):
        warnings.warn(
            "the model ends in LogSoftmax and the loss is CrossEntropyLoss, which applies "
            "log-softmax again (harmless, log-softmax is idempotent, but wasted work); "
            "pass loss=nn.NLLLoss()",
            stacklevel=4,
        )
    check_loss_module(loss)
    return loss


def as_loader(name: str, data: Any, batch_size: int | None, *, shuffle: bool) -> Any:
    """``data`` as something that yields batches: a Dataset is wrapped, the rest checked."""
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
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            f"{name} must be a DataLoader (or an iterable of (inputs, targets) batches, or a "
            f"Dataset), got {type(data).__name__}"
        )
    if isinstance(data, Sized) and len(data) == 0:
        raise ValueError(f"{name} is empty: it yields no batch")
    dataset = getattr(data, "dataset", None)
    collate = getattr(data, "collate_fn", None)
    if isinstance(dataset, Dataset) and getattr(collate, "__name__", "") == "default_collate":
        item = None
        state = rng_state()  # reading an item must not move the random streams
        with contextlib.suppress(IndexError, KeyError, TypeError, NotImplementedError):
            item = dataset[0]
        set_rng_state(state)
        if isinstance(item, (tuple, list)) and item:
            check_inputs(item[0], collated=False)
    return data


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    held = [p for g in optimizer.param_groups for p in g["params"]]
    if not any(p.requires_grad for p in held):
        raise ValueError(
            f"the optimizer holds {len(held)} tensors and none requires grad (all frozen), "
            "so training would change nothing; build it over "
            "[p for p in model.parameters() if p.requires_grad] after freezing"
        )
    mine = {id(p) for p in model.parameters()}
    if not any(id(p) in mine for p in held):
        raise ValueError(
            "the optimizer holds none of the model's parameters (was it built for another "
            "model?); build it over this model's parameters"
        )


def summary(trainer: Any, cached: bool) -> str:
    named = list(trainer.model.named_parameters())
    trainable = [p for _, p in named if p.requires_grad]
    frozen = [p for _, p in named if not p.requires_grad]
    lines = [
        f"tlkit Trainer: device {trainer.device}, precision {trainer.precision}, "
        f"{trainer.world_size} process{'es' if trainer.world_size > 1 else ''}"
        + (", cached features" if cached else ""),
        f"  trainable {len(trainable)} tensors ({sum(p.numel() for p in trainable):,} params), "
        f"frozen {len(frozen)} tensors ({sum(p.numel() for p in frozen):,} params)",
        f"  loss {type(trainer.loss).__name__}, optimizer {type(trainer.optimizer).__name__}",
    ]
    for i, group in enumerate(trainer.optimizer.param_groups):
        count = sum(p.numel() for p in group["params"])
        lines.append(
            f"  param group {i}: {len(group['params'])} tensors, {count:,} params, "
            f"lr {group['lr']:.3g}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- non-finite values
def first_nonfinite(losses: list[torch.Tensor]) -> int | None:
    """Index of the first NaN/infinite loss in ``losses`` (one host sync), or ``None``."""
    finite = torch.isfinite(torch.stack(losses).float())
    if bool(finite.all()):
        return None
    return int((~finite).nonzero()[0, 0])


class LossWatch:
    """Training losses not yet checked for NaN: appended per batch, checked in one sync."""

    def __init__(self) -> None:
        self.pending: list[torch.Tensor] = []
        self.checked = 0  # batches of the epoch whose losses were checked

    def reset(self, batches_done: int) -> None:
        self.pending, self.checked = [], batches_done

    def check(self, epoch: int) -> None:
        pending, start = self.pending, self.checked
        if not pending:
            return
        self.pending, self.checked = [], start + len(pending)
        bad = first_nonfinite(pending)
        if bad is not None:
            raise NonFiniteLossError(
                f"the loss became NaN or infinite at epoch {epoch + 1}, batch {start + bad + 1}; "
                "training stopped and no checkpoint was written after it (lower the learning "
                "rate, clip gradients with clip_grad_norm=, or check the inputs)"
            )


def check_batch(batch: Any) -> None:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(f"batches must be (inputs, targets) pairs, got {type(batch).__name__}")
    check_inputs(batch[0])


def check_first(outputs: Any, y: torch.Tensor, loss_fn: Any) -> None:
    """The first batch's checks between forward and loss."""
    check_outputs(outputs)
    check_label_range(y, int(outputs.shape[1]))
    with torch.no_grad():
        loss = loss_fn(outputs, y)
    check_first_loss(loss, outputs, isinstance(loss_fn, nn.NLLLoss))


def epoch_record(
    epoch: int, metrics: dict[str, Any], optimizer: torch.optim.Optimizer, seconds: float
) -> dict[str, Any]:
    return {
        "epoch": epoch + 1,
        "train_loss": metrics["loss"],
        "train_accuracy": metrics["accuracy"],
        "lr": [float(g["lr"]) for g in optimizer.param_groups],
        "seconds": seconds,
        "images_per_sec": metrics["count"] / seconds if seconds > 0 else float("nan"),
    }


def check_batches_seen(index: int, skip: int) -> None:
    if index < 0 or index < skip - 1:
        what = "no batch" if index < 0 else f"{index + 1} batches"
        resumed = (
            f", but the checkpoint resumed from was written after batch {skip}; resume with the "
            "same data and batch size"
            if skip
            else ""
        )
        raise ValueError(f"train_loader yielded {what} this epoch{resumed}")


def optimizer_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip: float | None
) -> bool:
    """Clip, step (through the scaler in fp16), zero the gradients; whether the step was
    taken (fp16 skips steps whose gradients overflowed)."""
    if clip is not None:
        scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip)
    taken = True
    if scaler.is_enabled():
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        taken = scaler.get_scale() >= scale
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return taken
