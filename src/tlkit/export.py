"""A trained model with its preprocessing inside, for ``torch.export``, ONNX and TorchScript
runtimes.

[tlkit.export.Deployable] takes what a camera or a file decoder gives: a uint8 batch
``(N, C, H, W)`` with 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA) channels and any height
and width. It composites alpha onto the run's background, makes the image square as the model
was trained (letterboxed: the long side resized to the model's size and the rest filled with the
background; or the short side resized and the centre cropped), normalises, runs the network (on
the image and its mirror image, averaged, when the model was trained so) and returns
probabilities ``(N, K)``, calibrated by the run's temperature ([tlkit.calibration][]).
"""

import copy
import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .model import FinetuneResult, check_confidence

__all__ = ["Deployable", "export"]


class Deployable(nn.Module):
    """Preprocessing + network + softmax in one module (see the module docstring).

    Examples:
        >>> net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
        >>> model = Deployable(net, ["a", "b"], 8, (0.5,) * 3, (0.5,) * 3, (255, 255, 255))
        >>> model(torch.zeros(2, 4, 10, 13, dtype=torch.uint8)).shape
        torch.Size([2, 2])
    """

    classes: list[str]
    min_confidence: float
    multi_label: bool
    thresholds: list[float]

    def __init__(
        self,
        network: nn.Module,
        classes: list[str],
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        background: tuple[int, ...],
        *,
        pad: bool = False,
        mirror: bool = False,
        temperature: float = 1.0,
        min_confidence: float = -1.0,
        thresholds: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.classes = list(classes)
        self.multi_label = thresholds is not None  # each label's own probability (sigmoid)
        self.thresholds = [float(t) for t in thresholds or []]
        self.min_confidence = float(min_confidence)  # below it, answer "unknown"; -1: none
        self.image_size = image_size
        self.pad = pad
        self.mirror = mirror
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1))
        self.register_buffer("background", torch.tensor(list(background)).float().view(1, 3, 1, 1))
        self.register_buffer("channel_counts", torch.arange(1, 5), persistent=False)
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels = images.shape[1]
        if images.dtype != torch.uint8 or images.dim() != 4 or channels < 1 or channels > 4:
            raise ValueError(
                "expected a uint8 (N, C, H, W) batch of pixel values 0-255 with C = 1 (grey), "
                "2 (grey + alpha), 3 (RGB) or 4 (RGBA)"
            )
        return self.run(images)

    def run(self, images: torch.Tensor) -> torch.Tensor:
        """The computation, written without branches on the input's shape so that it exports
        with dynamic batch, channels, height and width."""
        x = images.float() / 255.0
        c = x.shape[1]
        # four channels: those present, the last one repeated (its copies are not used)
        x = x.index_select(1, torch.arange(4, device=x.device).clamp(max=c - 1))
        counts = self.channel_counts
        assert isinstance(counts, torch.Tensor)
        count = counts[c - 1]  # as a tensor, so no branch on the shape; C > 4 is out of range
        rgb = torch.where(count <= 2, x[:, :1].expand(-1, 3, -1, -1), x[:, :3])
        opaque = torch.ones_like(x[:, :1])
        alpha = torch.where(count == 2, x[:, 1:2], torch.where(count == 4, x[:, 3:4], opaque))
        background = self.background
        assert isinstance(background, torch.Tensor)
        x = rgb * alpha + (background / 255.0) * (1.0 - alpha)
        x = self._letterbox(x, background / 255.0) if self.pad else self._centre_crop(x)
        mean, std = self.mean, self.std
        assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
        x = (x - mean) / std
        temperature = self.temperature
        assert isinstance(temperature, torch.Tensor)
        if self.multi_label:
            probs = self.network(x).sigmoid()
            if self.mirror:
                probs = (probs + self.network(x.flip(3)).sigmoid()) / 2
            return (torch.logit(probs.clamp(1e-6, 1 - 1e-6)) / temperature).sigmoid()
        probs = self.network(x).softmax(1)
        if self.mirror:
            probs = (probs + self.network(x.flip(3)).softmax(1)) / 2
        return (probs.clamp_min(1e-12).log() / temperature).softmax(1)

    def _letterbox(self, x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """Long side to the model's size, the rest filled with ``fill``, image centred."""
        height, width = x.shape[2], x.shape[3]
        size = self.image_size
        if torch.jit.is_scripting():
            long = max(height, width)
            new_h = max(1, height * size // long)
            new_w = max(1, width * size // long)
        else:  # symbolic sizes under torch.export
            long = torch.sym_max(height, width)  # type: ignore[assignment]
            new_h = torch.sym_max(1, height * size // long)  # type: ignore[assignment]
            new_w = torch.sym_max(1, width * size // long)  # type: ignore[assignment]
        x = nn.functional.interpolate(
            x, size=[new_h, new_w], mode="bilinear", align_corners=False, antialias=True
        )
        top = (size - new_h) // 2
        left = (size - new_w) // 2
        padding = [left, size - new_w - left, top, size - new_h - top]
        return nn.functional.pad(x - fill, padding) + fill

    def _centre_crop(self, x: torch.Tensor) -> torch.Tensor:
        """Short side to the model's size, the centre cut out."""
        height, width = x.shape[2], x.shape[3]
        size = self.image_size
        if torch.jit.is_scripting():
            short = min(height, width)
            new_h = max(size, height * size // short)  # the long side as torchvision sizes it
            new_w = max(size, width * size // short)
        else:  # symbolic sizes under torch.export
            short = torch.sym_min(height, width)  # type: ignore[assignment]
            new_h = torch.sym_max(size, height * size // short)  # type: ignore[assignment]
            new_w = torch.sym_max(size, width * size // short)  # type: ignore[assignment]
        x = nn.functional.interpolate(
            x, size=[new_h, new_w], mode="bilinear", align_corners=False, antialias=True
        )
        top = (new_h - size) // 2
        left = (new_w - size) // 2
        return x[:, :, top : top + size, left : left + size]


class _Exportable(Deployable):
    """[tlkit.export.Deployable][] without the eager channel check (torch.export cannot
    branch on a dynamic dimension; the export's shape constraints bound it instead)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images)


FORMATS = ("pt2", "torchscript", "onnx")
SUFFIXES = {"pt2": ".pt2", "torchscript": ".ts", "onnx": ".onnx"}


def export(
    result: FinetuneResult,
    path: str | Path,
    *,
    format: Literal["pt2", "torchscript", "onnx"] = "pt2",
    min_confidence: float | None = None,
) -> Path:
    """Write ``result``'s model with its preprocessing to ``path``.

    All formats take a uint8 ``(N, C, H, W)`` batch (C from 1 to 4, H and W from 2 to 8192)
    and return probabilities ``(N, K)``:

    - ``"pt2"`` (default): a ``torch.export`` program saved with ``torch.export.save``; load it
      with ``torch.export.load(path, extra_files=...)`` and call ``.module()``, no tlkit needed.
      The class names are the extra file ``classes.json``, the settings (``min_confidence``,
      ``temperature``) the extra file ``tlkit.json``. A float batch, a fifth channel or a
      side under 2 px is refused.
    - ``"onnx"``: exported with ``torch.export`` (input ``images``, output
      ``probabilities``), the class names in the metadata entry ``classes`` (JSON), the
      settings in ``tlkit`` (JSON). Needs
      ``pip install 'tlkit[onnx]'``.
    - ``"torchscript"``: a scripted [tlkit.export.Deployable][] with a ``classes`` attribute,
      and a ``min_confidence`` attribute (-1 for none), loaded with ``torch.jit.load``.
      PyTorch has deprecated TorchScript; this format warns and stays for runtimes that still
      need it.

    A multi-label model's probabilities are each label's own (they do not sum to 1); its
    per-label thresholds are in the settings (``"thresholds"``, and ``"multi_label": true``),
    and a TorchScript model's ``thresholds`` attribute: an image has the labels whose
    probability reaches their threshold.

    The probabilities are calibrated ([tlkit.calibration][]); ``min_confidence`` is the
    threshold below which the model's user should answer "unknown" (see ``tlkit predict
    --min-confidence``), stored with the model so that the threshold travels with it.

    Raises:
        ValueError: For an unknown ``format``, a ``min_confidence`` outside ``[0, 1]``, or
            a ``min_confidence`` for a multi-label model (it has per-label thresholds).
        IsADirectoryError: For a ``path`` that is a folder.
        ImportError: For ``"onnx"`` without ``onnxscript``.

    Examples:
        >>> import json, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from tlkit import finetune
        >>> root = Path(tempfile.mkdtemp())
        >>> for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        ...     (root / name).mkdir()
        ...     for i in range(6):
        ...         Image.new("RGB", (32, 32), colour).save(root / name / f"{i}.png")
        >>> result = finetune(root, backbone_name="resnet18", weights=None, recipe="probe",
        ...                   image_size=32, verbose=False)
        >>> extra = {"classes.json": ""}
        >>> program = torch.export.load(export(result, root / "model.pt2"), extra_files=extra)
        >>> json.loads(extra["classes.json"])
        ['blue', 'red']
        >>> program.module()(torch.zeros(1, 4, 20, 30, dtype=torch.uint8)).shape
        torch.Size([1, 2])
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(map(repr, FORMATS))}, got {format!r}")
    check_confidence(min_confidence)
    if min_confidence is not None and result.multi_label:
        raise ValueError(
            "min_confidence is for a model with one label per image; a multi-label model "
            "decides each label at its own threshold (stored with the export)"
        )
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(
            f"the export path {str(path)!r} is a folder; give a file name, such as "
            f"{str(target / ('model' + SUFFIXES[format]))!r}"
        )
    if format == "torchscript":
        warnings.warn(
            "TorchScript is deprecated in PyTorch; format='pt2' (torch.export) is its successor",
            FutureWarning,
            stacklevel=2,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # written beside, moved into place at the end; the suffix kept (torch.export checks it)
    partial = target.with_name(f".{target.stem}.{os.getpid()}.tmp{target.suffix}")
    try:
        _write(result, partial, format, min_confidence)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def _dynamic_shapes() -> dict[int, Any]:
    """Batch, channels, height and width of the exported input, each within its range."""
    return {
        0: torch.export.Dim("batch", min=1, max=65536),
        1: torch.export.Dim("channels", min=1, max=4),
        2: torch.export.Dim("height", min=2, max=8192),
        3: torch.export.Dim("width", min=2, max=8192),
    }


def _write(result: FinetuneResult, target: Path, format: str, min_confidence: float | None) -> None:
    settings = _settings(result, min_confidence)
    network = copy.deepcopy(result.model).eval().requires_grad_(False)
    args = (result.classes, result.image_size, result.mean, result.std, result.background)
    pad, mirror = result.geometry == "pad", result.tta
    t = result.temperature
    labels = (result.thresholds or [0.5] * len(result.classes)) if result.multi_label else None
    if format == "torchscript":
        example = torch.zeros(1, 3, result.image_size, result.image_size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            traced = torch.jit.trace(network, example, check_trace=False)
            threshold = -1.0 if min_confidence is None else min_confidence
            scripted = torch.jit.script(
                Deployable(
                    traced,
                    *args,
                    pad=pad,
                    mirror=mirror,
                    temperature=t,
                    min_confidence=threshold,
                    thresholds=labels,
                )
            )
        scripted.save(str(target))
        return
    module = _Exportable(
        network, *args, pad=pad, mirror=mirror, temperature=t, thresholds=labels
    ).eval()
    # 2 channels: no size of the example is 0 or 1, which torch.export would fix as constant
    example = torch.randint(
        0, 256, (2, 2, result.image_size + 9, result.image_size + 21), dtype=torch.uint8
    )
    if format == "pt2":
        with torch.no_grad():
            program = torch.export.export(
                module, (example,), dynamic_shapes={"images": _dynamic_shapes()}
            )
        extra = {"classes.json": json.dumps(list(result.classes)), "tlkit.json": settings}
        torch.export.save(program, str(target), extra_files=extra)
        return
    _write_onnx(module, example, target, result, settings)


def _settings(result: FinetuneResult, min_confidence: float | None) -> str:
    """What the exported model's user needs besides the class names, as JSON."""
    return json.dumps(
        {
            "min_confidence": min_confidence,
            "temperature": result.temperature,
            "multi_label": result.multi_label,
            "thresholds": result.thresholds if result.multi_label else None,
        }
    )


def _write_onnx(
    module: nn.Module, example: torch.Tensor, target: Path, result: FinetuneResult, settings: str
) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as exc:
        raise ImportError("ONNX export needs: pip install 'tlkit[onnx]'") from exc
    torch.onnx.export(
        module,
        (example,),
        str(target),
        dynamo=True,
        dynamic_shapes={"images": _dynamic_shapes()},
        input_names=["images"],
        output_names=["probabilities"],
        verbose=False,
    )
    import onnx

    saved = onnx.load(str(target))
    for key, value in (("classes", json.dumps(list(result.classes))), ("tlkit", settings)):
        entry = saved.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(saved, str(target))
