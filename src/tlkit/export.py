"""A trained model with its preprocessing inside, for TorchScript and ONNX runtimes.

[tlkit.export.Deployable] takes what a camera or a file decoder gives: a uint8 batch
``(N, C, H, W)`` with 1 (grey), 3 (RGB) or 4 (RGBA) channels and any height and width. It
composites alpha onto the run's background, resizes the short side to the model's size
(antialiased), centre-crops, normalises, runs the network and returns probabilities ``(N, K)``.
"""

import copy
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .recipes import FinetuneResult

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

    def __init__(
        self,
        network: nn.Module,
        classes: list[str],
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        background: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.network = network
        self.classes = list(classes)
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, 3, 1, 1))
        self.register_buffer("background", torch.tensor(list(background)).float().view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        channels = x.shape[1]
        if channels == 4:
            alpha = x[:, 3:4]
            background = self.background
            assert isinstance(background, torch.Tensor)
            x = x[:, 0:3] * alpha + (background / 255.0) * (1.0 - alpha)
        elif channels == 1:
            x = x.expand(-1, 3, -1, -1)
        elif channels != 3:
            raise ValueError("expected 1, 3 or 4 channels")
        height, width = x.shape[2], x.shape[3]
        short = min(height, width)
        size = self.image_size
        new_h = max(size, height * size // short)  # the long side as torchvision sizes it
        new_w = max(size, width * size // short)
        x = nn.functional.interpolate(
            x, size=[new_h, new_w], mode="bilinear", align_corners=False, antialias=True
        )
        top = (new_h - self.image_size) // 2
        left = (new_w - self.image_size) // 2
        x = x[:, :, top : top + self.image_size, left : left + self.image_size]
        mean, std = self.mean, self.std
        assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
        x = (x - mean) / std
        return self.network(x).softmax(1)


def export(
    result: FinetuneResult,
    path: str | Path,
    *,
    format: Literal["torchscript", "onnx"] = "torchscript",
) -> Path:
    """Write ``result``'s model with its preprocessing to ``path``.

    TorchScript: a scripted [tlkit.export.Deployable][] around the traced network, with a
    ``classes`` attribute; load it with ``torch.jit.load`` (no tlkit needed).

    Raises:
        ValueError: For an unknown ``format``.
        NotImplementedError: For ``"onnx"``, not available yet.

    Examples:
        >>> import tempfile
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
        >>> deployable = torch.jit.load(str(export(result, root / "model.ts")))
        >>> deployable.classes, deployable(torch.zeros(1, 4, 20, 30, dtype=torch.uint8)).shape
        (['blue', 'red'], torch.Size([1, 2]))
    """
    if format not in ("torchscript", "onnx"):
        raise ValueError(f"format must be 'torchscript' or 'onnx', got {format!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    network = copy.deepcopy(result.model).eval().requires_grad_(False)
    example = torch.zeros(1, 3, result.image_size, result.image_size)
    args = (result.classes, result.image_size, result.mean, result.std, result.background)
    if format == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(network, example, check_trace=False)
        scripted = torch.jit.script(Deployable(traced, *args))
        scripted.save(str(target))
        return target
    raise NotImplementedError(
        "ONNX export of the preprocessing (any channel count and size) is not available yet: "
        "torch's TorchScript-based ONNX exporter cannot express its control flow; use "
        "format='torchscript'"
    )
