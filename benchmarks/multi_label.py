"""Multi-label on real images: Noto emoji tagged with their Unicode group, subgroup and name words.

    python benchmarks/beyond_single_label.py --multi-label-only   (or the whole benchmark)

The folder: every fully-qualified emoji of ``emoji-test.txt`` (no skin-tone variants) outside
the Component, Flags and Symbols groups, drawn with Noto Color Emoji on a transparent canvas.
Each image is tagged with its group (7), its subgroup where that subgroup has at least 30
emoji (12), and each word of its name that at least 20 emoji names share, stopwords left out
(``face``, ``woman``, ``man``, ``person``, ``heart``, ``family``, ``hand``): 26 labels, real
tags from the Unicode data. Half the images train, half test (iterative stratification).

Rows, on the test images:
- a hand-written BCE probe (written out here, not tlkit's): EfficientNet-Lite0 features of each
  image and its mirror, standardised, one logistic regression per label fitted with L-BFGS,
  ``C`` chosen by 5-fold cross-validated mAP, labels at probability 0.5;
- [tlkit.LinearProbe][] on the same features (its thresholds chosen on out-of-fold F1);
- ``tlkit fit train/tags.csv --budget B`` end to end, then ``tlkit evaluate``; and the
  expected calibration error of its probabilities on the test images (over every image-label
  pair) with the temperature it kept and without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont
from real_folders import (
    EMOJI_FONT,
    EMOJI_TEST,
    SKIN_TONES,
    cross_validated_c,
    letterbox,
    lite,
    pooled,
    standardise,
)

import tlkit
from tlkit import LinearProbe
from tlkit.calibration import expected_calibration_error, logits_of, scale
from tlkit.metrics import f1_scores, mean_average_precision

GROUPS_LEFT_OUT = ("Component", "Flags", "Symbols")
STOPWORDS = {"with", "in", "of", "and", "on", "the", "a"}


def emoji_tags() -> list[tuple[str, list[str]]]:
    """``(emoji, tags)`` of every emoji kept."""
    found, group, subgroup = [], "", ""
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line and group not in GROUPS_LEFT_OUT:
            points = line.split(";")[0].split()
            if SKIN_TONES & set(points):
                continue
            name = line.split("#", 1)[1].split(" ", 3)[-1]
            words = set(re.findall(r"[a-z]+", name.lower())) - STOPWORDS
            char = "".join(chr(int(p, 16)) for p in points)
            found.append((char, group, subgroup, words))
    subgroups = Counter(s for _, _, s, _ in found)
    word_counts = Counter(w for *_, ws in found for w in ws)
    out = []
    for char, group, subgroup, ws in found:
        tags = [group] + ([subgroup] if subgroups[subgroup] >= 30 else [])
        tags += sorted(w for w in ws if word_counts[w] >= 20)
        out.append((char, tags))
    return out


def build(root: Path) -> None:
    """``root/{train,test}/tags.csv`` and the images."""
    font = ImageFont.truetype(str(EMOJI_FONT), 109)
    drawn: list[tuple[str, list[str]]] = []
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for char, tags in emoji_tags():
        canvas = Image.new("RGBA", (136, 128), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
        box = canvas.getbbox()
        if box is None:  # a sequence the font cannot draw
            continue
        name = "u" + "_".join(f"{ord(c):x}" for c in char) + ".png"
        canvas.crop(box).save(images / name)
        drawn.append((name, tags))
    labels = sorted({t for _, tags in drawn for t in tags})
    matrix = torch.tensor([[int(label in tags) for label in labels] for _, tags in drawn])
    parts = tlkit.split(len(drawn), (0.5, 0.5), seed=0, stratify=matrix)
    for part, indices in zip(("train", "test"), parts, strict=True):
        (root / part).mkdir(exist_ok=True)
        rows = [f'../images/{drawn[i][0]},"{"|".join(drawn[i][1])}"' for i in indices.tolist()]
        (root / part / "tags.csv").write_text("path,tags\n" + "\n".join(rows) + "\n")


# --------------------------------------------------------------------------- the hand-written probe
def bce_probe(train: torch.Tensor, y: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Test probabilities of a per-label logistic regression on (2, N, D) features (mirror
    views), C by 5-fold cross-validated mAP."""
    train, test = standardise(train, test)

    def fit(x: torch.Tensor, targets: torch.Tensor, c: float) -> torch.Tensor:
        rows, t = x.reshape(-1, x.shape[-1]), targets.repeat(x.shape[0], 1)
        w = torch.zeros(rows.shape[1] + 1, t.shape[1], requires_grad=True)
        design = torch.cat([rows, torch.ones(len(rows), 1)], 1)
        optimizer = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                design @ w, t, reduction="sum"
            ) / len(rows) + (w[:-1] ** 2).sum() / (2 * c * len(rows))
            loss.backward()
            return loss

        optimizer.step(closure)
        return w.detach()

    def probs(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(x.shape[1], 1)
        return torch.stack([torch.cat([v, ones], 1).matmul(w).sigmoid() for v in x]).mean(0)

    c = cross_validated_c(train, y, fit, probs, mean_average_precision)
    return probs(test, fit(train, y, c))


# --------------------------------------------------------------------------- rows
def rows(root: Path, work: Path, budget: str | None) -> list[dict[str, Any]]:
    if not (root / "test" / "tags.csv").is_file():
        build(root)
    train = tlkit.ImageDataset.from_csv(root / "train" / "tags.csv")
    test = tlkit.ImageDataset.from_csv(root / "test" / "tags.csv")
    assert train.classes == test.classes
    y, test_y = train.targets, test.targets
    print(f"  {len(train)} train, {len(test)} test, {len(train.classes)} labels, "
          f"{float(y.sum(1).mean()):.2f} per image", flush=True)  # fmt: skip
    model = lite(0)
    start = time.perf_counter()
    feats = [pooled(model, letterbox([d.load(i) for i in range(len(d))], 224))
             for d in (train, test)]  # fmt: skip
    seconds = time.perf_counter() - start
    out = []

    def row(name: str, probs: torch.Tensor, predicted: torch.Tensor, took: float) -> None:
        f1 = f1_scores(predicted, test_y)
        out.append({"method": name, "mAP": mean_average_precision(probs, test_y),
                    "macro F1": f1["macro"], "micro F1": f1["micro"], "seconds": took})  # fmt: skip
        print(f"  {name}: mAP {out[-1]['mAP']:.4f}, macro F1 {f1['macro']:.4f}", flush=True)

    start = time.perf_counter()
    hand = bce_probe(feats[0], y, feats[1])
    row("hand BCE probe, Lite0, labels at 0.5", hand, (hand >= 0.5).long(),
        seconds + time.perf_counter() - start)  # fmt: skip
    start = time.perf_counter()
    probe = LinearProbe().fit(feats[0], y)
    probs = probe.predict_proba(feats[1])
    row("tlkit.LinearProbe, Lite0, thresholds out of fold", probs, probe.predict(feats[1]),
        seconds + time.perf_counter() - start)  # fmt: skip
    if budget is not None:
        out.append(fit_row(root, work / "multi-label-run", budget, test_y))
    return out


def fit_row(root: Path, run: Path, budget: str, test_y: torch.Tensor) -> dict[str, Any]:
    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run(["tlkit", "fit", str(root / "train" / "tags.csv"), "--out", str(run),
                           "--budget", budget], capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"tlkit fit failed:\n{done.stdout}\n{done.stderr}")
    evaluated = subprocess.run(["tlkit", "evaluate", str(run), str(root / "test" / "tags.csv"),
                                "--json"], capture_output=True, text=True, check=True)  # fmt: skip
    summary = json.loads(evaluated.stdout.strip().splitlines()[-1])
    metrics = json.loads((run / "metrics.json").read_text())
    model = tlkit.load_model(run / "model.pt")
    files = tlkit.ImageDataset.from_csv(root / "test" / "tags.csv").files
    kept = torch.cat([model.predict(files[i : i + 64]) for i in range(0, len(files), 64)])
    # the same probabilities before the temperature: each logit multiplied back by it
    raw = scale(logits_of(kept, multi_label=True) * model.temperature, 1.0, multi_label=True)
    ece = {"test ECE before": expected_calibration_error(raw.float(), test_y),
           "test ECE after": expected_calibration_error(kept, test_y),
           "temperature": model.temperature}  # fmt: skip
    print(f"  tlkit fit {budget}: mAP {summary['map']:.4f}, macro F1 {summary['macro_f1']:.4f} "
          f"({wall:.0f} s); test ECE {ece['test ECE before']:.4f} before, "
          f"{ece['test ECE after']:.4f} after (T={model.temperature:.2f})", flush=True)  # fmt: skip
    return {"method": f"tlkit fit --budget {budget}", "mAP": summary["map"],
            "macro F1": summary["macro_f1"], "micro F1": summary["micro_f1"],
            "seconds": wall, "validation mAP": metrics["map"], "backbone": metrics["backbone"],
            "reasons": metrics["recipe"]["reasons"], **ece}  # fmt: skip
