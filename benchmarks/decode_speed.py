"""Decoding camera-size JPEGs for a 224 px model: whole, or at a reduced scale (``min_side``).

``tlkit.finetune`` decodes every image once, short side resized to the training size. For a
JPEG, libjpeg can decode at 1/2, 1/4 or 1/8 of the size directly (PIL's ``draft``);
``tlkit.read_image(path, min_side=S)`` uses the smallest scale that keeps the short side at
least ``S``. This script times both ways on scikit-image's coffee and cat photos resized to
common camera sizes (one core, the median of 3 passes over the images) and measures how far the
224 px pictures the model sees move (mean absolute difference, 0-255). Writes
decode_speed.json beside this script.

    pip install scikit-image
    python benchmarks/decode_speed.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import median, table, write_json
from PIL import Image
from skimage import data as skdata

import tlkit
from tlkit.model.images import square

SIZES = {"12 MP (4000x3000)": (4000, 3000), "6 MP (3000x2000)": (3000, 2000),
         "2 MP (1920x1080)": (1920, 1080), "0.3 MP (640x480)": (640, 480)}  # fmt: skip
PHOTOS = {"coffee": skdata.coffee(), "cat": skdata.chelsea()}


def seconds_per_image(files: list[Path], min_side: int | None, size: int) -> float:
    start = time.perf_counter()
    for file in files:
        square(tlkit.read_image(file, min_side=min_side), size)
    return (time.perf_counter() - start) / len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="JPEGs per camera size")
    parser.add_argument("--size", type=int, default=224, help="the model's input size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, (width, height) in SIZES.items():
            files = []
            for i in range(args.images):
                photo = Image.fromarray(list(PHOTOS.values())[i % len(PHOTOS)])
                path = Path(tmp) / f"{width}_{i}.jpg"
                photo.resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
                files.append(path)
            whole = [seconds_per_image(files, None, args.size) for _ in range(3)]
            reduced = [seconds_per_image(files, args.size, args.size) for _ in range(3)]
            a = torch.stack([square(tlkit.read_image(f), args.size) for f in files]).float()
            b = torch.stack([square(tlkit.read_image(f, min_side=args.size), args.size)
                             for f in files]).float()  # fmt: skip
            scale = tlkit.read_image(files[0], min_side=args.size).size[0] / width
            record = {
                "camera": label,
                "width": width,
                "height": height,
                "decode_scale": scale,
                "whole_ms": 1000 * median(whole),
                "reduced_ms": 1000 * median(reduced),
                "speedup": median(whole) / median(reduced),
                "mean_abs_diff": float((a - b).abs().mean()),
            }
            results.append(record)
            rows.append([label, f"1/{round(1 / scale)}", record["whole_ms"], record["reduced_ms"],
                         f"{record['speedup']:.1f}x", record["mean_abs_diff"]])  # fmt: skip
    print(f"decode + resize to {args.size} px, one core, {args.images} JPEGs per size, "
          "median of 3 passes")  # fmt: skip
    print(table(["image", "scale", "whole ms", "reduced ms", "speed-up", "mean |diff|"], rows))
    path = write_json(__file__, {"images_per_size": args.images, "size": args.size,
                                 "results": results})  # fmt: skip
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
