"""tlkit.finetune's recipes on real images: Fashion-MNIST written out as a folder of PNGs.

For each training size (images per class), every recipe (probe, lp-ft, full, auto) runs under
the same time budget through ``tlkit.finetune`` exactly as ``tlkit fit`` runs it (folder in,
weights loading and decoding inside the budget), and is scored on the test set. A second part
shows what compositing transparency is worth: the same garments pasted on transparent canvases
with noise under the transparency, read by tlkit (composited onto white) and read the naive way
(alpha dropped, ``Image.convert("RGB")``), both with the probe recipe.

    sudo apt-get install dataset-fashion-mnist
    python benchmarks/auto_recipe.py [--quick] [--test-images 10000] [--recipes auto]
                                     [--sizes 50 --budgets 60 --seeds 0,1,2]

Writes auto_recipe.json beside this script.
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import table, write_json
from PIL import Image

import tlkit
from tlkit.data import ImageDataset

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "boot")  # fmt: skip
BACKBONE = "timm/tf_efficientnet_lite0"


def read_idx(name: str) -> np.ndarray:
    path = DEBIAN / f"{name}.gz"
    if not path.exists():
        raise SystemExit(f"{path} not found: sudo apt-get install dataset-fashion-mnist")
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if "labels" in name:
        return np.frombuffer(data, np.uint8, offset=8)
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


def write_folder(
    root: Path, images: np.ndarray, labels: np.ndarray, indices: list[int], transparent: bool
) -> Path:
    rng = np.random.default_rng(0)
    for index in indices:
        folder = root / CLASSES[labels[index]]
        folder.mkdir(parents=True, exist_ok=True)
        grey = images[index]
        if transparent:  # the garment opaque, the rest transparent with noise underneath
            rgba = rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)
            garment = grey > 0
            rgba[..., :3][garment] = 255 - grey[garment, None]  # dark garment on white
            rgba[..., 3] = np.where(garment, 255, 0)
            Image.fromarray(rgba, "RGBA").save(folder / f"{index}.png")
        else:
            Image.fromarray(grey, "L").save(folder / f"{index}.png")
    return root


def per_class(labels: np.ndarray, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    chosen: list[int] = []
    for c in range(10):
        members = [i for i in range(len(labels)) if labels[i] == c]
        chosen += rng.sample(members, count)
    return chosen


def score(result: tlkit.FinetuneResult, test: ImageDataset) -> float:
    """Test accuracy, each image read by ``test.load`` (as the run's training images were)."""
    predicted = torch.cat([
        result.predict([test.load(j) for j in range(i, min(i + 256, len(test)))]).argmax(1)
        for i in range(0, len(test), 256)
    ])  # fmt: skip
    names = [test.classes[t] for t in test.targets]
    truth = torch.tensor([result.classes.index(n) for n in names])
    return float((predicted == truth).double().mean())


def run(
    train: Path | ImageDataset, test: ImageDataset, recipe: str, budget: float, **kw: Any
) -> dict[str, Any]:
    start = time.perf_counter()
    result = tlkit.finetune(train, backbone_name=BACKBONE, budget=budget, recipe=recipe,  # type: ignore[arg-type]
                            verbose=False, started=start, **kw)  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "recipe": recipe,
        "chosen": result.recipe.name,
        "image_size": result.image_size,
        "finetune_epochs": result.recipe.finetune_epochs,
        "seconds": seconds,
        "budget": budget,
        "test_accuracy": score(result, test),
        "val_accuracy": result.val_metrics["accuracy"],
        "reasons": result.recipe.reasons,
    }


def summary(records: list[dict[str, Any]], sizes: list[int], recipes: list[str]) -> str:
    """Mean test accuracy per size and recipe over the seeds, and auto against the best fixed."""
    rows = []
    for count in sizes:
        cells = [(x["recipe"], x["test_accuracy"]) for x in records if x["per_class"] == count]
        mean = {r: statistics.mean(a for name, a in cells if name == r) for r in recipes}
        fixed = [r for r in recipes if r != "auto"]
        gap = (mean["auto"] - max(mean[r] for r in fixed)) if "auto" in mean and fixed else None
        rows.append([count, *(f"{100 * mean[r]:.2f}" for r in recipes),
                     "" if gap is None else f"{100 * gap:+.2f}"])  # fmt: skip
    return table(["per class", *(f"{r} %" for r in recipes), "auto - best fixed"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, 1,000 test images")
    parser.add_argument("--test-images", type=int, default=10_000)
    parser.add_argument("--sizes", default="10,50,500,1000")
    parser.add_argument("--budgets", default="45,60,150,210", help="seconds, one per size")
    parser.add_argument(
        "--recipes", default="probe,lp-ft,full,auto", help="a subset: no JSON unless --json"
    )
    parser.add_argument(
        "--seeds", default="0", help="finetune seeds (split, head, order); each cell their mean"
    )
    parser.add_argument("--json", help="with a subset: write its runs to this file's name")
    args = parser.parse_args()
    recipes = args.recipes.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    complete = set(recipes) == {"probe", "lp-ft", "full", "auto"}
    sizes = [int(s) for s in args.sizes.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    if args.quick:
        sizes, budgets, args.test_images = sizes[:2], budgets[:2], 1000
    train_x, train_y = read_idx("train-images-idx3-ubyte"), read_idx("train-labels-idx1-ubyte")
    test_x, test_y = read_idx("t10k-images-idx3-ubyte"), read_idx("t10k-labels-idx1-ubyte")
    test_idx = per_class(test_y, args.test_images // 10, seed=1)
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        test = ImageDataset.from_folder(
            write_folder(work / "test", test_x, test_y, test_idx, False)
        )
        for count, budget in zip(sizes, budgets, strict=True):
            train = write_folder(work / f"train{count}", train_x, train_y,
                                 per_class(train_y, count, seed=0), False)  # fmt: skip
            for seed in seeds:
                for recipe in recipes:
                    record = {"per_class": count, "seed": seed,
                              **run(train, test, recipe, budget, seed=seed)}  # fmt: skip
                    records.append(record)
                    rows.append([count, recipe, seed, record["chosen"], record["image_size"],
                                 record["finetune_epochs"], budget, record["seconds"],
                                 100 * record["test_accuracy"]])  # fmt: skip
                    headers = ["per class", "recipe", "seed", "ran", "px", "ft epochs",
                               "budget s", "seconds", "test %"]  # fmt: skip
                    print(table(headers, rows[-1:]), flush=True)
        print(summary(records, sizes, recipes))
        payload = {"backbone": BACKBONE, "test_images": len(test_idx), "seeds": seeds,
                   "recipes": recipes, "runs": records}  # fmt: skip
        if not complete:
            if args.json:
                name = str(Path(__file__).with_name(Path(args.json).name))
                print(f"wrote {write_json(name, payload).name}")
            return
        # transparency: composited (tlkit) against alpha dropped (the naive reading)
        count, budget = 50, 60.0
        indices = per_class(train_y, count, seed=0)
        clear = write_folder(work / "clear", train_x, train_y, indices, True)
        clear_test = ImageDataset.from_folder(write_folder(work / "clear_test", test_x, test_y,
                                                           test_idx, True))  # fmt: skip
        composited = run(clear, clear_test, "probe", budget)
        naive = ImageDataset.from_folder(clear)
        naive.load = lambda index: Image.open(naive.files[index]).convert("RGB")  # type: ignore[method-assign]
        naive_test = ImageDataset.from_folder(work / "clear_test")
        naive_test.load = lambda index: Image.open(naive_test.files[index]).convert("RGB")  # type: ignore[method-assign]
        dropped = run(naive, naive_test, "probe", budget)
    transparency = {"per_class": count, "composited": composited, "alpha_dropped": dropped}
    print(table(["per class", "recipe", "seed", "ran", "px", "ft epochs", "budget s", "seconds",
                 "test %"], rows))  # fmt: skip
    print(summary(records, sizes, recipes))
    print(f"transparent PNGs, {count} per class, probe: composited "
          f"{100 * composited['test_accuracy']:.2f}% vs alpha dropped "
          f"{100 * dropped['test_accuracy']:.2f}%")  # fmt: skip
    path = write_json(__file__, {**payload, "transparency": transparency})
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
