"""Your images in, a classifier out: [tlkit.finetune][] picks and runs a transfer recipe.

Built only from tlkit's public pieces: [tlkit.backbone][], [tlkit.FreezePolicy][],
[tlkit.replace_head][], [tlkit.split][], [tlkit.augment.BatchAugment][],
[tlkit.extract_features][], [tlkit.discriminative_param_groups][] and [tlkit.Trainer][].

Three recipes:

- ``"probe"``: one pass of the frozen pretrained body over the images, then a linear head
  trained on the cached features. Seconds of training; the right choice for a handful of
  images per class, or when the budget does not allow a pass of back-propagation.
- ``"lp-ft"``: the probe, then the whole network fine-tuned from it at small, layer-wise
  decaying learning rates (Kumar et al., "Fine-Tuning can Distort Pretrained Features and
  Underperform Out-of-Distribution", ICLR 2022: a trained head keeps fine-tuning from
  destroying the features).
- ``"full"``: the whole network fine-tuned from a new head, with layer-wise learning rates.

``recipe="auto"`` measures this machine's speed for the backbone, then chooses the recipe, the
resolution, the memory format and the epochs from the images per class and the budget, and
says why: the probe for fewer than 20 images per class (or no time for a fine-tuning epoch);
``"full"`` with the probe run first below 60 training images per class, where the fine-tuned
model is kept only if it is more accurate on the validation images by more than one standard
error (the one-standard-error rule: the probe is the simpler and steadier model); ``"full"``
with the whole budget from 60 per class up, where fine-tuning beat the probe in 17 of 18 paired
runs of ``benchmarks/backbone_ranking.py`` (by 2.6 points on average). On Fashion-MNIST,
fine-tuning from a new head beat fine-tuning from the probe's head at equal time
(``benchmarks/auto_recipe.py``): the probe's head fits features computed with BatchNorm frozen
at ImageNet statistics, which fine-tuning changes.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.transforms import v2

from . import heads
from ._steps import flip_average
from ._utils import check_positive_int, plural
from .augment import BatchAugment
from .backbones import BackboneInfo, KeyMap, backbone, check_key_map, check_name
from .callbacks import Callback, LRScheduler, ModelCheckpoint
from .data import ImageDataset, read_image, to_rgb
from .features import FeatureBatches, extract_features
from .freeze import FreezePolicy, unfreeze
from .history import History
from .optim import discriminative_param_groups
from .progress import ProgressBar
from .ranking import BackboneScore, rank_backbones
from .splits import split
from .trainer import Trainer

__all__ = ["FinetuneResult", "Recipe", "finetune", "load_model", "parse_budget"]

RecipeName = Literal["auto", "probe", "lp-ft", "full"]
_RECIPES = ("auto", "probe", "lp-ft", "full")
_FEW_PER_CLASS = 20  # below this many training images per class, fine-tuning overfits: probe
_PROBE_FIRST_BELOW = 60  # below this, auto runs a probe first and keeps it unless beaten
_MAX_EPOCHS = 12
_KEEP_MARGIN = 1.0  # standard errors by which fine-tuning must beat the probe to be kept
_RANK_IMAGES = 500  # LogME sample for several backbones (a stratified sample of the images)
_RANK_SHARE = 0.25  # at most this share of the budget left goes to ranking them
_RANK_LEAST_PER_CLASS = 5  # with fewer images than this per class (and 50), no ranking


def parse_budget(text: str | float | int | None) -> float | None:
    """Seconds from ``"90s"``, ``"5m"``, ``"1h30m"``, ``"1.5h"`` or a number of seconds.

    Raises:
        ValueError: For anything else, or a budget that is not positive.

    Examples:
        >>> parse_budget("5m"), parse_budget("1h30m"), parse_budget(90), parse_budget(None)
        (300.0, 5400.0, 90.0, None)
    """
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        seconds, number = 0.0, ""
        units = {"h": 3600.0, "m": 60.0, "s": 1.0}
        try:
            for char in raw:
                if char in units:
                    seconds += float(number) * units[char]
                    number = ""
                else:
                    number += char
            if number:
                seconds += float(number)
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            f"budget must be a positive duration such as '90s', '5m', '1h30m' or a number of "
            f"seconds, got {text!r}"
        )
    return seconds


@dataclass
class Recipe:
    """What [tlkit.finetune][] runs, with the reason for each choice.

    Once [tlkit.finetune][] has returned, ``kept`` says which trained model it returned:
    ``"probe"`` (the head on the frozen body) or ``"fine-tuned"``; ``None`` before training.

    Examples:
        >>> Recipe(name="probe", image_size=96).name
        'probe'
    """

    name: Literal["probe", "lp-ft", "full"]
    image_size: int
    probe_epochs: int = 0
    finetune_epochs: int = 0
    lr: float = 1e-3
    layer_decay: float = 0.9
    crop_scale: float = 0.35
    batch_size: int = 32
    channels_last: bool = False
    reasons: list[str] = field(default_factory=list)
    kept: Literal["probe", "fine-tuned"] | None = None

    def describe(self) -> str:
        """The recipe and its reasons, one line each; once trained, which model was kept."""
        head = (
            f"recipe {self.name}: {self.image_size} px"
            + (
                f", {plural(self.probe_epochs, 'head epoch')} on cached features"
                if self.probe_epochs
                else ""
            )
            + (
                f", {plural(self.finetune_epochs, 'fine-tuning epoch')}"
                if self.finetune_epochs
                else ""
            )
            + (f"; returned the {self.kept} model" if self.kept else "")
        )
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


@dataclass
class FinetuneResult:
    """A trained classifier with everything needed to use it on new images.

    Attributes:
        model: The network (eval mode, CPU), taking normalised ``(N, 3, S, S)`` batches.
        classes: Class names, in output order.
        info: The backbone's [tlkit.BackboneInfo][].
        backbone: The backbone's name.
        image_size: ``S``: images are resized (short side) and centre-cropped to this.
        mean: Normalisation mean.
        std: Normalisation std.
        background: RGB colour under transparent pixels.
        recipe: The [tlkit.recipes.Recipe][] that ran, with its reasons.
        history: Every epoch of every stage (``stage`` column: ``probe`` or ``finetune``).
        val_metrics: Metrics of the kept model on the validation images.
        seconds: Wall time of the whole call.
        skipped: Unreadable files left out.
        val_images: The validation images as decoded (uint8 ``(N, 3, S, S)``).
        val_labels: Their labels.
        val_probs: The kept model's probabilities for them.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        ...     (root / name).mkdir()
        ...     for i in range(6):
        ...         Image.new("RGB", (32, 32), colour).save(root / name / f"{i}.png")
        >>> result = finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
        ...                   image_size=32, verbose=False)
        >>> result.save(root / "model.pt").name, result.val_metrics["count"]
        ('model.pt', 2)
    """

    model: nn.Module
    classes: list[str]
    info: BackboneInfo
    backbone: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    background: tuple[int, int, int]
    recipe: Recipe
    history: History
    val_metrics: dict[str, Any]
    seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)
    val_images: torch.Tensor | None = field(default=None, repr=False)
    val_labels: torch.Tensor | None = field(default=None, repr=False)
    val_probs: torch.Tensor | None = field(default=None, repr=False)

    def preprocess(self, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """Normalised ``(N, 3, S, S)`` float batch from PIL images or paths."""
        return _normalise(_decode(images, self.image_size, self.background), self.mean, self.std)

    @torch.no_grad()
    def predict(
        self, images: Sequence[Image.Image | str | Path], *, tta: bool = False
    ) -> torch.Tensor:
        """Class probabilities ``(N, K)`` for PIL images or image paths; ``tta=True`` averages
        them with the mirror images' (flip test-time augmentation, twice the compute)."""
        self.model.eval()
        x = self.preprocess(images)
        if tta:
            return flip_average(self.model, x, log_probs=False).exp()
        return self.model(x).softmax(1)

    def save(self, path: str | Path) -> Path:
        """Save weights and preprocessing to ``path`` (loadable with ``weights_only=True``)."""
        from ._utils import atomic_save

        return atomic_save(
            {
                "tlkit_model": 1,
                "backbone": self.backbone,
                "classes": list(self.classes),
                "image_size": self.image_size,
                "mean": list(self.mean),
                "std": list(self.std),
                "background": list(self.background),
                "recipe": self.recipe.name,
                "kept": self.recipe.kept,
                "state_dict": self.model.state_dict(),
            },
            path,
        )


def load_model(path: str | Path) -> FinetuneResult:
    """A model saved by [tlkit.recipes.FinetuneResult.save][] (``RUN/model.pt``), ready to
    predict; history and metrics are not part of the file.

    Raises:
        FileNotFoundError: If there is no such file (a run folder is looked into).
        ValueError: If the file is not a tlkit model.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        ...     (root / name).mkdir()
        ...     for i in range(6):
        ...         Image.new("RGB", (32, 32), colour).save(root / name / f"{i}.png")
        >>> result = finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
        ...                   image_size=32, verbose=False)
        >>> loaded = load_model(result.save(root / "model.pt"))
        >>> loaded.classes, bool(torch.allclose(loaded.predict([root / "red" / "0.png"]),
        ...                                     result.predict([root / "red" / "0.png"])))
        (['blue', 'red'], True)
    """
    from .checkpoint import load_file

    file = Path(path)
    if file.is_dir():
        file = file / "model.pt"
    state = load_file(file, what="model")
    if not isinstance(state, dict) or state.get("tlkit_model") != 1:
        raise ValueError(f"{str(file)!r} is not a model written by tlkit fit / finetune")
    model, info = backbone(state["backbone"], None)
    heads.replace_head(model, lambda n: heads.linear(n, len(state["classes"]), dropout=0.1))
    model.load_state_dict(state["state_dict"])
    background = tuple(int(v) for v in state["background"])
    return FinetuneResult(
        model=model.eval(),
        classes=list(state["classes"]),
        info=info,
        backbone=state["backbone"],
        image_size=int(state["image_size"]),
        mean=tuple(float(v) for v in state["mean"]),
        std=tuple(float(v) for v in state["std"]),
        background=(background[0], background[1], background[2]),
        recipe=Recipe(
            name=state["recipe"], image_size=int(state["image_size"]), kept=state.get("kept")
        ),
        history=History(),
        val_metrics={},
        seconds=0.0,
    )


# --------------------------------------------------------------------------- images
def _square(image: Image.Image, size: int) -> torch.Tensor:
    """uint8 ``(3, size, size)``: short side resized to ``size``, centre crop."""
    tensor = v2.functional.to_image(image)
    tensor = v2.functional.resize(tensor, size, antialias=True)
    return v2.functional.center_crop(tensor, size).as_subclass(torch.Tensor)


class _Decoded(Dataset[torch.Tensor]):
    def __init__(self, data: ImageDataset, size: int) -> None:
        self.data, self.size = data.with_min_side(size), size  # JPEGs decoded at a reduced scale

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return _square(self.data.load(index), self.size)


def _decode_dataset(data: ImageDataset, size: int) -> torch.Tensor:
    """Every image decoded once, as a uint8 ``(N, 3, S, S)`` tensor (decoding costs more than
    the model on large PNGs; epochs then read memory)."""
    loader = DataLoader(_Decoded(data, size), batch_size=64, num_workers=min(4, _cores()))
    return torch.cat(list(loader))


def _decode(
    images: Sequence[Image.Image | str | Path], size: int, background: Sequence[int]
) -> torch.Tensor:
    rgb = [
        to_rgb(item, background=background)
        if isinstance(item, Image.Image)
        else read_image(item, background=background, min_side=size)
        for item in images
    ]
    return torch.stack([_square(image, size) for image in rgb])


def _normalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(list(mean)).view(1, 3, 1, 1)
    s = torch.tensor(list(std)).view(1, 3, 1, 1)
    return (batch.float() / 255 - m) / s


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- planning
def _stages(model: nn.Module) -> list[str]:
    """Input-to-output stages for layer-wise learning rates: top-level children, with long
    Sequential/ModuleList children (timm's ``blocks``, torchvision's ``features``) opened up."""
    stages = []
    for name, child in model.named_children():
        if not _has_params(child):
            continue
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) >= 3:
            stages += [f"{name}.{i}" for i, sub in enumerate(child) if _has_params(sub)]
        else:
            stages.append(name)
    return stages


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _time_batches(
    model: nn.Module,
    size: int,
    batch: int,
    *,
    train: bool,
    channels_last: bool = False,
    timed: int = 2,
) -> float:
    """Images per second of ``model`` at ``size`` px on random input: one warm-up batch, then the
    median of ``timed`` batches.

    The model's state (BatchNorm statistics included) and memory format are restored afterwards.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(batch, 3, size, size)
    y = torch.zeros(batch, dtype=torch.long)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    rates = []
    for i in range(1 + timed):
        start = time.perf_counter()
        if train:
            model.train()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model.eval()(x)
        if i:
            rates.append(batch / (time.perf_counter() - start))
    model.to(memory_format=torch.contiguous_format)
    model.load_state_dict(saved)
    model.eval()
    return statistics.median(rates)


def _batch_size(n_train: int) -> int:
    """32 images per step for small datasets (more steps), 64 from 4,000 images (CPUs run
    larger batches faster per image)."""
    return 64 if n_train >= 4000 else 32


def _measure(model: nn.Module, size: int, batch: int) -> tuple[float, float, bool, str]:
    """``(inference img/s, training img/s, channels_last, reason)`` on this machine, training
    timed at the batch size it will use: both memory formats are timed and the faster kept
    (channels-last convolutions are often much faster on CPUs, sometimes slower)."""
    # one timed batch after the warm-up: these steps come out of the budget (about 4 s each for
    # EfficientNet-Lite1 at 240 px on 2 cores), and the formats differ by far more than the noise
    rates = {
        cl: _time_batches(model, size, batch, train=True, channels_last=cl, timed=1)
        for cl in (False, True)
    }
    channels_last = rates[True] > 1.05 * rates[False]
    infer = _time_batches(model, size, 32, train=False, channels_last=channels_last, timed=1)
    layout = "channels-last" if channels_last else "channels-first"
    reason = (
        f"{layout} memory format: {max(rates.values()) / min(rates.values()):.1f}x the training "
        f"speed of the other on this machine"
    )
    return infer, max(rates.values()), channels_last, reason


def _median_side(data: ImageDataset, sample: int = 64) -> int:
    sides = []
    step = max(1, len(data) // sample)
    for path in data.files[::step][:sample]:
        with Image.open(path) as image:  # reads the header only
            sides.append(min(image.size))
    return int(statistics.median(sides))


def _choose_size(native: int, median_side: int) -> tuple[int, str]:
    wanted = max(64, min(native, 8 * math.ceil(median_side * 2.5 / 8)))
    if wanted >= native:
        return native, f"{native} px: the backbone's pretraining size"
    return wanted, (
        f"{wanted} px: the images are small (median side {median_side} px), and upscaling them "
        f"to the backbone's {native} px would cost {native**2 / wanted**2:.1f}x the compute"
    )


def _plan(
    name: RecipeName,
    *,
    n_train: int,
    n_val: int,
    classes: int,
    size: int,
    size_reason: str,
    infer_rate: float,
    train_rate: float,
    remaining: float | None,
    batch_size: int = 32,
    channels_last: bool = False,
    layout_reason: str = "",
) -> Recipe:
    per_class = n_train / classes
    shown = f"{per_class:.1f}".removesuffix(".0")  # 59.5 is below 60: never show it rounded up
    feature_pass = (n_train + n_val) / infer_rate
    epoch = n_train / train_rate + n_val / infer_rate
    reasons = [size_reason, f"{shown} training images per class over {classes} classes"]
    reasons.append(
        f"this machine: {infer_rate:.0f} img/s through the frozen body, {train_rate:.0f} img/s "
        f"training everything ({epoch:.0f} s per fine-tuning epoch)"
    )
    if layout_reason:
        reasons.append(layout_reason)
    if remaining is not None and remaining > 0:
        reasons.append(f"{remaining:.0f} s of the budget left for training")
    elif remaining is not None:
        reasons.append(
            f"the budget is spent ({-remaining:.0f} s over) before training: the probe, the least "
            "that gives a model, runs anyway"
        )
    fallback = False  # auto: a probe first, kept unless fine-tuning is clearly better
    if name == "auto":
        probe_first = per_class < _PROBE_FIRST_BELOW
        probe_cost = feature_pass * 1.2 if probe_first else 0.0
        affordable = _MAX_EPOCHS if remaining is None else int((remaining - probe_cost) / epoch)
        if per_class < _FEW_PER_CLASS:
            name = "probe"
            reasons.append(
                f"probe: fewer than {_FEW_PER_CLASS} images per class; fine-tuning millions of "
                "weights on so few overfits, a linear head on pretrained features does not"
            )
        elif affordable < 1:
            name = "probe"
            reasons.append("probe: the budget does not allow one fine-tuning epoch")
        elif not probe_first:
            name = "full"
            reasons.append(
                f"full: everything fine-tuned from a new head at layer-wise rates, the whole "
                f"budget on it: from {_PROBE_FIRST_BELOW} training images per class up, no probe "
                "first (in tlkit's benchmarks fine-tuning beat the linear probe in 17 of 18 "
                "paired runs at 76-85 per class, by 2.6 points on average, and tied it at 43)"
            )
        else:
            name, fallback = "full", True
            reasons.append(
                "full: everything fine-tuned from a new head at layer-wise rates, after a "
                f"linear probe ({shown} training images per class, below {_PROBE_FIRST_BELOW}), "
                "which is kept unless fine-tuning is more accurate on the "
                "validation images by more than one standard error (fine-tuning from the "
                "probe's head, lp-ft, did worse in tlkit's benchmarks: the head fits "
                "frozen-BatchNorm features that fine-tuning changes)"
            )
    recipe = Recipe(name=name, image_size=size, reasons=reasons, batch_size=batch_size,
                    channels_last=channels_last)  # fmt: skip
    if name in ("probe", "lp-ft") or fallback:
        recipe.probe_epochs = 40
    if name in ("lp-ft", "full"):
        cost = feature_pass * 1.2 if recipe.probe_epochs else 0.0
        if remaining is None:
            epochs = max(2, min(_MAX_EPOCHS, math.ceil(30_000 / max(n_train, 1))))
            why = "no budget given: epochs scaled to see about 30,000 images"
        else:
            epochs = max(1, min(_MAX_EPOCHS, int((remaining - cost) / epoch)))
            fits = "fits" if epochs == 1 else "fit"
            why = f"{plural(epochs, 'epoch')} {fits} the budget (at most {_MAX_EPOCHS})"
        recipe.finetune_epochs = epochs
        recipe.lr = 2e-3
        # few passes over the data are better spent on the images than on hard crops of them
        recipe.crop_scale = 0.35 if epochs >= 8 else 0.8
        recipe.reasons.append(
            f"{why}; AdamW at {recipe.lr:g} for the head, x{recipe.layer_decay:g} per stage "
            "towards the input, one-cycle schedule, label smoothing 0.1, flips and random crops "
            f"of at least {recipe.crop_scale:.0%} of the image"
        )
    return recipe


# --------------------------------------------------------------------------- training
def _loader(images: torch.Tensor, labels: torch.Tensor, batch: int, shuffle: bool) -> DataLoader:
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    return DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=shuffle,
                      generator=generator)  # fmt: skip


def _records(history: History, stage: str) -> list[dict[str, Any]]:
    return [{"stage": stage, **record} for record in history.records]


def _train_probe(
    model: nn.Module,
    head_path: str,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    augment: BatchAugment,
    recipe: Recipe,
    log: Any,
) -> History:
    train_x, train_y, val_x, val_y = data
    FreezePolicy(train_only=[head_path], bn="eval").apply(model)
    augment.eval()
    layout = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model.to(memory_format=layout)

    def transform(x: torch.Tensor) -> torch.Tensor:
        return augment(x).contiguous(memory_format=layout)

    with heads.headless(model) as (_, head):
        train_f = extract_features(model, _loader(train_x, train_y, 128, False),
                                   batch_transform=transform)  # fmt: skip
        val_f = extract_features(model, _loader(val_x, val_y, 256, False),
                                 batch_transform=transform)  # fmt: skip
    model.to(memory_format=torch.contiguous_format)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.probe_epochs)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            head,
            optimizer=optimizer,
            device="cpu",
            verbose=False,
            callbacks=[
                LRScheduler(schedule),
                ModelCheckpoint(folder, monitor="val_accuracy", restore_best=True, save_last=False),
            ],
        )
        history = trainer.fit(FeatureBatches(train_f, 64, shuffle=True),
                              FeatureBatches(val_f, 512), epochs=recipe.probe_epochs)  # fmt: skip
    best = max(history["val_accuracy"])
    log(f"probe: linear head on {train_f.tensors[0].shape[1]}-d features, best val {best:.4f}")
    return history


def _train_full(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    augment: BatchAugment,
    recipe: Recipe,
    deadline: float | None,
    log: Any,
) -> History:
    train_x, train_y, val_x, val_y = data
    unfreeze(model)
    stages = _stages(model)
    groups = discriminative_param_groups(model, recipe.lr, decay=recipe.layer_decay, stages=stages)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    train = _loader(train_x, train_y, recipe.batch_size, True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=recipe.finetune_epochs * len(train),
        pct_start=0.15,
    )
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            model,
            optimizer=optimizer,
            loss=nn.CrossEntropyLoss(label_smoothing=0.1),
            device="cpu",
            verbose=False,
            batch_transform=augment,
            channels_last=recipe.channels_last,
            callbacks=[
                LRScheduler(schedule, interval="step"),
                ModelCheckpoint(folder, monitor="val_accuracy", restore_best=True, save_last=False),
                _Deadline(deadline),
                ProgressBar(deadline=deadline),
            ],
        )
        history = trainer.fit(train, _loader(val_x, val_y, 256, False),
                              epochs=recipe.finetune_epochs)  # fmt: skip
    model.to(memory_format=torch.contiguous_format)
    log(f"fine-tuned {plural(len(history), 'epoch')}, best val {max(history['val_accuracy']):.4f}")
    return history


def _evaluator(model: nn.Module, augment: BatchAugment) -> Trainer:
    """A Trainer that scores ``model`` on the validation images through the eval transform."""
    return Trainer(model, device="cpu", verbose=False, batch_transform=augment.eval())


def _fine_tuning_wins(
    probe_right: torch.Tensor, tuned_right: torch.Tensor, margin: float = _KEEP_MARGIN
) -> tuple[bool, str]:
    """Keep the fine-tuned model rather than the probe? Only when it is more accurate on the
    same validation images by more than one standard error of the paired difference: the
    one-standard-error rule (Breiman et al., "Classification and Regression Trees", 1984;
    Hastie, Tibshirani and Friedman, "The Elements of Statistical Learning", section 7.10),
    which keeps the simpler model unless the other is better beyond the noise of the estimate.

    The probe is the simpler and the steadier of the two: on Fashion-MNIST at 50 images per
    class, fine-tuning scored 75.9-79.8% on the test images in five runs of
    ``benchmarks/auto_recipe.py`` with one seed, against the probe's 78.7% in every run, and a
    fine-tuned model's validation score is the best of up to 12 epochs. The rule is only used
    below 60 training images per class: above, a validation set of a hundred-odd images did not
    resolve fine-tuning's 2-3 point lead (``benchmarks/keep_rule.py``), so auto fine-tunes
    without a probe. ``margin`` is in standard errors (that benchmark compares 0, 0.5 and 1).

    Examples:
        >>> right = torch.tensor([True] * 70 + [False] * 5)
        >>> _fine_tuning_wins(right, right.roll(2))[0]  # 2 images each way: a tie
        False
        >>> _fine_tuning_wins(torch.tensor([True] * 40 + [False] * 35), right)[0]
        True
    """
    n = len(probe_right)
    only_probe = int((probe_right & ~tuned_right).sum())
    only_tuned = int((tuned_right & ~probe_right).sum())
    gain = (only_tuned - only_probe) / n  # mean of the per-image differences (+1, 0 or -1)
    # its standard error if the two were equally accurate (McNemar's), which stays sound when
    # few images differ, unlike the sample estimate
    error = math.sqrt(only_tuned + only_probe) / n
    probe, tuned = probe_right.float().mean().item(), tuned_right.float().mean().item()
    scores = (
        f"validation accuracy {tuned:.4f} fine-tuned, {probe:.4f} probe: "
        f"{plural(only_tuned, 'image')} right only when fine-tuned, "
        f"{only_probe} only by the probe"
    )
    if gain > margin * error:
        return True, (
            f"kept the fine-tuned model ({scores}; +{gain:.4f} > {margin:g} s.e. {error:.4f})"
        )
    return False, (
        f"kept the probe ({scores}; {gain:+.4f} <= {margin:g} s.e. {error:.4f}): fine-tuning is "
        f"kept only when better by more than {margin:g} standard error"
    )


class _Deadline(Callback):
    """Stop after the epoch that leaves too little time for another one."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def on_epoch_end(
        self, trainer: Any, *, epoch: int, metrics: dict[str, Any], **kwargs: Any
    ) -> None:
        if self.deadline is not None and time.perf_counter() + metrics["seconds"] > self.deadline:
            trainer.should_stop = True


# --------------------------------------------------------------------------- entry point
def finetune(
    train: ImageDataset | str | Path,
    *,
    backbone_name: str | Sequence[str] = "timm/efficientnet_lite0",
    weights: str | Path | None = "imagenet",
    key_map: KeyMap = "strict",
    budget: float | str | None = None,
    val: ImageDataset | str | Path | None = None,
    recipe: RecipeName = "auto",
    image_size: int | None = None,
    background: Sequence[int] = (255, 255, 255),
    on_error: Literal["raise", "skip"] = "raise",
    seed: int = 0,
    verbose: bool = True,
    started: float | None = None,
) -> FinetuneResult:
    """Fine-tune a pretrained backbone on labelled images, choosing the recipe for you.

    Args:
        train: An [tlkit.ImageDataset][], or a folder (``root/<class>/<image>``) or CSV
            (``path,label``) to build one from.
        backbone_name: A [tlkit.backbone][] name, or several: they are ranked by LogME
            ([tlkit.rank_backbones][]) on at most 500 of the training images at the size each
            would train at, within the budget, and the best is fine-tuned.
        weights: ``"imagenet"``, a local checkpoint path (of one backbone), or ``None``.
        key_map: How a local checkpoint's keys meet the model's (see [tlkit.backbone][]):
            ``"by_order"`` for one saved by another implementation of the architecture.
        budget: Time for the whole call (``"5m"``, seconds); ``None`` picks epochs from the data.
        val: Validation images; default a stratified 15% of ``train`` held out.
        recipe: ``"auto"``, ``"probe"``, ``"lp-ft"`` or ``"full"`` (see the module).
        image_size: Force the resolution; default chosen from the images and the backbone.
        background: RGB colour under transparent pixels.
        on_error: ``"raise"`` or ``"skip"`` unreadable files (listed in ``result.skipped``).
        seed: Seed of the split, the head and the data order.
        verbose: Print each choice with its reason, and progress.
        started: ``time.perf_counter()`` at which the budget started (default: now).

    Returns:
        A [tlkit.recipes.FinetuneResult][]: the model with the best validation accuracy,
        its preprocessing, the recipe and its reasons, history and validation metrics.

    Raises:
        ValueError: For a bad ``recipe``, ``budget``, ``image_size``, a dataset with fewer than
            two classes or too few images to hold out a validation image per class, repeated
            backbone names, one checkpoint file for several backbones, or a bad ``key_map``.
        KeyError: For an unknown backbone name (before any image is read).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        ...     (root / name).mkdir()
        ...     for i in range(6):
        ...         Image.new("RGB", (32, 32), colour).save(root / name / f"{i}.png")
        >>> result = finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
        ...                   image_size=32, verbose=False)
        >>> result.classes, result.recipe.name, result.predict([root / "red" / "0.png"]).shape
        (['blue', 'red'], 'probe', torch.Size([1, 2]))
    """
    start = time.perf_counter() if started is None else started
    if recipe not in _RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(_RECIPES)}, got {recipe!r}")
    seconds = parse_budget(budget)
    if image_size is not None:
        check_positive_int("image_size", image_size)
    deadline = start + seconds if seconds is not None else None
    names = [backbone_name] if isinstance(backbone_name, str) else list(backbone_name)
    if not names or len(set(names)) < len(names):
        raise ValueError(f"backbone_name must be one name or several different ones, got {names}")
    for name in names:
        check_name(name)  # a typo fails now, not after the images are checked
    if len(names) > 1 and weights is not None and str(weights).lower() != "imagenet":
        raise ValueError(
            f"weights={str(weights)!r} with {len(names)} backbones: a checkpoint file holds the "
            "weights of one architecture; rank several with weights='imagenet' (or None), or "
            "pass one backbone_name with its file"
        )
    check_key_map(key_map)  # before any image is read

    def log(message: str) -> None:
        if verbose:
            print(message, flush=True)

    data = _as_dataset(train, background, on_error)
    held_out = _as_dataset(val, background, on_error) if val is not None else None
    if len(data.classes) < 2:
        raise ValueError(f"a classifier needs at least two classes, found {data.classes}")
    if held_out is not None and held_out.classes != data.classes:
        raise ValueError(f"val has classes {held_out.classes}, train has {data.classes}")
    if held_out is None:
        counts = [data.targets.count(c) for c in range(len(data.classes))]
        if min(counts) < 2:
            raise ValueError(
                f"class {data.classes[counts.index(min(counts))]!r} has {min(counts)} image; "
                "holding out validation images needs at least 2 per class (or pass val=)"
            )
        n_val = max(len(data.classes), round(0.15 * len(data)))
        train_idx, val_idx = split(len(data), (len(data) - n_val, n_val), seed=seed,
                                   stratify=data.targets)  # fmt: skip
    else:
        train_idx, val_idx = torch.arange(len(data)), None
    median_side = _median_side(data)
    chosen = []
    if len(names) > 1:
        ranking, why = _rank(names, weights, data, image_size, median_side, seed, deadline)
        names = [ranking[0].name] if ranking else names[:1]
        chosen.append(why)
        log(why)
    torch.manual_seed(seed)
    model, info = backbone(names[0], weights, key_map=key_map)
    head_path, _ = heads.find_head(model)

    def new_head(features: int) -> nn.Module:
        return heads.linear(features, len(data.classes), dropout=0.1)

    heads.replace_head(model, new_head)
    if image_size is not None:
        size, size_reason = image_size, f"{image_size} px: given"
    else:
        size, size_reason = _choose_size(info.input_size, median_side)
    batch_size = _batch_size(len(train_idx))
    infer_rate, train_rate, channels_last, layout_reason = _measure(model, size, batch_size)
    images = _decode_dataset(data, size)  # before planning: the plan gets the time left
    labels = torch.tensor(data.targets)
    if held_out is None:
        assert val_idx is not None
        split_data = (images[train_idx], labels[train_idx], images[val_idx], labels[val_idx])
    else:
        split_data = (images, labels, _decode_dataset(held_out, size),
                      torch.tensor(held_out.targets))  # fmt: skip
    plan = _plan(
        recipe,
        n_train=len(split_data[1]),
        n_val=len(split_data[3]),
        classes=len(data.classes),
        size=size,
        size_reason=size_reason,
        infer_rate=infer_rate,
        train_rate=train_rate,
        remaining=None if deadline is None else deadline - time.perf_counter(),
        batch_size=batch_size,
        channels_last=channels_last,
        layout_reason=layout_reason,
    )
    plan.reasons[:0] = chosen
    log(plan.describe())
    augment = BatchAugment(size, scale=(plan.crop_scale, 1.0), info=info)
    records: list[dict[str, Any]] = []
    val_loader = _loader(split_data[2], split_data[3], 256, False)
    val_probs = None
    if plan.probe_epochs:
        records += _records(_train_probe(model, head_path, split_data, augment, plan, log), "probe")
        plan.kept = "probe"
    if plan.finetune_epochs:
        probe_state = {k: v.clone() for k, v in model.state_dict().items()}
        if plan.name == "full" and plan.probe_epochs:  # fine-tuning starts from a new head
            torch.manual_seed(seed)
            heads.replace_head(model, new_head)
        history = _train_full(model, split_data, augment, plan, deadline, log)
        records += _records(history, "finetune")
        plan.kept = "fine-tuned"
        if plan.probe_epochs:  # the probe ran: keep whichever of the two the rule prefers
            tuned_state = {k: v.clone() for k, v in model.state_dict().items()}
            tuned_probs = _evaluator(model, augment).predict(val_loader)
            model.load_state_dict(probe_state)
            val_probs = _evaluator(model, augment).predict(val_loader)
            keep_tuned, why = _fine_tuning_wins(val_probs.argmax(1) == split_data[3],
                                                tuned_probs.argmax(1) == split_data[3])  # fmt: skip
            if keep_tuned:
                model.load_state_dict(tuned_state)
                val_probs = tuned_probs
            else:
                plan.kept = "probe"  # the probe's state is loaded back
            unfreeze(model)
            plan.reasons.append(why)
            log(why)
    model.eval()
    evaluator = _evaluator(model, augment)
    val_metrics = evaluator.evaluate(val_loader)
    if val_probs is None:
        val_probs = evaluator.predict(val_loader)
    return FinetuneResult(
        model=model,
        classes=list(data.classes),
        info=info,
        backbone=names[0],
        image_size=size,
        mean=tuple(info.mean),
        std=tuple(info.std),
        background=data.background,
        recipe=plan,
        history=History(records),
        val_metrics=val_metrics,
        seconds=time.perf_counter() - start,
        skipped=list(data.skipped) + (list(held_out.skipped) if held_out else []),
        val_images=split_data[2],
        val_labels=split_data[3],
        val_probs=val_probs,
    )


def _rank(
    names: list[str],
    weights: str | Path | None,
    data: ImageDataset,
    image_size: int | None,
    median_side: int,
    seed: int,
    deadline: float | None,
) -> tuple[list[BackboneScore], str]:
    """LogME of each candidate at the size it would train at, best first, and the sample it
    used; with a deadline, on as many images as fit in a quarter of the time left (each
    architecture timed here first), or ``([], reason)`` when too few would."""
    sizes, seconds_per_image = dict.fromkeys(names, image_size or 0), 0.0
    for name in names:
        if image_size is not None and deadline is None:
            continue
        model, info = backbone(name, None)  # the architecture alone: its size, its speed here
        sizes[name] = image_size or _choose_size(info.input_size, median_side)[0]
        if deadline is not None:
            seconds_per_image += 1 / _time_batches(
                model, sizes[name], 8, train=False, channels_last=True
            )
    sample, note = min(_RANK_IMAGES, len(data)), ""
    if deadline is not None:
        start = time.perf_counter()
        drafted = data.with_min_side(min(sizes.values()))
        for index in range(min(4, len(data))):
            drafted.load(index)
        decode = (time.perf_counter() - start) / min(4, len(data))
        share = _RANK_SHARE * (deadline - time.perf_counter())
        per_image = seconds_per_image + len(names) * decode
        least = min(len(data), max(_RANK_LEAST_PER_CLASS * len(data.classes), 50))
        if share < least * per_image:
            return [], (
                f"backbone {names[0]}, the first given: ranking {len(names)} backbones on "
                f"{least} images would take about {least * per_image:.0f} s here, more than a "
                f"quarter of the {share / _RANK_SHARE:.0f} s of budget left (a longer --budget "
                "ranks them)"
            )
        if share < sample * per_image:
            sample = int(share / per_image)
            note = ", fewer to fit a quarter of the budget"
    scores = []
    for name in names:
        candidate = (name, None if weights is None else str(weights))
        scores += rank_backbones([candidate], data, image_size=sizes[name], max_images=sample,
                                 seed=seed, verbose=False)  # fmt: skip
    ranking = sorted(scores, key=lambda score: score.score, reverse=True)
    return ranking, (
        f"backbone {ranking[0].name}: best LogME score of {len(ranking)} candidates on "
        f"{ranking[0].images} images{note} ("
        + ", ".join(f"{r.name} {r.score:.3f}" for r in ranking)
        + ")"
    )


def _as_dataset(
    source: ImageDataset | str | Path, background: Sequence[int], on_error: Any
) -> ImageDataset:
    if isinstance(source, ImageDataset):
        return source
    return ImageDataset.from_path(source, background=background, on_error=on_error)
