"""Trainer.fit against a hand-written PyTorch loop: same model, data, optimizer and seed.

Runs both alternately, several times, and prints the median epoch time of each and the median
of the paired ratios (each Trainer epoch against the hand-written epoch run just before it, so
that drifts in machine load cancel; goal: Trainer / hand-written <= 1.02). Writes
trainer_overhead.json beside this script.

    python benchmarks/trainer_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from _common import median, table, write_json
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tlkit


def make(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def hand_written(loader: DataLoader, epochs: int) -> float:
    model, optimizer = make(0)
    criterion = nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        total_loss = torch.zeros(())
        correct = torch.zeros((), dtype=torch.long)
        for x, y in loader:
            out = model(x)
            loss = criterion(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach() * len(y)  # the same bookkeeping the Trainer does
            correct += (out.argmax(1) == y).sum()
        _ = total_loss.item(), correct.item()
    return (time.perf_counter() - start) / epochs


def with_trainer(loader: DataLoader, epochs: int) -> float:
    model, optimizer = make(0)
    trainer = tlkit.Trainer(
        model, optimizer=optimizer, device="cpu", precision="fp32", verbose=False
    )
    start = time.perf_counter()
    trainer.fit(loader, epochs=epochs)
    return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats (CI smoke)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    n, repeats = (128, 3) if args.quick else (512, 15)
    repeats = args.repeats or repeats
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )
    loader = DataLoader(data, batch_size=64, shuffle=True)
    hand_written(loader, 1)  # warm-up
    hand, trainer = [], []
    for _ in range(repeats):  # alternate so that drifts in machine load hit both
        hand.append(hand_written(loader, 1))
        trainer.append(with_trainer(loader, 1))
    ratio = median([t / h for t, h in zip(trainer, hand, strict=True)])
    print(f"ResNet18, 32 px, {n} images, batch 64, CPU fp32, median of {repeats} epochs each")
    print(
        table(
            ["loop", "median s/epoch", "images/s", "ratio"],
            [
                ["hand-written", median(hand), n / median(hand), 1.0],
                [
                    "tlkit.Trainer",
                    median(trainer),
                    n / median(trainer),
                    median(trainer) / median(hand),
                ],
            ],
        )
    )
    path = write_json(
        __file__,
        {"images": n, "repeats": repeats, "hand_s": hand, "trainer_s": trainer, "ratio": ratio},
    )
    print(
        f"Trainer / hand-written, median of {repeats} paired ratios = {ratio:.3f} "
        f"(goal <= 1.02); wrote {path.name}"
    )


if __name__ == "__main__":
    main()
