"""Train deterministically on CPU; optionally stall mid-epoch so the parent can SIGKILL us."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from jobs.common import ColourDataset, small_net

import tlkit


class Stall(tlkit.Callback):
    def __init__(self, epoch: int, batch: int, marker: Path) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, marker

    def on_batch_end(self, trainer, *, batch, optimizer_stepped, **kwargs):
        if trainer.epochs_done == self.epoch and batch == self.batch:
            self.marker.write_text("stalled")
            time.sleep(600)  # the parent kills us here


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--stall", type=str, default=None, help="EPOCH:BATCH")
    parser.add_argument("--resume", type=Path, default=None)
    parser.add_argument("--every-n-steps", type=int, default=None, help="mid-epoch checkpoints")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    data = ColourDataset(96, augment=True)
    loader = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)
    val = torch.utils.data.DataLoader(ColourDataset(32, seed=1), batch_size=16)
    model = small_net(dropout=0.2)
    tlkit.FreezePolicy(names=["0"]).apply(model)  # freeze the conv; its BatchNorm trains
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    callbacks: list[tlkit.Callback] = [
        tlkit.LRScheduler(scheduler),
        tlkit.ModelCheckpoint(args.out, monitor="val_accuracy", every_n_steps=args.every_n_steps),
        tlkit.EarlyStopping("val_loss", patience=50),
    ]
    if args.stall:
        epoch, batch = (int(v) for v in args.stall.split(":"))
        callbacks.append(Stall(epoch, batch, args.out / "stalled"))
    trainer = tlkit.Trainer(
        model, optimizer=optimizer, callbacks=callbacks, device="cpu", verbose=False
    )
    history = trainer.fit(loader, val, epochs=args.epochs, resume_from=args.resume)
    torch.save(model.state_dict(), args.out / "final.pt")
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    records = [{k: r[k] for k in keys} for r in history.records]
    (args.out / "history.json").write_text(json.dumps(records))


if __name__ == "__main__":
    main()
