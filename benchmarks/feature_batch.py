"""How many images per forward pass the probe's feature passes should take on this machine.

The feature pass of `tlkit fit` (each image and its mirror image, intermediate layers read too)
over 128 decoded images, for EfficientNet-Lite0/1/2 at their pretraining sizes, at batches of
8, 16, 32 and 64 images, each timed `--repeats` times in turn (one warm-up pass first); prints
the median seconds per image and the ratio against 64 images a batch, and writes
feature_batch.json beside this script. Architectures only (no weights are needed for timing).

    python benchmarks/feature_batch.py [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import median, table, write_json

from tlkit.recipes.candidates import load_candidates
from tlkit.recipes.compute import Compute
from tlkit.recipes.store import ImageStore
from tlkit.recipes.views import features

LITES = ("timm/tf_efficientnet_lite0", "timm/tf_efficientnet_lite1", "timm/tf_efficientnet_lite2")
BATCHES = (8, 16, 32, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    compute = Compute.resolve(args.device)
    torch.manual_seed(0)
    candidates = load_candidates(
        list(LITES), None, "strict", None, 10, args.images, rate=lambda m, s: 1.0, compute=compute
    )
    rows, results = [], {}
    for candidate in candidates:
        store = ImageStore.empty(args.images, candidate.size)
        pixels = torch.randint(0, 256, (args.images, 3, candidate.size, candidate.size))
        store.write(0, pixels.to(torch.uint8))
        features(candidate, store, batch=16, compute=compute)  # warm-up
        times: dict[int, list[float]] = {b: [] for b in BATCHES}
        for _ in range(args.repeats):
            for batch in BATCHES:
                start = time.perf_counter()
                features(candidate, store, batch=batch, compute=compute)
                times[batch].append((time.perf_counter() - start) / args.images)
        medians = {b: median(t) for b, t in times.items()}
        results[candidate.name] = {
            str(b): {"seconds_per_image": medians[b], "runs": times[b]} for b in BATCHES
        }
        rows.append(
            [candidate.name.split("/")[-1], candidate.size]
            + [f"{1000 * medians[b]:.1f} ({medians[b] / medians[64]:.2f}x)" for b in BATCHES]
        )
    print(f"{compute}; ms per image (ratio to batch 64), median of {args.repeats} runs")
    print(table(["backbone", "px", *(f"batch {b}" for b in BATCHES)], rows))
    payload = {"device": str(compute), "repeats": args.repeats, "images": args.images}
    write_json(__file__, {**payload, "backbones": results})


if __name__ == "__main__":
    main()
