"""Run under torchrun (or alone): fit a small model and write rank 0's metrics as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jobs.common import ColourDataset, small_net

import tlkit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument(
        "--unfreeze", action="store_true", help="start head-only, unfreeze the conv at epoch 1"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = small_net(bn=False)  # BatchNorm statistics are per process under DDP
    train = torch.utils.data.DataLoader(ColourDataset(128), batch_size=args.batch_size)
    val = torch.utils.data.DataLoader(ColourDataset(64, seed=1), batch_size=args.batch_size)
    callbacks: list[tlkit.Callback] = [tlkit.ModelCheckpoint(args.out, monitor=None)]
    if args.unfreeze:
        tlkit.FreezePolicy(train_only=["5"]).apply(model)
        callbacks.append(tlkit.GradualUnfreeze({1: "0"}, lr=0.2))
    trainer = tlkit.Trainer(
        model,
        optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2),
        device="cpu",
        checkpoint_dir=args.out,
        callbacks=callbacks,
        verbose=False,
    )
    history = trainer.fit(train, val, epochs=3)
    result = trainer.evaluate(val)
    if trainer.is_global_zero:
        out = {
            "world_size": trainer.world_size,
            "history": [
                {k: r[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")}
                for r in history.records
            ],
            "eval": {
                "loss": result["loss"],
                "accuracy": result["accuracy"],
                "count": result["count"],
            },
            "conv_weight_sum": float(model[0].weight.detach().sum()),
        }
        (args.out / "metrics.json").write_text(json.dumps(out))


if __name__ == "__main__":
    main()
