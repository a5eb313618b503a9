"""Run under torchrun: ``tlkit fit DATA --out OUT`` (more options after ``RECORD``), each
process saving the model its ``finetune`` returned (``RECORD/rank<r>.pt``) for a test to
compare."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import tlkit.recipes
from tlkit import cli, distributed


def main() -> int:
    data, out, record = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    finetune = tlkit.recipes.finetune

    def recorded(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = finetune(*args, **kwargs)
        rank = distributed.world()[0]
        saved = {"state": result.model.state_dict(), "kept": result.recipe.kept,
                 "epochs": result.recipe.finetune_epochs, "probs": result.val_probs}  # fmt: skip
        torch.save(saved, record / f"rank{rank}.pt")
        return result

    tlkit.recipes.finetune = recorded  # what `tlkit fit` calls
    return cli.main([
        "fit", data, "--out", out, "--recipe", "lp-ft", "--backbone", "resnet18",
        "--weights", "none", "--image-size", "32", "--device", "cpu", *sys.argv[4:],
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
