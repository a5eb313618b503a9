"""What [tlkit.finetune][] returns and how it is saved: the recipe with its reasons, the trained
classifier with its preprocessing, ``model.pt`` and [tlkit.load_model][].

This module imports nothing of the training stack, so [tlkit.export][] and [tlkit.report][]
can use a result without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn

from .. import heads
from .._steps import flip_average
from .._utils import atomic_save, plural
from ..backbones import BackboneInfo, backbone
from ..history import History
from .images import decode, normalise
from .settings import AUTO

__all__ = ["FinetuneResult", "Recipe", "build_head", "load_model"]


def build_head(features: int, classes: int) -> nn.Module:
    """The classifier [tlkit.finetune][] puts on a backbone, and [tlkit.load_model][] rebuilds
    to load its weights (one builder, so saved models keep loading)."""
    return heads.linear(features, classes, dropout=AUTO.head_dropout)


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
    lr: float = AUTO.lr
    layer_decay: float = AUTO.layer_decay
    crop_scale: float = AUTO.crop_scale
    batch_size: int = AUTO.batch_size
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
        recipe: The [tlkit.Recipe][] that ran, with its reasons.
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
        >>> from tlkit import finetune
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
        return normalise(decode(images, self.image_size, self.background), self.mean, self.std)

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
    """A model saved by [tlkit.FinetuneResult.save][] (``RUN/model.pt``), ready to
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
        >>> from tlkit import finetune
        >>> result = finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
        ...                   image_size=32, verbose=False)
        >>> loaded = load_model(result.save(root / "model.pt"))
        >>> loaded.classes, bool(torch.allclose(loaded.predict([root / "red" / "0.png"]),
        ...                                     result.predict([root / "red" / "0.png"])))
        (['blue', 'red'], True)
    """
    from ..checkpoint import load_file

    file = Path(path)
    if file.is_dir():
        file = file / "model.pt"
    state = load_file(file, what="model")
    if not isinstance(state, dict) or state.get("tlkit_model") != 1:
        raise ValueError(f"{str(file)!r} is not a model written by tlkit fit / finetune")
    model, info = backbone(state["backbone"], None)
    heads.replace_head(model, lambda n: build_head(n, len(state["classes"])))
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
