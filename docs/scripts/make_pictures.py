"""Regenerate the pictures of the docs from code (nothing is drawn by hand).

    python docs/scripts/make_pictures.py            # all pictures into docs/images/
    python docs/scripts/make_pictures.py --only presets --out /tmp/pictures

- ``augment_<preset>.png``: eight training views of a real photo (scikit-image's ``chelsea``)
  through each built-in augmentation preset, beside the evaluation view.
- ``bn_drift.png``: what happens to a frozen BatchNorm layer's running mean when the data
  differs from pretraining, with ``bn="train"`` (drifts) and ``bn="eval"`` (stays).
- ``stl10_smoke_curves.png`` / ``stl10_smoke_predictions.png``: the STL10 example's pictures
  from a ``--smoke`` run (generated data, random weights).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from PIL import Image
from skimage import data as skdata
from torch import nn

import tlkit

ROOT = Path(__file__).resolve().parents[2]


def _show(tensor: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    image = tensor * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return image.clamp(0, 1).permute(1, 2, 0)


def presets(out: Path) -> list[Path]:
    photo = Image.fromarray(skdata.chelsea())
    written = []
    for name in tlkit.augment.names():
        torch.manual_seed(0)
        train, evaluation = tlkit.augment.get(name, image_size=160)
        fig, axes = plt.subplots(1, 9, figsize=(18, 2.4))
        axes[0].imshow(
            _show(evaluation(photo), tlkit.backbones.IMAGENET_MEAN, tlkit.backbones.IMAGENET_STD)
        )
        axes[0].set_title("eval view", fontsize=10)
        for ax in axes[1:]:
            ax.imshow(
                _show(train(photo), tlkit.backbones.IMAGENET_MEAN, tlkit.backbones.IMAGENET_STD)
            )
        axes[1].set_title(f"preset '{name}': training views", fontsize=10, loc="left")
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        path = out / f"augment_{name}.png"
        fig.savefig(path, dpi=55)
        plt.close(fig)
        written.append(path)
    return written


def bn_drift(out: Path) -> list[Path]:
    torch.manual_seed(0)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for bn, style in (("train", "r-"), ("eval", "g-")):
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
        )
        model(torch.randn(2, 3, 16, 16))  # materialise the lazy layer
        with torch.no_grad():  # pretend pretraining left these statistics
            model[1].running_mean.zero_()
            model[1].running_var.fill_(1.0)
        tlkit.FreezePolicy(up_to="1", bn=bn).apply(model)
        model.train()
        drift = []
        for _ in range(100):  # new data: brighter and with more contrast than "pretraining"
            model(torch.randn(16, 3, 16, 16) * 2 + 1)
            drift.append(model[1].running_mean.abs().mean().item())
        ax.plot(drift, style, label=f'FreezePolicy(..., bn="{bn}")')
    ax.set(
        xlabel="training steps",
        ylabel="|running mean| of a frozen BN",
        title="A frozen BatchNorm layer in train mode keeps learning its statistics",
    )
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "bn_drift.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [path]


def stl10_smoke(out: Path) -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, str(ROOT / "examples/stl10/train.py"), "--smoke", "--out", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        written = []
        for name in ("curves.png", "predictions.png"):
            target = out / f"stl10_smoke_{name}"
            with Image.open(Path(tmp) / name) as image:
                image.thumbnail((700, 700))
                image.save(target, optimize=True)
            written.append(target)
    return written


MAKERS = {"presets": presets, "bn_drift": bn_drift, "stl10_smoke": stl10_smoke}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--only", choices=sorted(MAKERS), action="append")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(MAKERS):
        for path in MAKERS[name](args.out):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
