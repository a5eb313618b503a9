"""When should ``recipe="auto"`` keep the fine-tuned model rather than the probe it ran first?

On small data ``tlkit.finetune``'s auto recipe can train a linear probe, then fine-tune
everything from a new head, and keep one of the two by their accuracy on the same validation
images. This script measures that choice, and where to skip the probe. For each dataset and
seed it trains the two candidates as auto does (``recipe="probe"`` and ``recipe="full"``, no
time limit, the same seed and so the same validation split), records how many validation
images each one alone gets right and both models' test accuracy, then scores keep rules on
those same runs: always the probe, always the fine-tuned model, and "the fine-tuned model when
its validation gain exceeds ``k`` standard errors of the paired difference" for several ``k``.
The rules choose on the validation images only; the test images score their choices.

Datasets (real images, no network): Fashion-MNIST (``sudo apt-get install
dataset-fashion-mnist``) at 30, 50 and 100 training images per class with 5,000 test images,
and scikit-learn's digits (``pip install scikit-learn``), a stratified half for training.

    python benchmarks/keep_rule.py [--quick] [--seeds 3] [--backbone timm/tf_efficientnet_lite0]
                                   [--datasets fm30,fm50,fm100,digits]

Writes keep_rule.json beside this script.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import table, write_json
from auto_recipe import per_class, read_idx, score, write_folder
from PIL import Image

import tlkit
from tlkit.data import ImageDataset
from tlkit.recipes.keep_rule import fine_tuning_wins
from tlkit.recipes.plan import Backbone, Measurements
from tlkit.recipes.planner import plan
from tlkit.recipes.settings import AUTO

MARGINS = (0.0, 0.5, 1.0)  # standard errors the fine-tuned model must win by
DATASETS = ("fm30", "fm50", "fm100", "digits")


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


def candidates(
    train: Path, n_images: int, test: ImageDataset, backbone: str, seed: int
) -> dict[str, Any]:
    """The probe and the fine-tuned model auto would choose between, on one seed (``n_images``:
    how many images the ``train`` folder holds)."""
    run: dict[str, Any] = {"seed": seed}
    right, labels = {}, []
    for recipe in ("probe", "full"):
        start = time.perf_counter()
        result = tlkit.finetune(train, backbone_name=backbone, recipe=recipe, seed=seed,
                                verbose=False)  # fmt: skip
        assert result.val_probs is not None and result.val_labels is not None
        run[f"{recipe}_seconds"] = time.perf_counter() - start
        run[f"{recipe}_test"] = score(result, test)
        right[recipe] = result.val_probs.argmax(1) == result.val_labels
        run[f"{recipe}_val"] = float(right[recipe].double().mean())
        labels.append(result.val_labels)
        run["image_size"], run[f"{recipe}_epochs"] = (
            result.image_size,
            result.recipe.finetune_epochs,
        )
    assert torch.equal(*labels), "the probe and the fine-tune saw different validation images"
    run["val_images"] = len(right["probe"])
    run["only_probe"] = int((right["probe"] & ~right["full"]).sum())
    run["only_tuned"] = int((right["full"] & ~right["probe"]).sum())
    for k in MARGINS:
        run[f"keep_tuned_{k:g}"] = fine_tuning_wins(right["probe"], right["full"], margin=k)[0]
    # auto's choice, from its own plan without a time limit: the probe alone, fine-tuning alone,
    # or both and its keep rule
    n_train = n_images - run["val_images"]
    run["train_per_class"] = n_train / len(result.classes)
    measured = Measurements(
        n_train=n_train,
        n_val=run["val_images"],
        classes=len(result.classes),
        backbones=(Backbone(name=result.backbone, seconds=1.0),),
    )
    tunes = plan(measured, None).runs("fine-tuning")  # no time limit: the images decide
    keep = tunes and fine_tuning_wins(right["probe"], right["full"])[0]
    run["kept"], run["auto_test"] = (
        ("fine-tuned", run["full_test"]) if keep else ("probe", run["probe_test"])
    )
    return run


def summarise(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean test accuracy of each keep rule over the seeds."""
    rules = {"probe": [r["probe_test"] for r in runs], "full": [r["full_test"] for r in runs]}
    for k in MARGINS:
        rules[f"{k:g} s.e."] = [
            r["full_test"] if r[f"keep_tuned_{k:g}"] else r["probe_test"] for r in runs
        ]
    return {
        "name": name,
        "runs": runs,
        "test_accuracy": {rule: statistics.mean(accs) for rule, accs in rules.items()},
        "oracle": statistics.mean(max(r["probe_test"], r["full_test"]) for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fashion-MNIST 30/class, one seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backbone", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    args = parser.parse_args()
    chosen = args.datasets.split(",")
    if not set(chosen) <= set(DATASETS):
        parser.error(f"--datasets takes {', '.join(DATASETS)}, got {args.datasets!r}")
    if args.quick:
        chosen, args.seeds = ["fm30"], 1
    tlkit.backbone(args.backbone)  # a bad name or missing weights fail before any work
    train_x, train_y = read_idx("train-images-idx3-ubyte"), read_idx("train-labels-idx1-ubyte")
    test_x, test_y = read_idx("t10k-images-idx3-ubyte"), read_idx("t10k-labels-idx1-ubyte")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fm_test = write_folder(work / "fm_test", test_x, test_y,
                               per_class(test_y, 500, seed=1), False)  # fmt: skip
        for key in chosen:
            if key == "digits":
                folders = digits(work / "digits")
                if folders is None:
                    continue
                name, (train, test) = "scikit-learn digits", folders
            else:
                count = int(key.removeprefix("fm"))
                name, test = f"Fashion-MNIST, {count} per class", fm_test
                train = write_folder(work / key, train_x, train_y,
                                     per_class(train_y, count, seed=0), False)  # fmt: skip
            test_data, n_images = (
                ImageDataset.from_folder(test),
                len(ImageDataset.from_folder(train)),
            )
            runs = []
            for seed in range(args.seeds):
                runs.append(candidates(train, n_images, test_data, args.backbone, seed))
                r = runs[-1]
                print(f"{name} seed {seed}: probe {r['probe_test']:.4f} test / "
                      f"{r['probe_val']:.4f} val, fine-tuned {r['full_test']:.4f} / "
                      f"{r['full_val']:.4f}; {r['only_tuned']} vs {r['only_probe']} of "
                      f"{r['val_images']} val images differ", flush=True)  # fmt: skip
            records.append(summarise(name, runs))
    rules = list(records[0]["test_accuracy"])
    rows = [[r["name"], *(f"{100 * r['test_accuracy'][k]:.2f}" for k in rules),
             f"{100 * r['oracle']:.2f}"] for r in records]  # fmt: skip
    means = {k: statistics.mean(r["test_accuracy"][k] for r in records) for k in rules}
    rows.append(["mean", *(f"{100 * means[k]:.2f}" for k in rules),
                 f"{100 * statistics.mean(r['oracle'] for r in records):.2f}"])  # fmt: skip
    print(table(["dataset", *(f"{k} %" for k in rules), "better of the two %"], rows))
    settings = {
        "backbone": args.backbone,
        "seeds": args.seeds,
        "margins": list(MARGINS),
        "keep_margin": AUTO.keep_margin,
        "few_per_class": AUTO.few_per_class,
    }
    path = write_json(__file__, {**settings, "datasets": records})
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
