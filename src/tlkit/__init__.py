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

from . import (
    augment,
    callbacks,
    checkpoint,
    devices,
    distributed,
    exceptions,
    export,
    features,
    heads,
    report,
    taps,
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
from .optim import discriminative_param_groups
from .probe import LinearProbe
from .ranking import BackboneScore, logme, rank_backbones
from .recipes import FinetuneResult, Recipe, finetune, load_model
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
from .trainer import Trainer

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
    "checkpoint",
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
    "tta",
    "unfreeze",
]
