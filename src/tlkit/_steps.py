"""Private helpers of the Trainer's steps: device and precision choice, batch and label checks.

Everything here runs once per ``fit`` or on the first batch, except ``to_labels``, which turns
labels users obviously mean (int32, integral floats, ``(N, 1)``, one-hot) into class indices on
every batch at the cost of a dtype and shape check, and ``check_label_range`` on CPU labels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

def resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from exc
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank)
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda_bf16 else "fp32"
    return precision


def autocast_factory(
    precision: str, device: torch.device
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


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


def check_label_range(y: torch.Tensor, classes: int) -> None:
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
