"""tlkit on a CUDA GPU, in one run of under 8 minutes: the Trainer's speed against a hand-written
loop, and `tlkit fit` on a 20,000-image folder.

    python benchmarks/gpu_check.py [--work DIR] [--images 20000] [--budget 3m]

(a) ResNet50 (random weights) at 224 px, bf16 autocast (fp16 with a scaler where bf16 is not
supported), channels-last, batch 128, on random uint8 images already on the GPU: training
images/s of ``tlkit.Trainer`` (with ``BatchAugment`` as its batch transform) against a
hand-written loop doing the same work, median of 3 timed windows of 20 steps each after 10
warm-up steps, and their ratio.

(b) ``tlkit fit`` on a generated folder of 640x480 JPEGs (10 classes, as in
``benchmarks/fit_scale.py``) with ``--budget``, then ``tlkit evaluate`` on 500 other images:
wall time, peak GPU memory (``torch.cuda.max_memory_allocated``), the stages that ran with
their predicted and measured seconds (and the timestamps of the lines ``fit`` prints), what
each choice added where the recipe judged it, the model kept and the test accuracy.

On a machine without CUDA it prints one line saying so and exits 0. Writes ``gpu_check.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import table, write_json
from fit_scale import make_folder
from torch import nn

from tlkit.model.result import render_gains


def _amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _windows(step: Any, warmup: int = 10, steps: int = 20, windows: int = 3) -> float:
    """Median images/s of ``windows`` windows of ``steps`` calls of ``step`` (which returns
    the images it trained on)."""
    for _ in range(warmup):
        step()
    rates = []
    for _ in range(windows):
        torch.cuda.synchronize()
        start, images = time.perf_counter(), 0
        for _ in range(steps):
            images += step()
        torch.cuda.synchronize()
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def trainer_speed(batch: int = 128) -> dict[str, float]:
    import timm

    import tlkit
    from tlkit.augment import BatchAugment

    device = torch.device("cuda")
    images = torch.randint(0, 256, (batch, 3, 256, 256), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    dtype = _amp_dtype()

    def model() -> nn.Module:
        return timm.create_model("resnet50", pretrained=False).to(device)

    # hand-written: the same augmentation, autocast, channels-last, AdamW, scaler when fp16
    hand_net = model().to(memory_format=torch.channels_last)
    augment = BatchAugment(224).to(device)
    optimizer = torch.optim.AdamW(hand_net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)

    def hand_step() -> int:
        x = augment(images).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=dtype):
            loss = nn.functional.cross_entropy(hand_net(x), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return batch

    hand = _windows(hand_step)

    net = model()
    trainer = tlkit.Trainer(net, optimizer=torch.optim.AdamW(net.parameters(), lr=1e-4),
                            device=device, channels_last=True, verbose=False,
                            batch_transform=BatchAugment(224))  # fmt: skip
    history = trainer.fit([(images, labels)] * 20, epochs=4)  # the first epoch warms up
    trained = statistics.median(history["images_per_sec"][1:])
    return {"hand_written_img_s": hand, "trainer_img_s": trained, "ratio": trained / hand,
            "precision": str(dtype).removeprefix("torch.")}  # fmt: skip


class _Stamped(io.TextIOBase):
    """Each line written, with the seconds since the start."""

    def __init__(self, start: float) -> None:
        self.start, self.partial = start, ""
        self.lines: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        sys.stderr.write(text)  # still shown while captured
        self.partial += text
        while "\n" in self.partial:
            line, self.partial = self.partial.split("\n", 1)
            self.lines.append((round(time.perf_counter() - self.start, 1), line))
        return len(text)


def fit_run(work: Path, images: int, budget: str) -> dict[str, Any]:
    from tlkit import cli

    train = make_folder(work / f"train{images}", images, seed=2)
    test = make_folder(work / "test", 500, seed=1)
    out = work / "run"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    stamped = _Stamped(start)
    with contextlib.redirect_stdout(stamped):
        code = cli.main(["fit", str(train), "--out", str(out), "--budget", budget])
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30
    if code:
        raise SystemExit(f"tlkit fit exited {code}")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cli.main(["evaluate", str(out), str(test), "--json"])
    accuracy = json.loads(buffer.getvalue().strip().splitlines()[-1])["accuracy"]
    recipe = json.loads((out / "metrics.json").read_text())["recipe"]
    return {"images": images, "budget": budget, "wall_s": round(wall, 1),
            "peak_gpu_memory_gb": round(peak, 2), "test_accuracy": accuracy,
            "kept": recipe["kept"],
            "stages_s": {k: round(v, 1) for k, v in recipe["seconds"].items()},
            "predicted_stages_s": {k: round(v, 1) for k, v in recipe["predicted_seconds"].items()},
            "gains": recipe.get("gains", []),
            "lines": stamped.lines}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlkit-gpu-check"))
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--budget", default="3m")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine; nothing to measure")
        return
    speed = trainer_speed()
    print(table(["hand-written img/s", "Trainer img/s", "ratio", "precision"],
                [[speed["hand_written_img_s"], speed["trainer_img_s"], speed["ratio"],
                  speed["precision"]]]))  # fmt: skip
    fit = fit_run(args.work, args.images, args.budget)
    print(table(["images", "budget", "wall s", "peak GPU GB", "test accuracy"],
                [[fit["images"], fit["budget"], fit["wall_s"], fit["peak_gpu_memory_gb"],
                  fit["test_accuracy"]]]))  # fmt: skip
    predicted = fit["predicted_stages_s"]
    print(f"kept: {fit['kept']}; the stages that ran:")
    print(
        table(
            ["stage", "predicted s", "measured s"],
            [[k, predicted.get(k, "-"), v] for k, v in fit["stages_s"].items()],
        )
    )
    if fit["gains"]:
        print(render_gains(fit["gains"]))
    path = write_json(__file__, {"trainer_speed": speed, "fit": fit})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
