"""Freeze policies: which parameters train, and what BatchNorm does in the frozen part.

A [FreezePolicy][tlkit.FreezePolicy] is data: one *selector* (an index range, layer names or glob
patterns,
"everything up to a layer", the inverse "train only these", or a predicate) plus an explicit
BatchNorm choice. [apply][tlkit.FreezePolicy.apply] resolves the selector to parameter names, sets
``requires_grad`` accordingly and returns a [FreezeReport][tlkit.FreezeReport] of exactly what is
frozen.

BatchNorm is never a side effect. ``requires_grad=False`` stops the *affine* parameters of a
BatchNorm layer from changing, but in train mode the layer still updates its running mean and
variance from every batch, so a "frozen" backbone drifts. With ``bn="eval"`` (the default) every
BatchNorm layer whose parameters are all frozen is held in eval mode, also after ``model.train()``;
``bn="train"`` keeps PyTorch's plain behaviour (what a hand-written ``requires_grad`` loop does).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._utils import check_positive_int
from .registry import unknown_name_error

__all__ = ["FreezePolicy", "FreezeReport", "unfreeze"]

BNMode = Literal["eval", "train"]
_SELECTORS = ("first_n", "indices", "up_to", "names", "train_only", "predicate")


# --------------------------------------------------------------------------- BatchNorm holding
class _KeepEval:
    """Stands in for ``module.train`` so that a frozen BatchNorm layer stays in eval mode.

    ``nn.Module.train`` calls ``child.train(mode)`` on every child, so an instance attribute named
    ``train`` intercepts ``model.train()`` and ``model.eval()`` alike. A class (not a lambda)
    keeps the model picklable and deep-copyable.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def _is_held(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("train"), _KeepEval)


def _hold_eval(module: nn.Module) -> None:
    if not _is_held(module):
        module.__dict__["train"] = _KeepEval(module)
    module.train(False)


def _release(module: nn.Module, mode: bool) -> None:
    if module.__dict__.pop("train", None) is not None:
        module.train(mode)


def _fully_frozen(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def _sync_batchnorm(model: nn.Module, hold: bool) -> None:
    """Hold every fully frozen BatchNorm in eval mode (``hold``) and release all others."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            if hold and _fully_frozen(module):
                _hold_eval(module)
            else:
                _release(module, model.training)


# --------------------------------------------------------------------------- name resolution
def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _owner(param_name: str) -> str:
    return param_name.rpartition(".")[0]


def _params_under(param_names: Iterable[str], module_name: str) -> list[str]:
    if not module_name:
        return list(param_names)
    prefix = module_name + "."
    return [p for p in param_names if p.startswith(prefix)]


def resolve_names(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Resolve module names, parameter names and glob patterns to parameter names, in model order.

    Raises:
        KeyError: For a name that is neither a module nor a parameter (with close matches).
        ValueError: For a glob that matches nothing, or a module without parameters.

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> resolve_names(model, ["2", "0.bias"])
        ['0.bias', '2.weight', '2.bias']
    """
    params = [name for name, _ in model.named_parameters()]
    modules = [name for name, _ in model.named_modules() if name]
    hits: set[str] = set()
    for pattern in patterns:
        if _is_glob(pattern):
            found = {p for p in params if fnmatch.fnmatchcase(p, pattern)}
            for module_name in modules:
                if fnmatch.fnmatchcase(module_name, pattern):
                    found.update(_params_under(params, module_name))
            if not found:
                raise ValueError(
                    f"pattern {pattern!r} matches no parameter or module name of "
                    f"{type(model).__name__}; top-level layers: {_top_level(model)}"
                )
        elif pattern in params:
            found = {pattern}
        else:
            get_layer(model, pattern)
            found = set(_params_under(params, pattern))
            if not found:
                raise ValueError(f"layer {pattern!r} has no parameters to freeze")
        hits |= found
    return [p for p in params if p in hits]


def _top_level(model: nn.Module) -> str:
    return ", ".join(name for name, _ in model.named_children())


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)``, raising a ``KeyError`` with the closest names on a typo.

    Examples:
        >>> from torch import nn
        >>> get_layer(nn.Sequential(nn.Linear(2, 2)), "0")
        Linear(in_features=2, out_features=2, bias=True)
    """
    try:
        return model.get_submodule(name)
    except AttributeError:
        every = [n for n, _ in model.named_modules() if n] + [
            n for n, _ in model.named_parameters()
        ]
        listing = [n for n, _ in model.named_children()] + ["... (see model.named_modules())"]
        raise unknown_name_error("layer", name, every, listing=listing) from None


def _check_index(index: int, count: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"parameter indices must be integers, got {index!r}")
    if not -count <= index < count:
        raise ValueError(
            f"parameter index {index} is out of range: the model has {count} parameter tensors "
            f"(valid indices {-count}..{count - 1})"
        )
    return index % count


# --------------------------------------------------------------------------- policy
@dataclass(frozen=True, kw_only=True)
class FreezePolicy:
    """Which parameters to freeze, and what BatchNorm does in the frozen part.

    Give exactly one selector. Parameters it selects are frozen (``requires_grad=False``); every
    other parameter is made trainable, so applying a policy always leaves the same state.

    Args:
        first_n: Freeze the first ``n`` tensors of ``model.parameters()`` (the classic
            ``for i, p in enumerate(model.parameters()): if i < n: p.requires_grad = False``).
        indices: Freeze the parameter tensors at these positions (a ``range`` or a sequence of
            ints; negative indices count from the end).
        up_to: Freeze every parameter of the modules registered up to and including this layer
            (``"layer2"`` freezes the stem, ``layer1`` and ``layer2`` of a ResNet). A parameter
            name (``"layer2.0.conv1.weight"``) freezes the parameters up to and including it.
        names: Freeze these modules or parameters. Exact names or ``fnmatch`` globs
            (``["conv1", "bn1", "layer1.*"]``).
        train_only: The inverse of ``names``: freeze everything except these.
        predicate: Freeze parameters for which ``predicate(name, parameter)`` is true.
        bn: ``"eval"`` holds every BatchNorm layer whose parameters are all frozen in eval mode,
            so its running statistics never move, even after ``model.train()``. ``"train"``
            leaves BatchNorm layers to follow ``model.train()`` as plain PyTorch does.

    Raises:
        ValueError: If no selector or more than one is given, ``first_n < 1`` or ``bn`` is not
            ``"eval"`` or ``"train"``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(
        ...     nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, 2)
        ... )
        >>> report = FreezePolicy(first_n=3).apply(model)  # conv weight, conv bias, bn weight
        >>> report.frozen
        ('0.weight', '0.bias', '1.weight')
        >>> report = FreezePolicy(up_to="1").apply(model)  # conv and BatchNorm, BN held in eval
        >>> model.train()[1].training
        False
    """

    first_n: int | None = None
    indices: range | Sequence[int] | None = None
    up_to: str | None = None
    names: Sequence[str] | None = None
    train_only: Sequence[str] | None = None
    predicate: Callable[[str, nn.Parameter], bool] | None = None
    bn: BNMode = "eval"

    def __post_init__(self) -> None:
        given = [name for name in _SELECTORS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "FreezePolicy needs exactly one selector out of "
                f"{', '.join(_SELECTORS)}; got {', '.join(given) or 'none'}"
            )
        if self.bn not in ("eval", "train"):
            raise ValueError(f"bn must be 'eval' or 'train', got {self.bn!r}")
        if self.first_n is not None:
            check_positive_int("first_n", self.first_n)
        for key in ("names", "train_only"):
            value = getattr(self, key)
            if value is None:
                continue
            value = (value,) if isinstance(value, str) else tuple(value)
            if not value or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{key} must be a non-empty list of layer names, got {value!r}")
            object.__setattr__(self, key, value)
        if self.indices is not None and not isinstance(self.indices, range):
            object.__setattr__(self, "indices", tuple(self.indices))
        if self.up_to is not None and (not isinstance(self.up_to, str) or not self.up_to):
            raise ValueError(f"up_to must be a layer name, got {self.up_to!r}")

    def select(self, model: nn.Module) -> list[str]:
        """Names of the parameters this policy freezes on ``model``, in model order.

        Raises:
            KeyError: For a layer name the model does not have (with the closest names).
            ValueError: For an index beyond the parameter count, or a selector matching nothing.

        Examples:
            >>> from torch import nn
            >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
            >>> FreezePolicy(train_only=["1"]).select(model)
            ['0.weight', '0.bias']
        """
        named = list(model.named_parameters())
        params = [name for name, _ in named]
        count = len(params)
        if self.first_n is not None:
            if self.first_n > count:
                raise ValueError(
                    f"first_n={self.first_n} exceeds the parameter count: "
                    f"{type(model).__name__} has {count} parameter tensors"
                )
            chosen = params[: self.first_n]
        elif self.indices is not None:
            wanted = {_check_index(i, count) for i in self.indices}
            chosen = [p for i, p in enumerate(params) if i in wanted]
        elif self.up_to is not None and self.up_to in params:  # a parameter: up to it, in order
            chosen = params[: params.index(self.up_to) + 1]
        elif self.up_to is not None:
            get_layer(model, self.up_to)
            modules = [name for name, _ in model.named_modules()]
            position = modules.index(self.up_to)
            before = set(modules[: position + 1])
            prefix = self.up_to + "."
            chosen = [p for p in params if _owner(p) in before or p.startswith(prefix)]
        elif self.names is not None:
            chosen = resolve_names(model, self.names)
        elif self.train_only is not None:
            keep = set(resolve_names(model, self.train_only))
            chosen = [p for p in params if p not in keep]
        else:
            assert self.predicate is not None
            chosen = [name for name, p in named if self.predicate(name, p)]
        if not chosen:
            raise ValueError(f"{self!r} selects no parameter of {type(model).__name__}")
        return chosen

    def apply(self, model: nn.Module) -> FreezeReport:
        """Freeze the selected parameters, make the rest trainable, and set up BatchNorm.

        Args:
            model: The model to change in place.

        Returns:
            A [FreezeReport][tlkit.FreezeReport] of the model's state afterwards.

        Raises:
            KeyError: For a layer name the model does not have (with the closest names).
            ValueError: For an index beyond the parameter count, or a selector matching nothing.

        Examples:
            >>> import torchvision
            >>> model = torchvision.models.resnet18()
            >>> report = FreezePolicy(up_to="layer2").apply(model)
            >>> report.fully_frozen_modules
            ('conv1', 'bn1', 'layer1', 'layer2')
        """
        frozen = set(self.select(model))
        for name, param in model.named_parameters():
            param.requires_grad_(name not in frozen)
        _sync_batchnorm(model, hold=self.bn == "eval")
        return FreezeReport.from_model(model)


def unfreeze(model: nn.Module, names: Sequence[str] | None = None) -> FreezeReport:
    """Make parameters trainable again and release their BatchNorm layers from eval mode.

    Args:
        model: The model to change in place.
        names: Modules, parameters or glob patterns to unfreeze; ``None`` unfreezes everything.

    Returns:
        A [FreezeReport][tlkit.FreezeReport] of the model's state afterwards.

    Raises:
        KeyError: For a layer name the model does not have.

    Examples:
        >>> import torchvision
        >>> model = torchvision.models.resnet18()
        >>> _ = FreezePolicy(train_only=["fc"]).apply(model)
        >>> unfreeze(model, ["layer4"]).fully_frozen_modules
        ('conv1', 'bn1', 'layer1', 'layer2', 'layer3')
    """
    chosen = (
        None
        if names is None
        else set(resolve_names(model, [names] if isinstance(names, str) else names))
    )
    for name, param in model.named_parameters():
        if chosen is None or name in chosen:
            param.requires_grad_(True)
    for module in model.modules():
        if isinstance(module, _BatchNorm) and _is_held(module) and not _fully_frozen(module):
            _release(module, model.training)
    return FreezeReport.from_model(model)


# --------------------------------------------------------------------------- report
@dataclass(frozen=True)
class _Row:
    name: str
    depth: int
    frozen_tensors: int
    tensors: int
    frozen_numel: int
    numel: int


@dataclass(frozen=True)
class FreezeReport:
    """What is frozen in a model: parameter names, counts, modules and BatchNorm layers.

    Build one with [from_model][tlkit.FreezeReport.from_model] or get it from
    [apply][tlkit.FreezePolicy.apply]; ``str(report)``
    is a table by layer that opens up partly frozen layers.

    Attributes:
        frozen: Names of frozen parameter tensors, in model order.
        trainable: Names of trainable parameter tensors, in model order.
        frozen_numel: Number of frozen parameter elements.
        trainable_numel: Number of trainable parameter elements.
        fully_frozen_modules: The outermost modules whose parameters are all frozen.
        partly_frozen_modules: Modules holding both frozen and trainable parameters.
        bn_eval: BatchNorm layers held in eval mode.

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        >>> print(FreezePolicy(up_to="1").apply(model))
        layer   frozen tensors      frozen params  state
        0                  2/2             20/20   frozen
        1                  2/2               8/8   frozen, BN eval
        2                  0/2              0/10   trainable
        frozen 4 of 6 tensors, 28 of 38 parameters (73.7%); 1 BatchNorm layer held in eval
    """

    frozen: tuple[str, ...]
    trainable: tuple[str, ...]
    frozen_numel: int
    trainable_numel: int
    fully_frozen_modules: tuple[str, ...]
    partly_frozen_modules: tuple[str, ...]
    bn_eval: tuple[str, ...]
    _rows: tuple[_Row, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_model(cls, model: nn.Module) -> FreezeReport:
        """Describe the current freeze state of ``model``.

        Examples:
            >>> from torch import nn
            >>> FreezeReport.from_model(nn.Linear(2, 2)).trainable
            ('weight', 'bias')
        """
        named = list(model.named_parameters())
        frozen = tuple(n for n, p in named if not p.requires_grad)
        trainable = tuple(n for n, p in named if p.requires_grad)
        frozen_set = set(frozen)
        stats: dict[str, tuple[int, int, int, int]] = {}
        for module_name, _ in model.named_modules():
            mine = [(n, p) for n, p in named if n.startswith(module_name + ".") or not module_name]
            stats[module_name] = (
                sum(n in frozen_set for n, _ in mine),
                len(mine),
                sum(p.numel() for n, p in mine if n in frozen_set),
                sum(p.numel() for _, p in mine),
            )
        fully: list[str] = []
        partly: list[str] = []
        for module_name, (f, t, _, _) in stats.items():
            if not module_name or t == 0:
                continue
            parent_fully = any(module_name.startswith(m + ".") for m in fully)
            if f == t and not parent_fully:
                fully.append(module_name)
            elif 0 < f < t:
                partly.append(module_name)
        rows: list[_Row] = []

        def walk(module: nn.Module, prefix: str, depth: int) -> None:
            for child_name, child in module.named_children():
                full = f"{prefix}{child_name}"
                f, t, fn, n = stats.get(full, (0, 0, 0, 0))
                if t == 0:
                    continue
                rows.append(_Row(full, depth, f, t, fn, n))
                if 0 < f < t:
                    walk(child, full + ".", depth + 1)

        walk(model, "", 0)
        return cls(
            frozen=frozen,
            trainable=trainable,
            frozen_numel=sum(p.numel() for n, p in named if n in frozen_set),
            trainable_numel=sum(p.numel() for n, p in named if n not in frozen_set),
            fully_frozen_modules=tuple(fully),
            partly_frozen_modules=tuple(partly),
            bn_eval=tuple(n for n, m in model.named_modules() if _is_held(m)),
            _rows=tuple(rows),
        )

    def __str__(self) -> str:
        held = set(self.bn_eval)
        table = [("layer", "frozen tensors", "frozen params", "state")]
        for row in self._rows:
            state = (
                "frozen"
                if row.frozen_tensors == row.tensors
                else "trainable"
                if row.frozen_tensors == 0
                else "partly frozen"
            )
            n_held = sum(1 for h in held if h == row.name or h.startswith(row.name + "."))
            if n_held and row.frozen_tensors == row.tensors:
                state += ", BN eval" if n_held == 1 and row.name in held else f", {n_held} BN eval"
            table.append(
                (
                    "  " * row.depth + row.name,
                    f"{row.frozen_tensors}/{row.tensors}",
                    f"{row.frozen_numel:,}/{row.numel:,}",
                    state,
                )
            )
        widths = [max(len(r[i]) for r in table) for i in range(3)]
        lines = [
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in table
        ]
        total_numel = self.frozen_numel + self.trainable_numel
        share = 100.0 * self.frozen_numel / total_numel if total_numel else 0.0
        n_bn = len(self.bn_eval)
        lines.append(
            f"frozen {len(self.frozen)} of {len(self.frozen) + len(self.trainable)} tensors, "
            f"{self.frozen_numel:,} of {total_numel:,} parameters ({share:.1f}%); "
            f"{n_bn} BatchNorm layer{'' if n_bn == 1 else 's'} held in eval"
        )
        return "\n".join(lines)
