"""`tlkit fit` on folders of 2,000 to 50,000 photos-sized JPEGs: memory, wall time, accuracy.

    python benchmarks/fit_scale.py [--sizes 2000,10000,50000] [--recipes probe,auto]
                                   [--budget 3m] [--work DIR] [--device cpu]

Generated folders (made once under ``--work`` and reused): 640x480 JPEGs of 10 classes, each a
shape (disc, square, triangle, ring, cross, star, diamond, bar, pentagon, crescent) in a random
colour, size, place and rotation over a random two-colour gradient with clutter and noise, so
the classes take a classifier to tell apart but a linear probe on ImageNet features learns them.
A fixed test folder of 500 images is scored with ``tlkit evaluate``.

Per folder size and recipe, in one run: ``tlkit fit TRAIN --out RUN --budget B --recipe R``
with the three EfficientNet-Lite backbones where their weights are installed, while a sampler
reads ``/proc`` every 0.2 s: the command's peak resident memory (``VmHWM``) and the peak of its
worker processes' unique memory (private pages, summed over the workers alive at once), and
where the time went (the plan's seconds by stage, and what followed ``finetune``: the report).
Prints a table, writes ``fit_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from _common import table, write_json
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("disc", "square", "triangle", "ring", "cross", "star", "diamond", "bar",
           "pentagon", "crescent")  # fmt: skip
SIZE = (640, 480)
TEST_IMAGES = 500


def _polygon(sides: int, radius: float, angle: float, star: bool = False) -> list[tuple]:
    points = []
    count = sides * (2 if star else 1)
    for i in range(count):
        r = radius * (0.45 if star and i % 2 else 1.0)
        a = angle + 2 * math.pi * i / count
        points.append((r * math.cos(a), r * math.sin(a)))
    return points


def draw(label: int, seed: int) -> Image.Image:
    """One 640x480 image of class ``label``; the same ``seed`` draws the same image."""
    rng = random.Random(seed)
    width, height = SIZE
    top = [rng.randrange(256) for _ in range(3)]
    bottom = [rng.randrange(256) for _ in range(3)]
    gradient = Image.linear_gradient("L").resize(SIZE)
    image = Image.composite(Image.new("RGB", SIZE, tuple(bottom)),
                            Image.new("RGB", SIZE, tuple(top)), gradient)  # fmt: skip
    pen = ImageDraw.Draw(image)
    for _ in range(rng.randrange(3, 9)):  # clutter: thin lines and small dots
        x, y = rng.randrange(width), rng.randrange(height)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            pen.line((x, y, x + rng.randrange(-200, 200), y + rng.randrange(-200, 200)),
                     fill=colour, width=rng.randrange(1, 4))  # fmt: skip
        else:
            r = rng.randrange(3, 12)
            pen.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    radius = rng.uniform(60, 170)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    colour = tuple(rng.randrange(256) for _ in range(3))
    angle = rng.uniform(0, 2 * math.pi)
    name = CLASSES[label]
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    shape: list[tuple] = []
    if name == "disc":
        pen.ellipse(box, fill=colour)
    elif name == "ring":
        pen.ellipse(box, outline=colour, width=max(4, int(radius / 5)))
    elif name == "crescent":
        pen.ellipse(box, fill=colour)
        dx, dy = radius * 0.5 * math.cos(angle), radius * 0.5 * math.sin(angle)
        pen.ellipse((box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy), fill=tuple(top))
    elif name == "cross":
        for turn in (0, math.pi / 2):
            a = angle + turn
            dx, dy = radius * math.cos(a), radius * math.sin(a)
            pen.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour,
                     width=max(6, int(radius / 3)))  # fmt: skip
    elif name == "bar":
        a = angle
        dx, dy = radius * math.cos(a), radius * math.sin(a)
        pen.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=colour, width=max(6, int(radius / 3)))
    else:
        sides = {"square": 4, "triangle": 3, "diamond": 4, "pentagon": 5, "star": 5}[name]
        turn = angle if name != "diamond" else math.pi / 4
        scale = (1.0, 0.6) if name == "diamond" else (1.0, 1.0)
        shape = _polygon(sides, radius, turn, star=name == "star")
        if name == "diamond":
            shape = [(x * scale[1], y) for x, y in shape]
            c, s = math.cos(angle), math.sin(angle)
            shape = [(x * c - y * s, x * s + y * c) for x, y in shape]
        pen.polygon([(cx + x, cy + y) for x, y in shape], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    noise = Image.effect_noise(SIZE, rng.uniform(5, 25)).convert("RGB")
    return Image.blend(image, noise, 0.08)


def _write(job: tuple[Path, int, int]) -> None:
    path, label, seed = job
    draw(label, seed).save(path, quality=85)


def make_folder(root: Path, count: int, seed: int) -> Path:
    """``root/<class>/<n>.jpg``: ``count`` images, as many per class (made once)."""
    done = root / ".complete"
    if done.exists():
        return root
    jobs = []
    for i in range(count):
        label = i % len(CLASSES)
        folder = root / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((folder / f"{i:06d}.jpg", label, seed * 10_000_000 + i))
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write, jobs, chunksize=64))
    done.write_text(str(count))
    return root


class MemorySampler(threading.Thread):
    """Peaks of a process's resident memory and of its children's unique memory, from
    ``/proc`` every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.hwm_kb = 0
        self.workers_kb = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.hwm_kb = max(self.hwm_kb, _status_kb(self.pid, "VmHWM"))
            unique = sum(_unique_kb(child) for child in _children(self.pid))
            self.workers_kb = max(self.workers_kb, unique)
            self.stopped.wait(self.interval)


def _status_kb(pid: int, key: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else 0


def _children(pid: int) -> list[int]:
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        found = []
        for task in tasks:
            found += [int(c) for c in (task / "children").read_text().split()]
        return found
    except OSError:
        return []


def _unique_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(v) for v in re.findall(r"^Private_(?:Clean|Dirty):\s+(\d+) kB", text, re.M))


def run_fit(train: Path, test: Path, out: Path, budget: str, recipe: str,
            device: str | None) -> dict[str, Any]:  # fmt: skip
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    command = [sys.executable, "-m", "tlkit", "fit", str(train), "--out", str(out),
               "--budget", budget, "--recipe", recipe]  # fmt: skip
    command += ["--device", device] if device else []
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
    sampler = MemorySampler(process.pid)
    sampler.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - start
    sampler.stopped.set()
    sampler.join()
    (out.parent / f"{out.name}.log").write_text(output)
    if process.returncode:
        print(output[-3000:])
        raise SystemExit(f"tlkit fit failed ({process.returncode})")
    evaluated = subprocess.run(
        [sys.executable, "-m", "tlkit", "evaluate", str(out), str(test), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    test_accuracy = json.loads(evaluated.stdout.strip().splitlines()[-1])["accuracy"]
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "wall_s": round(wall, 1),
        "peak_rss_gb": round(sampler.hwm_kb / 2**20, 2),
        "workers_unique_gb": round(sampler.workers_kb / 2**20, 2),
        "test_accuracy": test_accuracy,
        "val_accuracy": metrics.get("val_accuracy", metrics.get("accuracy")),
        "plan": [line for line in output.splitlines() if line.startswith(("  ", "- "))][:40],
        "stages_s": {k: round(v, 1) for k, v in metrics["recipe"].get("seconds", {}).items()},
        "after_finetune_s": round(wall - metrics["seconds"], 1),  # the report, then exit
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="2000,10000,50000")
    parser.add_argument("--recipes", default="probe,auto")
    parser.add_argument("--budget", default="3m")
    parser.add_argument("--device", default=None, help="tlkit fit --device (default: its own)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlkit-fit-scale"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    test = make_folder(args.work / "test", TEST_IMAGES, seed=1)
    rows, records = [], []
    for size in sizes:
        made = time.perf_counter()
        train = make_folder(args.work / f"train{size}", size, seed=2)
        print(f"folder of {size} images ready ({time.perf_counter() - made:.0f} s)", flush=True)
        for recipe in args.recipes.split(","):
            out = args.work / f"run{size}-{recipe}"
            record = {"images": size, "recipe": recipe, "budget": args.budget,
                      **run_fit(train, test, out, args.budget, recipe, args.device)}  # fmt: skip
            records.append(record)
            rows.append([size, recipe, record["wall_s"], record["peak_rss_gb"],
                         record["workers_unique_gb"], record["val_accuracy"],
                         record["test_accuracy"]])  # fmt: skip
            print(table(["images", "recipe", "wall s", "peak RSS GB", "workers GB", "val",
                         "test"], rows[-1:]), flush=True)  # fmt: skip
    print(table(["images", "recipe", "wall s", "peak RSS GB", "workers GB", "val", "test"], rows))
    path = write_json(__file__, {"budget": args.budget, "device": args.device, "runs": records})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
