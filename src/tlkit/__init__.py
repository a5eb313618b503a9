"""tlkit: composable transfer learning for PyTorch.

The public surface: backbones by name, freeze policies, classifier heads, exact splits,
augmentation presets and a resumable Trainer with callbacks. Each piece works on plain PyTorch
objects and is useful alone.

Examples:
    >>> import tlkit
    >>> model, info = tlkit.backbone("resnet18", weights=None)
    >>> report = tlkit.FreezePolicy(up_to="layer2").apply(model)
    >>> model = tlkit.replace_head(model, lambda n: tlkit.heads.mlp(n, 10, hidden=(128,)))
    >>> train_idx, val_idx, test_idx = tlkit.split(5000, (0.8, 0.1, 0.1), seed=0)
    >>> train_tf, eval_tf = tlkit.augment.get("seed", image_size=96, info=info)
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what static tools (type checkers, the API docs) read
    from . import (
        augment,
        callbacks,
        devices,
        distributed,
        exceptions,
        export,
        features,
        heads,
        report,
        taps,
        training,
        tta,
    )
    from .augment import channel_stats
    from .backbones import BackboneInfo, backbone, imagenet_classes, load_weights
    from .callbacks import (
        EMA,
        Callback,
        EarlyStopping,
        GradualUnfreeze,
        HistoryLogger,
        LRScheduler,
        ModelCheckpoint,
        ProgressBar,
    )
    from .data import ImageDataset, WithTransform, read_image, to_rgb
    from .exceptions import NonFiniteLossError
    from .features import extract_features
    from .freeze import FreezePolicy, FreezeReport, unfreeze
    from .heads import replace_head
    from .history import History
    from .metrics import ClassificationMeter
    from .model import FinetuneResult, Recipe, load_model
    from .optim import discriminative_param_groups
    from .probe import LinearProbe
    from .ranking import BackboneScore, logme, rank_backbones
    from .recipes import finetune
    from .registry import Registry
    from .splits import (
        file_name_groups,
        join_groups,
        kfold,
        near_duplicate_groups,
        part_sizes,
        split,
    )
    from .taps import LayerTaps
    from .training.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "EMA",
    "BackboneInfo",
    "BackboneScore",
    "Callback",
    "ClassificationMeter",
    "EarlyStopping",
    "FinetuneResult",
    "FreezePolicy",
    "FreezeReport",
    "GradualUnfreeze",
    "History",
    "HistoryLogger",
    "ImageDataset",
    "LRScheduler",
    "LayerTaps",
    "LinearProbe",
    "ModelCheckpoint",
    "NonFiniteLossError",
    "ProgressBar",
    "Recipe",
    "Registry",
    "Trainer",
    "WithTransform",
    "__version__",
    "augment",
    "backbone",
    "callbacks",
    "channel_stats",
    "devices",
    "discriminative_param_groups",
    "distributed",
    "exceptions",
    "export",
    "extract_features",
    "features",
    "file_name_groups",
    "finetune",
    "heads",
    "imagenet_classes",
    "join_groups",
    "kfold",
    "load_model",
    "load_weights",
    "logme",
    "near_duplicate_groups",
    "part_sizes",
    "rank_backbones",
    "read_image",
    "replace_head",
    "report",
    "split",
    "taps",
    "to_rgb",
    "training",
    "tta",
    "unfreeze",
]

_LAZY: dict[str, tuple[str, str | None]] = {
    "augment": (".augment", None),
    "backbone": (".backbones", "backbone"),
    "BackboneInfo": (".backbones", "BackboneInfo"),
    "BackboneScore": (".ranking", "BackboneScore"),
    "Callback": (".callbacks", "Callback"),
    "callbacks": (".callbacks", None),
    "channel_stats": (".augment", "channel_stats"),
    "ClassificationMeter": (".metrics", "ClassificationMeter"),
    "devices": (".devices", None),
    "discriminative_param_groups": (".optim", "discriminative_param_groups"),
    "distributed": (".distributed", None),
    "EarlyStopping": (".callbacks", "EarlyStopping"),
    "EMA": (".callbacks", "EMA"),
    "exceptions": (".exceptions", None),
    "export": (".export", None),
    "extract_features": (".features", "extract_features"),
    "features": (".features", None),
    "file_name_groups": (".splits", "file_name_groups"),
    "finetune": (".recipes", "finetune"),
    "FinetuneResult": (".model", "FinetuneResult"),
    "FreezePolicy": (".freeze", "FreezePolicy"),
    "FreezeReport": (".freeze", "FreezeReport"),
    "GradualUnfreeze": (".callbacks", "GradualUnfreeze"),
    "heads": (".heads", None),
    "History": (".history", "History"),
    "HistoryLogger": (".callbacks", "HistoryLogger"),
    "ImageDataset": (".data", "ImageDataset"),
    "imagenet_classes": (".backbones", "imagenet_classes"),
    "join_groups": (".splits", "join_groups"),
    "kfold": (".splits", "kfold"),
    "LayerTaps": (".taps", "LayerTaps"),
    "LinearProbe": (".probe", "LinearProbe"),
    "load_model": (".model", "load_model"),
    "load_weights": (".backbones", "load_weights"),
    "logme": (".ranking", "logme"),
    "LRScheduler": (".callbacks", "LRScheduler"),
    "ModelCheckpoint": (".callbacks", "ModelCheckpoint"),
    "near_duplicate_groups": (".splits", "near_duplicate_groups"),
    "NonFiniteLossError": (".exceptions", "NonFiniteLossError"),
    "part_sizes": (".splits", "part_sizes"),
    "ProgressBar": (".callbacks", "ProgressBar"),
    "rank_backbones": (".ranking", "rank_backbones"),
    "read_image": (".data", "read_image"),
    "Recipe": (".model", "Recipe"),
    "Registry": (".registry", "Registry"),
    "replace_head": (".heads", "replace_head"),
    "report": (".report", None),
    "split": (".splits", "split"),
    "taps": (".taps", None),
    "to_rgb": (".data", "to_rgb"),
    "Trainer": (".training.trainer", "Trainer"),
    "training": (".training", None),
    "tta": (".tta", None),
    "unfreeze": (".freeze", "unfreeze"),
    "WithTransform": (".data", "WithTransform"),
}
"""Each public name and where it lives: imported when first used, so that loading a model and
predicting with it ([tlkit.load_model][]) does not import the training stack."""


def __getattr__(name: str) -> Any:
    """``tlkit.<name>``, imported from its module on first use (a submodule too, as
    ``tlkit.backbones``)."""
    if name not in _LAZY:
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    module, attribute = _LAZY[name]
    value = importlib.import_module(module, __name__)
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
