"""What [tlkit.finetune][] returns and how it is saved: the recipe with its reasons, the trained
classifier with its preprocessing, ``model.pt`` and [tlkit.load_model][].

This package imports nothing of the training stack: [tlkit.load_model][], `tlkit predict`,
`tlkit evaluate`, [tlkit.export][] and [tlkit.report][] use a result without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn

from .._utils import atomic_save, check_state_finite, load_file, plural
from ..backbones import BackboneInfo
from ..calibration import logits_of, scale
from ..history import History
from ..tta import flip_average
from .checks import check_confidence, check_description
from .images import Geometry, Images, decode, normalise
from .network import (
    StackedBackbones,
    build_head,
    build_network,
    final_linear,
    load_head,
    stack,
)

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
    "render_stages",
    "stack",
]


@dataclass
class Recipe:
    """What [tlkit.finetune][] runs, with the reason for each choice.

    ``probe`` says whether a linear probe ([tlkit.LinearProbe][]) is fitted on the frozen
    bodies' features, ``finetune_epochs`` how many epochs fine-tune everything. Once
    [tlkit.finetune][] has returned, ``kept`` says which trained model it returned: ``"probe"``
    (the head on the frozen bodies), ``"fine-tuned"``, or ``"probe+top blocks"`` (the probe
    and its best backbone with its top blocks fine-tuned, their logits averaged:
    ``tlkit.recipes.top_blocks``); ``None`` before training.
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
    lr: float = 0.0  # the fine-tuning's, where it ran
    layer_decay: float = 1.0
    crop_scale: float = 1.0
    batch_size: int = 0
    channels_last: bool = False
    class_weight: list[float] | None = None
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    reasons: list[str] = field(default_factory=list)
    kept: Literal["probe", "fine-tuned", "probe+top blocks"] | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # measured by stage, once trained
    predicted: dict[str, float] = field(default_factory=dict)  # by the plan, by stage
    budget: float | None = None  # seconds, as given
    gains: list[dict[str, Any]] = field(default_factory=list)  # what each choice added

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
        if self.gains:
            lines.append(f"  - {render_gains(self.gains)}")
        if self.seconds:
            lines.append(f"  - {render_stages(self.predicted, self.seconds)}")
        return "\n".join(lines)


def render_gains(gains: Sequence[Mapping[str, Any]]) -> str:
    """What each choice of the recipe added, in points, with its paired standard error and
    the images it was judged on.

    Examples:
        >>> print(render_gains([{"choice": "zoomed views", "kept": True, "gain": 0.012,
        ...                      "standard_error": 0.005, "judged_on": "out of fold"}]))
        what each choice added (points): zoomed views +1.2 ± 0.5 out of fold (kept)
    """
    said = [
        f"{g['choice']} {100 * g['gain']:+.1f} ± {100 * g['standard_error']:.1f} "
        f"{g['judged_on']} ({'kept' if g['kept'] else 'left out'})"
        for g in gains
    ]
    return "what each choice added (points): " + "; ".join(said)


def render_stages(predicted: Mapping[str, float], measured: Mapping[str, float]) -> str:
    """Where the time went: each stage's predicted and measured seconds (measured only, for
    work outside the plan such as the speed checks).

    Examples:
        >>> print(render_stages({"features": 40.0}, {"speed checks": 6.2, "features": 47.9}))
        time by stage, predicted / measured: speed checks - / 6 s, features 40 / 48 s (54 s in all)
    """
    cells = []
    for name in dict.fromkeys([*measured, *predicted]):
        if max(predicted.get(name, 0.0), measured.get(name, 0.0)) < 0.5:
            continue
        guess = f"{predicted[name]:.0f}" if name in predicted else "-"
        spent = f"{measured[name]:.0f} s" if name in measured else "not run"
        cells.append(f"{name} {guess} / {spent}")
    total = sum(measured.values())
    return f"time by stage, predicted / measured: {', '.join(cells)} ({total:.0f} s in all)"


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
            or for a folder too large for memory a [tlkit.recipes.store.ImageStore][]
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
    val_images: torch.Tensor | Images | None = field(default=None, repr=False)
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
