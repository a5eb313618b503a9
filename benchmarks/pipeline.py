"""Augmentation throughput: each preset's images/s on STL10-sized images against the model's.

Applies each preset's training pipeline to 96 px RGB PIL images (what torchvision's STL10
returns) on one CPU core, and compares with ResNet50's training speed (first 61 tensors frozen,
96 px) measured on the same machine, or given with --model-img-s (a GPU figure, say). Prints how
many DataLoader workers each preset needs to keep the model fed. Also times
``tlkit.augment.BatchAugment`` (the ``standard`` preset's crop and flip on whole uint8 batches,
meant for the GPU) on one CPU core, and on the GPU when there is one. Writes pipeline.json.

    python benchmarks/pipeline.py [--quick] [--model-img-s 2500]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _common import median, table, write_json
from PIL import Image
from skimage import data as skdata
from torch.utils.data import DataLoader, TensorDataset

import tlkit


def images(n: int) -> list[Image.Image]:
    photo = Image.fromarray(skdata.astronaut())
    out = []
    for i in range(n):  # different 96 px crops of a real photo
        x, y = (i * 37) % 400, (i * 53) % 400
        out.append(photo.crop((x, y, x + 112, y + 112)).resize((96, 96)))
    return out


def preset_rate(name: str, batch: list[Image.Image], repeats: int) -> float:
    train_tf, _ = tlkit.augment.get(name, image_size=96)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for image in batch:
            train_tf(image)
        rates.append(len(batch) / (time.perf_counter() - start))
    return median(rates)


def batch_rate(batch: list[Image.Image], repeats: int, device: str) -> float:
    """Images/s of BatchAugment on 64-image uint8 batches already on ``device``."""
    augment = tlkit.augment.BatchAugment(96).to(device)
    stacked = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in batch])
    chunks = [chunk.to(device) for chunk in stacked.split(64)]
    augment(chunks[0])  # warm-up
    rates = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for chunk in chunks:
            augment(chunk)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(len(batch) / (time.perf_counter() - start))
    return median(rates)


def model_rate(n: int) -> float:
    torch.manual_seed(0)
    model, _ = tlkit.backbone("resnet50", weights=None)
    tlkit.replace_head(model, 10)
    tlkit.FreezePolicy(first_n=61, bn="train").apply(model)
    data = TensorDataset(torch.randn(n, 3, 96, 96), torch.randint(0, 10, (n,)))
    trainer = tlkit.Trainer(model, device="cpu", verbose=False)
    return float(trainer.fit(DataLoader(data, batch_size=32), epochs=2)["images_per_sec"][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--model-img-s", type=float, default=None, help="model training images/s to feed"
    )
    args = parser.parse_args()
    n, repeats = (64, 1) if args.quick else (256, 5)
    batch = images(n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one DataLoader worker = one core
    presets = ["none", "flip", "seed", "standard", "randaugment", "trivialaugment", "autoaugment"]
    rates = {name: preset_rate(name, batch, repeats) for name in presets}
    batched = {"cpu": batch_rate(batch, repeats, "cpu")}
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        batched["cuda"] = batch_rate(batch * 16, repeats, "cuda")
    target = args.model_img_s or model_rate(64 if args.quick else 128)
    source = "given" if args.model_img_s else "measured here (CPU)"
    rows = [[name, rate, rate / target, math.ceil(target / rate)] for name, rate in rates.items()]
    rows.append(["BatchAugment, 1 CPU core", batched["cpu"], batched["cpu"] / target, "-"])
    if "cuda" in batched:
        rows.append(["BatchAugment, on the GPU", batched["cuda"], batched["cuda"] / target, "-"])
    print(
        f"presets on 96 px PIL images, one core; model ResNet50 96 px first_n=61: "
        f"{target:.0f} img/s ({source})"
    )
    print(table(["preset", "img/s per core", "preset / model", "workers needed"], rows))
    path = write_json(
        __file__,
        {
            "images": n,
            "repeats": repeats,
            "preset_img_s": rates,
            "batch_augment_img_s": batched,
            "model_img_s": target,
            "model_source": source,
        },
    )
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
