"""Linear-probe fast path: head-only training with and without cached features.

ResNet50 at 96 px with everything but ``fc`` frozen. The uncached run pays the frozen body's
forward pass every epoch; the cached run pays it once and then trains the head on features.
Prints median epoch times and their ratio (goal: uncached / cached >= 20) and writes
feature_cache.json beside this script.

    python benchmarks/feature_cache.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import median, table, write_json
from torch.utils.data import DataLoader, TensorDataset

import tlkit


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = tlkit.backbone("resnet50", weights=None)
    tlkit.replace_head(model, 10)
    tlkit.FreezePolicy(train_only=["fc"]).apply(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs")
    args = parser.parse_args()
    n, epochs = (128, 3) if args.quick else (512, 4)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(n, 3, 96, 96, generator=g), torch.randint(0, 10, (n,), generator=g)
    )
    loader = DataLoader(data, batch_size=64, shuffle=True)

    uncached = tlkit.Trainer(build(), device="cpu", precision="fp32", verbose=False)
    uncached_s = uncached.fit(loader, epochs=epochs)["seconds"]

    cached = tlkit.Trainer(build(), device="cpu", precision="fp32", verbose=False)
    start = time.perf_counter()
    history = cached.fit(loader, epochs=epochs, cache_features=True)
    total = time.perf_counter() - start
    cached_s = history["seconds"]
    build_s = total - sum(cached_s)
    ratio = median(uncached_s) / median(cached_s)
    print(f"ResNet50, 96 px, head only, {n} images, batch 64, CPU fp32, {epochs} epochs each")
    print(
        table(
            ["run", "median s/epoch", "images/s", "speed-up"],
            [
                ["uncached", median(uncached_s), n / median(uncached_s), 1.0],
                ["cached (after the one body pass)", median(cached_s), n / median(cached_s), ratio],
            ],
        )
    )
    print(
        f"one-off body pass to build the cache: {build_s:.2f} s; whole cached fit {total:.2f} s "
        f"vs uncached {sum(uncached_s):.2f} s"
    )
    path = write_json(
        __file__,
        {
            "images": n,
            "epochs": epochs,
            "uncached_s": uncached_s,
            "cached_s": cached_s,
            "cache_build_s": build_s,
            "ratio": ratio,
        },
    )
    print(f"uncached / cached epoch time = {ratio:.0f}x (goal >= 20x); wrote {path.name}")


if __name__ == "__main__":
    main()
