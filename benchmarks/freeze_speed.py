"""Training speed of ResNet50 by freeze policy, through the Trainer and through a plain loop.

Rows: all layers trainable, the first 61 tensors frozen (BatchNorm training, as the seed
recipe; and BatchNorm held in eval, tlkit's default), head only. Each is measured with
``tlkit.Trainer`` and with a hand-written loop on the same model and data; prints images/s
(median of several epochs), the speed-up over all layers, and Trainer / plain. Writes
freeze_speed.json beside this script.

    python benchmarks/freeze_speed.py [--quick]
    python benchmarks/freeze_speed.py --device cuda --image-size 224 --precision bf16 --images 4096
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from _common import median, table, write_json
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tlkit
from tlkit.training.trainer import Precision

POLICIES = {
    "all layers": None,
    "first_n=61, bn=train": tlkit.FreezePolicy(first_n=61, bn="train"),
    "first_n=61, bn=eval": tlkit.FreezePolicy(first_n=61, bn="eval"),
    "head only": tlkit.FreezePolicy(train_only=["fc"]),
}


def build(policy: tlkit.FreezePolicy | None, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model, _ = tlkit.backbone("resnet50", weights=None)
    tlkit.replace_head(model, 10)
    if policy is not None:
        policy.apply(model)
    return model.to(device)


def plain_epoch(
    model: nn.Module, loader: DataLoader, device: torch.device, precision: Precision
) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    criterion = nn.CrossEntropyLoss()
    model.train()
    dtype = torch.bfloat16 if precision == "bf16" else None
    count = 0
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        count += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def trainer_epoch(
    model: nn.Module, loader: DataLoader, device: torch.device, precision: Precision
) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    trainer = tlkit.Trainer(
        model, optimizer=optimizer, device=device, precision=precision, verbose=False
    )
    history = trainer.fit(loader, epochs=1)
    return float(history["images_per_sec"][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    n = args.images or (64 if args.quick else 192)
    repeats = args.repeats or (1 if args.quick else 3)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(n, 3, args.image_size, args.image_size, generator=g),
        torch.randint(0, 10, (n,), generator=g),
    )
    loader = DataLoader(
        data, batch_size=args.batch_size, shuffle=True, pin_memory=device.type == "cuda"
    )
    results = {}
    for name, policy in POLICIES.items():
        plain, trainer = [], []
        model = build(policy, device)
        plain_epoch(model, loader, device, args.precision)  # warm-up
        for _ in range(repeats):  # alternate the two loops on the same model
            plain.append(plain_epoch(model, loader, device, args.precision))
            trainer.append(trainer_epoch(model, loader, device, args.precision))
        results[name] = {"plain": plain, "trainer": trainer}
        print(
            f"  {name}: plain {median(plain):.1f} img/s, Trainer {median(trainer):.1f} img/s",
            flush=True,
        )
    base_plain = median(results["all layers"]["plain"])
    base_trainer = median(results["all layers"]["trainer"])
    rows = []
    for name, r in results.items():
        p, t = median(r["plain"]), median(r["trainer"])
        rows.append([name, p, t, t / base_trainer, t / p])
    print(
        f"ResNet50, {args.image_size} px, batch {args.batch_size}, {n} images, {device}, "
        f"{args.precision}, "
        f"median of {repeats} epochs"
    )
    print(
        table(
            ["trainable", "plain img/s", "Trainer img/s", "speed-up vs all", "Trainer / plain"],
            rows,
        )
    )
    path = write_json(
        __file__,
        {
            "image_size": args.image_size,
            "precision": args.precision,
            "device": str(device),
            "images": n,
            "results": results,
            "baseline_plain_all": base_plain,
        },
    )
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
