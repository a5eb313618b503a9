"""Classify image files with a model trained by train.py: top-3 classes with probabilities.

    python examples/stl10/predict.py IMAGE [IMAGE ...] [--checkpoint runs/stl10/model.pt]

Images may have any size and be RGB, greyscale or RGBA (tlkit's evaluation preset converts them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

import tlkit


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument(
        "--checkpoint",
        default=Path("runs/stl10/model.pt"),
        type=Path,
        help="model.pt written by train.py",
    )
    parser.add_argument("--top", default=3, type=int)
    return parser


def load_model(path: Path) -> tuple[torch.nn.Module, dict]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise SystemExit(
            f"error: cannot read {path}: {exc}\nTrain first: python examples/stl10/train.py"
        ) from None
    model, _ = tlkit.backbone("resnet50", weights=None)
    classes = len(saved["classes"])
    if saved["recipe"] == "seed":
        head = tlkit.heads.mlp(2048, classes, hidden=(128,), dropout=0.4, log_softmax=True)
    else:
        head = tlkit.heads.linear(2048, classes, dropout=0.2)
    tlkit.replace_head(model, head)
    model.load_state_dict(saved["model"])
    return model.eval(), saved


def main(args: argparse.Namespace) -> list[list[tuple[str, float]]]:
    model, saved = load_model(args.checkpoint)
    _, eval_tf = tlkit.augment.get(
        "none", image_size=saved["image_size"], mean=saved["mean"], std=saved["std"], crop_pct=1.0
    )
    log_probs = saved["recipe"] == "seed"
    results = []
    for path in args.images:
        try:
            image = Image.open(path)
            image.load()
        except (OSError, UnidentifiedImageError) as exc:
            print(f"{path}: cannot read image ({exc})", file=sys.stderr)
            results.append([])
            continue
        with torch.no_grad():
            out = model(eval_tf(image)[None])[0]
        probs = out.exp() if log_probs else out.softmax(0)
        top = probs.topk(min(args.top, len(probs)))
        ranked = [
            (saved["classes"][i], float(p)) for p, i in zip(top.values, top.indices, strict=True)
        ]
        print(f"{path}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
        results.append(ranked)
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())
