"""Classifier heads and [replace_head][tlkit.replace_head], which swaps any torchvision or timm
classifier.

Builders return a [Head][tlkit.heads.Head] (an ``nn.Sequential`` that remembers its
``in_features`` and
``num_classes``), so [replace_head][tlkit.replace_head] can later find and replace it whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from torch import nn

from ._utils import check_positive_int

__all__ = ["Head", "find_head", "headless", "linear", "mlp", "replace_head"]

HeadBuilder = Callable[[int], nn.Module]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


class Head(nn.Sequential):
    """A classifier head: ``nn.Sequential`` plus its ``in_features`` and ``num_classes``.

    Examples:
        >>> head = Head(nn.Linear(8, 3), in_features=8, num_classes=3)
        >>> head.in_features, head.num_classes, head.log_softmax
        (8, 3, False)
    """

    def __init__(self, *layers: nn.Module, in_features: int, num_classes: int) -> None:
        super().__init__(*layers)
        self.in_features = in_features
        self.num_classes = num_classes

    @property
    def log_softmax(self) -> bool:
        """Whether the head ends in ``LogSoftmax`` (pair it with ``NLLLoss``)."""
        return len(self) > 0 and isinstance(self[-1], nn.LogSoftmax)


def _check_dropout(value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value!r}")


def linear(
    in_features: int, num_classes: int, *, dropout: float = 0.0, log_softmax: bool = False
) -> Head:
    """A linear classifier, optionally preceded by dropout and followed by ``LogSoftmax``.

    Args:
        in_features: Size of the features entering the head.
        num_classes: Number of classes.
        dropout: Dropout probability before the linear layer (0 disables it).
        log_softmax: End with ``LogSoftmax(dim=1)`` (train with ``NLLLoss``).

    Returns:
        A [Head][tlkit.heads.Head].

    Raises:
        ValueError: For non-positive sizes or a dropout outside [0, 1).

    Examples:
        >>> linear(512, 10, dropout=0.2)
        Head(
          (0): Dropout(p=0.2, inplace=False)
          (1): Linear(in_features=512, out_features=10, bias=True)
        )
    """
    return mlp(in_features, num_classes, hidden=(), dropout=dropout, log_softmax=log_softmax)


def mlp(
    in_features: int,
    num_classes: int,
    *,
    hidden: Sequence[int] = (512,),
    activation: str | Callable[[], nn.Module] = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
    log_softmax: bool = False,
) -> Head:
    """An MLP head: ``[Linear -> (BatchNorm) -> activation -> (Dropout)] * k -> Linear``.

    Args:
        in_features: Size of the features entering the head.
        num_classes: Number of classes.
        hidden: Sizes of the hidden layers; ``()`` gives a linear head (with dropout first).
        activation: ``"relu"``, ``"gelu"``, ``"silu"``, ``"tanh"``, ``"leaky_relu"`` or a
            callable returning a module.
        dropout: Dropout probability after each hidden activation (0 disables it).
        batch_norm: Insert ``BatchNorm1d`` after each hidden linear layer.
        log_softmax: End with ``LogSoftmax(dim=1)`` (train with ``NLLLoss``).

    Returns:
        A [Head][tlkit.heads.Head].

    Raises:
        ValueError: For non-positive sizes, a dropout outside [0, 1).
        KeyError: For an unknown activation name.

    Examples:
        The head of the STL10 blog recipe:

        >>> mlp(2048, 10, hidden=(128,), dropout=0.4, log_softmax=True)
        Head(
          (0): Linear(in_features=2048, out_features=128, bias=True)
          (1): ReLU()
          (2): Dropout(p=0.4, inplace=False)
          (3): Linear(in_features=128, out_features=10, bias=True)
          (4): LogSoftmax(dim=1)
        )
    """
    check_positive_int("in_features", in_features)
    check_positive_int("num_classes", num_classes)
    _check_dropout(dropout)
    for size in hidden:
        check_positive_int("hidden size", size)
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            from .registry import unknown_name_error

            raise unknown_name_error("activation", activation, _ACTIVATIONS)
        make_activation: Callable[[], nn.Module] = _ACTIVATIONS[activation]
    else:
        make_activation = activation
    layers: list[nn.Module] = []
    width = in_features
    if not hidden and dropout > 0:
        layers.append(nn.Dropout(dropout))
    for size in hidden:
        layers.append(nn.Linear(width, size, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(make_activation())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    if log_softmax:
        layers.append(nn.LogSoftmax(dim=1))
    return Head(*layers, in_features=in_features, num_classes=num_classes)


# --------------------------------------------------------------------------- finding the classifier
_TORCHVISION_ATTRS = ("fc", "classifier", "heads", "head")


def find_head(model: nn.Module) -> tuple[str, int]:
    """The dotted path of a model's classifier and its input feature count.

    The classifier is found as [tlkit.replace_head][] finds it.

    Raises:
        TypeError: If no classifier is found (naming what was tried).

    Examples:
        >>> import torchvision
        >>> find_head(torchvision.models.resnet18())
        ('fc', 512)
        >>> find_head(torchvision.models.mobilenet_v3_small())
        ('classifier.3', 1024)
    """
    tried: list[str] = []
    if hasattr(model, "get_classifier") and hasattr(model, "reset_classifier"):
        tried.append("timm get_classifier()")
        current = cast(Any, model).get_classifier()
        path = next((n for n, m in model.named_modules() if m is current and n), None)
        if path is not None:
            if isinstance(current, Head):
                return path, current.in_features
            if isinstance(current, nn.Linear):
                return path, current.in_features
            features = getattr(model, "head_hidden_size", None) or getattr(
                model, "num_features", None
            )
            if isinstance(features, int):
                return path, features
    if isinstance(model, nn.Sequential) and len(model) and isinstance(model[-1], (Head, nn.Linear)):
        tried.append("the last layer of the Sequential")
        return str(len(model) - 1), model[-1].in_features
    for attr in _TORCHVISION_ATTRS:
        tried.append(f".{attr}")
        module = getattr(model, attr, None)
        if not isinstance(module, nn.Module):
            continue
        if isinstance(module, (Head, nn.Linear)):
            return attr, module.in_features
        # torchvision keeps pooling/norm/dropout in front of the final Linear in a Sequential
        # (EfficientNet, MobileNet, ConvNeXt, VGG, ViT's heads.head): replace only that Linear.
        last = None
        for name, sub in module.named_modules():
            if isinstance(sub, (Head, nn.Linear)):
                last = (name, sub)
                if isinstance(sub, Head):
                    break
        if last is not None:
            return f"{attr}.{last[0]}", last[1].in_features
    raise TypeError(
        f"cannot find the classifier of {type(model).__name__}: tried {', '.join(tried)} "
        "and found no nn.Linear or tlkit Head there; replace the head by hand, e.g. "
        "model.<attr> = tlkit.heads.linear(in_features, num_classes)"
    )


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_name, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@contextlib.contextmanager
def headless(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Temporarily replace the classifier with ``nn.Identity``: the model outputs features.

    Yields:
        ``(path, head)``: where the classifier sits and the classifier itself, put back on exit.

    Examples:
        >>> import torch, torchvision
        >>> model = torchvision.models.resnet18()
        >>> with headless(model) as (path, head):
        ...     model.eval()(torch.zeros(1, 3, 32, 32)).shape, path
        (torch.Size([1, 512]), 'fc')
        >>> isinstance(model.fc, torch.nn.Linear)
        True
    """
    path, _ = find_head(model)
    head = model.get_submodule(path)
    _set_module(model, path, nn.Identity())
    try:
        yield path, head
    finally:
        _set_module(model, path, head)


def _input_features(module: nn.Module) -> int | None:
    """The input width of a head whose first layer with parameters is a ``Linear``."""
    if isinstance(module, Head):
        return module.in_features
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            return sub.in_features
        if list(sub.parameters(recurse=False)):
            return None
    return None


def replace_head(model: nn.Module, head: nn.Module | HeadBuilder | int) -> nn.Module:
    """Replace the classifier of a torchvision or timm model, in place.

    Finds the classifier of timm models through ``get_classifier()``, of an ``nn.Sequential``
    ending in a ``Linear`` (or a [Head][tlkit.heads.Head]) in its last layer, and of torchvision
    models
    through ``fc`` (ResNet, ResNeXt, RegNet), ``classifier`` (EfficientNet, MobileNet, ConvNeXt,
    VGG, DenseNet, MaxViT), ``heads`` (ViT) or ``head`` (Swin). Where the classifier is a
    ``Sequential`` ending in a ``Linear`` (ConvNeXt's norm and flatten, EfficientNet's dropout),
    only that final ``Linear`` is replaced. A [Head][tlkit.heads.Head] put in by tlkit is replaced
    whole.

    Args:
        model: The model to change.
        head: A module, a builder called with the discovered ``in_features`` (for example
            ``lambda n: tlkit.heads.mlp(n, 10)``), or an ``int``: a linear head with that many
            classes.

    Returns:
        The model (changed in place), for chaining.

    Raises:
        TypeError: If no classifier is found (naming what was tried) or ``head`` is neither a
            module, a callable nor an int.

    Examples:
        >>> import torchvision
        >>> from tlkit import heads
        >>> model = torchvision.models.resnet50()
        >>> model = replace_head(model, lambda n: heads.mlp(n, 10, hidden=(128,)))
        >>> model.fc.in_features, model.fc.num_classes
        (2048, 10)
        >>> replace_head(torchvision.models.convnext_tiny(), 5).classifier
        Sequential(
          (0): LayerNorm2d((768,), eps=1e-06, elementwise_affine=True...)
          (1): Flatten(start_dim=1, end_dim=-1)
          (2): Head(
            (0): Linear(in_features=768, out_features=5, bias=True)
          )
        )
    """
    path, in_features = find_head(model)
    if isinstance(head, nn.Module):
        new = head
    elif isinstance(head, int) and not isinstance(head, bool):
        new = linear(in_features, head)
    elif callable(head):
        new = head(in_features)
        if not isinstance(new, nn.Module):
            raise TypeError(f"head builder must return an nn.Module, got {type(new).__name__}")
    else:
        raise TypeError(
            f"head must be an nn.Module, a builder taking in_features, or a class count; "
            f"got {type(head).__name__}"
        )
    expects = _input_features(new)
    if expects is not None and expects != in_features:
        raise ValueError(
            f"the new head takes {expects} input features but the classifier at {path!r} of "
            f"{type(model).__name__} receives {in_features}; build it with in_features="
            f"{in_features}, or pass a builder (lambda n: ...) that gets the right width"
        )
    _set_module(model, path, new)
    if hasattr(model, "num_classes") and isinstance(new, Head):
        cast(Any, model).num_classes = new.num_classes
    return model
