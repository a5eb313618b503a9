"""What [tlkit.finetune][] returns and how it is saved: the recipe with its reasons, the trained
classifier with its preprocessing, ``model.pt`` and [tlkit.load_model][].

This module imports nothing of the training stack, so [tlkit.export][] and [tlkit.report][]
can use a result without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from PIL import Image
from torch import nn

from .. import heads
from .._utils import atomic_save, check_state_finite, plural
from ..backbones import BackboneInfo, backbone
from ..calibration import logits_of, scale
from ..history import History
from ..taps import LayerTaps
from ..tta import flip_average
from .images import DecodedImages, Geometry, decode, normalise
from .saved import check_confidence, check_description
from .settings import AUTO

if TYPE_CHECKING:
    from .store import ImageStore

__all__ = [
    "FinetuneResult",
    "Recipe",
    "StackedBackbones",
    "build_head",
    "build_network",
    "check_confidence",
    "final_linear",
    "load_head",
    "load_model",
    "stack",
]


def build_head(features: int, classes: int) -> nn.Module:
    """The classifier [tlkit.finetune][] puts on a backbone, and [tlkit.load_model][] rebuilds
    to load its weights (one builder, so saved models keep loading)."""
    return heads.linear(features, classes, dropout=AUTO.head_dropout)


class StackedBackbones(nn.Module):
    """Several pretrained bodies side by side, their pooled features concatenated into one head.

    The input is a normalised ``(N, 3, S, S)`` batch; each body sees it resized to its own
    size (``sizes``), as when its features were computed for the probe.

    Examples:
        >>> bodies = [nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()) for _ in range(2)]
        >>> model = StackedBackbones(bodies, [8, 4], nn.Linear(6, 2))
        >>> x = torch.zeros(1, 3, 8, 8)
        >>> [f.shape[1] for f in model.features(x)], model(x).shape
        ([3, 3], torch.Size([1, 2]))
    """

    def __init__(self, bodies: Sequence[nn.Module], sizes: Sequence[int], head: nn.Module) -> None:
        super().__init__()
        if len(bodies) != len(sizes) or not bodies:
            raise ValueError(f"one size per body, got {len(bodies)} bodies, sizes {list(sizes)}")
        self.bodies = nn.ModuleList(bodies)
        self.sizes = [int(s) for s in sizes]
        self.head = head

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each body's pooled features ``(N, D_i)``."""
        out = []
        for body, size in zip(self.bodies, self.sizes, strict=True):
            resized = x
            if x.shape[-1] != size or x.shape[-2] != size:
                resized = nn.functional.interpolate(
                    x, size=[size, size], mode="bilinear", align_corners=False, antialias=True
                )
            out.append(body(resized).flatten(1))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat(self.features(x), 1))


def build_network(
    names: Sequence[str],
    sizes: Sequence[int],
    classes: int,
    *,
    weights: str | Path | None = None,
    key_map: Any = "strict",
    taps: Sequence[Sequence[str]] | None = None,
) -> tuple[nn.Module, BackboneInfo]:
    """The network of a result: one backbone with [build_head][tlkit.recipes.result.build_head]
    on it, or several stacked, or backbones read at intermediate layers too (``taps``: the
    layers of each, [tlkit.LayerTaps][]), in a
    [StackedBackbones][tlkit.recipes.result.StackedBackbones]. [tlkit.finetune][] and
    [tlkit.load_model][] both build it here."""
    models, infos = [], []
    for name in names:
        model, info = backbone(name, weights, key_map=key_map)
        heads.replace_head(model, lambda n: build_head(n, classes))
        models.append(model)
        infos.append(info)
    if len(models) == 1 and not any(taps or []):
        return models[0], infos[0]
    return stack(models, sizes, classes, taps), infos[0]


def stack(
    models: Sequence[nn.Module],
    sizes: Sequence[int],
    classes: int,
    taps: Sequence[Sequence[str]] | None = None,
) -> StackedBackbones:
    """Networks built by [build_network][tlkit.recipes.result.build_network] for one backbone
    each, their heads removed, side by side under one new head; each read at its ``taps``
    layers too when given (one list per network, empty for none)."""
    taps = list(taps) if taps is not None else [[] for _ in models]
    if len(taps) != len(models):
        raise ValueError(f"one list of layers per network, got {len(taps)} for {len(models)}")
    bodies: list[nn.Module] = []
    width = 0
    for model, layers, size in zip(models, taps, sizes, strict=True):
        final = heads.find_head(model)[1]
        heads.replace_head(model, lambda n: nn.Identity())
        if layers:
            body = LayerTaps(model, layers)
            width += body.out_features(size)
            bodies.append(body)
        else:
            width += final
            bodies.append(model)
    return StackedBackbones(bodies, sizes, build_head(width, classes))


def load_head(model: nn.Module, layer: nn.Linear) -> None:
    """Copy ``layer``'s weights (a fitted probe's, [tlkit.LinearProbe.to_linear][]) into the
    last ``nn.Linear`` of ``model``'s head."""
    linear = final_linear(model)
    with torch.no_grad():
        linear.weight.copy_(layer.weight)
        linear.bias.copy_(layer.bias)


def final_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of a network's head: where a fitted probe's weights go."""
    if isinstance(model, StackedBackbones):
        head = model.head
    else:
        head = model.get_submodule(heads.find_head(model)[0])
    layers = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError(f"the head {type(head).__name__} has no nn.Linear")
    return layers[-1]


@dataclass
class Recipe:
    """What [tlkit.finetune][] runs, with the reason for each choice.

    ``probe`` says whether a linear probe ([tlkit.LinearProbe][]) is fitted on the frozen
    bodies' features, ``finetune_epochs`` how many epochs fine-tune everything. Once
    [tlkit.finetune][] has returned, ``kept`` says which trained model it returned: ``"probe"``
    (the head on the frozen bodies) or ``"fine-tuned"``; ``None`` before training.
    ``class_weight`` is the loss weight of each class when classes are weighted (every choice
    is then made on balanced accuracy), else ``None``; with ``sampler="balanced"`` fine-tuning
    draws images by those weights instead of weighing its loss.

    Examples:
        >>> Recipe(name="probe", image_size=96).name
        'probe'
    """

    name: Literal["probe", "lp-ft", "full"]
    image_size: int
    probe: bool = False
    finetune_epochs: int = 0
    lr: float = AUTO.lr
    layer_decay: float = AUTO.layer_decay
    crop_scale: float = AUTO.crop_scale
    batch_size: int = AUTO.batch_size
    channels_last: bool = False
    class_weight: list[float] | None = None
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    reasons: list[str] = field(default_factory=list)
    kept: Literal["probe", "fine-tuned"] | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # by stage, once trained

    def describe(self) -> str:
        """The recipe and its reasons, one line each; once trained, which model was kept and
        where the time went."""
        head = (
            f"recipe {self.name}: {self.image_size} px"
            + (", linear probe on cached features" if self.probe else "")
            + (
                f", {plural(self.finetune_epochs, 'fine-tuning epoch')}"
                if self.finetune_epochs
                else ""
            )
            + (f"; returned the {self.kept} model" if self.kept else "")
        )
        lines = [head, *(f"  - {r}" for r in self.reasons)]
        if self.seconds:
            spent = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items() if v >= 0.5)
            lines.append(f"  - time: {spent} ({sum(self.seconds.values()):.0f} s in all)")
        return "\n".join(lines)


@dataclass
class FinetuneResult:
    """A trained classifier with everything needed to use it on new images.

    Attributes:
        model: The network (eval mode, CPU), taking normalised ``(N, 3, S, S)`` batches.
        classes: Class names, in output order.
        info: The backbone's [tlkit.BackboneInfo][].
        backbone: The backbone's name (several joined by ``+`` when stacked).
        image_size: ``S``: images are made ``S`` x ``S`` pixels (see ``geometry``).
        mean: Normalisation mean.
        std: Normalisation std.
        background: RGB colour under transparent pixels (and around letterboxed images).
        geometry: ``"pad"``: letterboxed (long side to ``S``, nothing cut off), or
            ``"crop"``: short side to ``S``, centre crop.
        tta: Whether predictions average each image with its mirror image (the probe is
            trained on both).
        temperature: Logits are divided by it before the softmax (multi-label: each label's
            logit before its sigmoid): probabilities calibrated on the images that judged the
            model ([tlkit.calibration][]); 1 for none.
        multi_label: Whether each image may have several of the classes (labels): then
            ``predict`` gives each label's own probability (sigmoid), and an image has the
            labels whose probability reaches their ``thresholds``.
        thresholds: Multi-label only: each label's decision threshold on the calibrated
            probabilities, chosen for its best F1 on the images that judged the model.
        recipe: The [tlkit.Recipe][] that ran, with its reasons.
        backbones: The backbones' names (several when their features were joined).
        sizes: Each backbone's image size (each sees the images resized to it).
        taps: For each backbone, the intermediate layers whose pooled outputs the head reads
            beside the final features ([tlkit.LayerTaps][]); empty lists for none.
        history: Every epoch of every stage (``stage`` column: ``probe`` or ``finetune``).
        val_metrics: Metrics of the kept model on the validation images.
        seconds: Wall time of the whole call.
        skipped: Unreadable files left out.
        val_images: The validation images as decoded (uint8 ``(3, S, S)`` each): a tensor,
            or for a folder too large for memory an [tlkit.recipes.store.ImageStore][]
            reading them from a temporary file (kept while the result is); under ``torchrun``,
            where each process decoded a part, the images decoded again when read.
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
        >>> result.save(root / "model.pt").name, result.val_metrics["count"]  # cross-validated
        ('model.pt', 12)
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
    geometry: Geometry = "crop"
    tta: bool = False
    temperature: float = 1.0
    multi_label: bool = False
    thresholds: list[float] | None = None
    backbones: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    taps: list[list[str]] = field(default_factory=list)
    val_images: torch.Tensor | ImageStore | DecodedImages | None = field(default=None, repr=False)
    val_labels: torch.Tensor | None = field(default=None, repr=False)
    val_probs: torch.Tensor | None = field(default=None, repr=False)

    def preprocess(self, images: Sequence[Image.Image | str | Path]) -> torch.Tensor:
        """Normalised ``(N, 3, S, S)`` float batch from PIL images or paths (one image or
        path alone counts as a list of one).

        Raises:
            ValueError: For no images at all.
        """
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        if len(images) == 0:
            raise ValueError("predict needs at least one image or path, got an empty list")
        pixels = decode(images, self.image_size, self.background, self.geometry)
        return normalise(pixels, self.mean, self.std)

    @torch.no_grad()
    def predict(
        self, images: Sequence[Image.Image | str | Path], *, tta: bool | None = None
    ) -> torch.Tensor:
        """Class probabilities ``(N, K)`` for PIL images or image paths, calibrated by
        ``temperature`` (for a multi-label model, each label's own probability, its logit
        divided by ``temperature``); ``tta=True``
        averages them with the mirror images' (flip test-time augmentation, twice the
        compute); default as the model was trained (``self.tta``)."""
        layout = torch.channels_last  # 1.6x faster convolutions on CPUs (EfficientNet-Lite)
        self.model.eval().to(memory_format=layout)
        x = self.preprocess(images).contiguous(memory_format=layout)
        mirror = self.tta if tta is None else tta
        if self.multi_label:
            both = torch.cat([x, x.flip(-1)]) if mirror else x
            probs = self.model(both).float().sigmoid().view(1 + mirror, len(x), -1).mean(0)
            logits = logits_of(probs, multi_label=True)  # as the exported models compute it
            return scale(logits, self.temperature, multi_label=True).float()
        scores = flip_average(self.model, x, log_probs=False) if mirror else self.model(x).float()
        return (scores / self.temperature).softmax(1)

    def predict_labels(
        self,
        images: Sequence[Image.Image | str | Path],
        *,
        min_confidence: float | None = None,
        tta: bool | None = None,
    ) -> list[tuple[str | None, float]]:
        """The most likely class of each image with its probability; ``None`` for the class
        where that probability is below ``min_confidence`` (an image of none of the classes,
        or too unsure to answer: see "Unknown images" in the guide).

        Raises:
            ValueError: For ``min_confidence`` outside ``[0, 1]``, or a multi-label model
                (see [predict_label_sets][tlkit.FinetuneResult.predict_label_sets]).
        """
        check_confidence(min_confidence)
        if self.multi_label:
            raise ValueError(
                "this model gives each image a set of labels: use predict_label_sets(images)"
            )
        probs = self.predict(images, tta=tta)
        top, index = probs.max(1)
        return [
            (None if min_confidence is not None and p < min_confidence else self.classes[i], p)
            for p, i in zip(top.tolist(), index.tolist(), strict=True)
        ]

    def predict_label_sets(
        self, images: Sequence[Image.Image | str | Path], *, tta: bool | None = None
    ) -> list[list[tuple[str, float]]]:
        """A multi-label model's labels for each image: ``(label, probability)`` of each label
        whose probability reaches its threshold, most likely first (an empty list when none
        does). A single-label model gives its one most likely class.
        """
        probs = self.predict(images, tta=tta)
        if not self.multi_label:
            top, index = probs.max(1)
            return [
                [(self.classes[i], p)] for p, i in zip(top.tolist(), index.tolist(), strict=True)
            ]
        return self.label_sets(probs)

    def label_sets(self, probs: torch.Tensor) -> list[list[tuple[str, float]]]:
        """A multi-label model's ``(label, probability)`` pairs at or above their thresholds
        for each row of probabilities ``(N, K)`` (from [predict][tlkit.FinetuneResult.predict]),
        most likely first."""
        limits = torch.tensor(self.thresholds or [0.5] * len(self.classes))
        out = []
        for row in probs:
            chosen = (row >= limits).nonzero().flatten().tolist()
            out.append(
                sorted(((self.classes[i], float(row[i])) for i in chosen), key=lambda t: -t[1])
            )
        return out

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
                "geometry": self.geometry,
                "tta": self.tta,
                "temperature": float(self.temperature),
                "multi_label": bool(self.multi_label),
                "thresholds": None
                if self.thresholds is None
                else [float(t) for t in self.thresholds],
                "backbones": list(self.backbones) or [self.backbone],
                "sizes": list(self.sizes) or [self.image_size],
                "taps": [list(t) for t in self.taps],
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
    check_description(state, file)
    names = [str(n) for n in state.get("backbones", [state["backbone"]])]
    sizes = [int(s) for s in state.get("sizes", [state["image_size"]])]
    taps = [[str(layer) for layer in t] for t in state.get("taps") or []]
    model, info = build_network(names, sizes, len(state["classes"]), taps=taps or None)
    check_state_finite(state["state_dict"], file)
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise ValueError(
            f"{str(file)!r} does not hold weights for its own description ({'+'.join(names)}, "
            f"{len(state['classes'])} classes): {str(exc).splitlines()[0]}; it was changed "
            "after tlkit wrote it"
        ) from exc
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
        geometry="pad" if state.get("geometry") == "pad" else "crop",
        tta=bool(state.get("tta", False)),
        temperature=float(state.get("temperature", 1.0)),
        multi_label=bool(state.get("multi_label", False)),
        thresholds=state.get("thresholds"),
        backbones=names,
        sizes=sizes,
        taps=taps,
    )


def not_lower_said(figures: dict[str, Any]) -> str:
    """Why a temperature was refused, in words: the gain it had to beat."""
    spread = figures.get("ece_gain_se") or 0.0
    if spread > AUTO.calibration_gain:
        return f"not lower by more than one standard error ({spread:.3f})"
    return f"not lower by {AUTO.calibration_gain:g}"
