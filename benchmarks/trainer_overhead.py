"""Trainer.fit against a hand-written PyTorch loop: same model, data, optimizer and seed.

Two rows, each measured in the same run as its own hand-written baseline:

- ResNet18 at 32 px on 512 random images (batch 64, CPU fp32): a step dominated by the model.
- A tiny step: a 2-layer MLP head on 512-d cached features (batch 64, one thread, ~2 ms a step),
  which is what every cached-feature epoch and every small GPU step pays; the Trainer's own
  per-step cost shows most here.

Both loops run alternately, many times; the figure is the median of the paired ratios (each
Trainer run against the hand-written run just before it, so drifts in machine load cancel) and
the per-step overhead it implies. The hand-written loop keeps the same running loss and accuracy
the Trainer reports. Goal: ratio <= 1.02 (ResNet18) and <= 1.03 (tiny step). Writes
trainer_overhead.json beside this script.

    python benchmarks/trainer_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable

import torch
import torchvision
from _common import median, table, write_json
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tlkit

Make = Callable[[], tuple[nn.Module, torch.optim.Optimizer]]


def resnet18() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def mlp_head() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def hand_written(make: Make, batches: Iterable, epochs: int) -> float:
    model, optimizer = make()
    criterion = nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        total_loss = torch.zeros(())
        correct = torch.zeros((), dtype=torch.long)
        for x, y in batches:
            out = model(x)
            loss = criterion(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach() * len(y)  # the same bookkeeping the Trainer does
            correct += (out.argmax(1) == y).sum()
        _ = total_loss.item(), correct.item()
    return (time.perf_counter() - start) / epochs


def with_trainer(make: Make, batches: Iterable, epochs: int) -> float:
    model, optimizer = make()
    trainer = tlkit.Trainer(
        model, optimizer=optimizer, device="cpu", precision="fp32", verbose=False
    )
    start = time.perf_counter()
    trainer.fit(batches, epochs=epochs)
    return (time.perf_counter() - start) / epochs


def compare(make: Make, batches: Iterable, steps: int, repeats: int) -> dict[str, object]:
    hand_written(make, batches, 1)  # warm-up
    with_trainer(make, batches, 1)
    hand, trainer = [], []
    for _ in range(repeats):  # alternate so that drifts in machine load hit both
        hand.append(hand_written(make, batches, 1))
        trainer.append(with_trainer(make, batches, 1))
    ratio = median([t / h for t, h in zip(trainer, hand, strict=True)])
    return {
        "steps_per_epoch": steps,
        "hand_s": hand,
        "trainer_s": trainer,
        "ratio": ratio,
        "hand_ms_per_step": median(hand) / steps * 1e3,
        "overhead_us_per_step": (ratio - 1) * median(hand) / steps * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats (CI smoke)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    n, repeats = (128, 3) if args.quick else (512, 15)
    repeats = args.repeats or repeats
    g = torch.Generator().manual_seed(0)
    images = TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )
    loader = DataLoader(images, batch_size=64, shuffle=True)
    big = compare(resnet18, loader, len(loader), repeats)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    features = TensorDataset(
        torch.randn(64 * 64, 512, generator=g), torch.randint(0, 10, (64 * 64,), generator=g)
    )
    cached = tlkit.features.FeatureBatches(features, 64, shuffle=True)
    tiny = compare(mlp_head, cached, len(cached), repeats * 3)
    torch.set_num_threads(threads)

    rows = []
    for name, result, goal in (
        (f"ResNet18, 32 px, {n} images", big, 1.02),
        ("tiny step: MLP head on cached features, 1 thread", tiny, 1.03),
    ):
        rows.append(
            [
                name,
                result["hand_ms_per_step"],
                result["ratio"],
                result["overhead_us_per_step"],
                goal,
            ]
        )
    print(f"batch 64, CPU fp32; median of paired ratios over {repeats} (tiny: {repeats * 3}) runs")
    print(
        table(
            ["workload", "hand-written ms/step", "Trainer / hand", "overhead us/step", "goal"],
            rows,
        )
    )
    path = write_json(__file__, {"images": n, "repeats": repeats, "resnet18": big, "tiny": tiny})
    print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
