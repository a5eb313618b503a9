"""The STL10 example: its data path on STL10-layout files, the smoke runs, and its errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "stl10"
sys.path.insert(0, str(EXAMPLE))

import stl10_data  # noqa: E402
import train  # noqa: E402


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def test_data_path_splits_5000_generated_images_into_4000_500_500(tmp_path: Path) -> None:
    folder = stl10_data.write_stl10_binary(tmp_path, n_train=5000, n_test=40, seed=3)
    train_set, test_set = train.load_stl10(tmp_path, download=False, verify=False)
    assert len(train_set) == 5000 and len(test_set) == 40
    parts = train.make_splits(train_set, seed=0)
    assert [len(p) for p in parts] == [4000, 500, 500]
    assert len({i for p in parts for i in p.indices}) == 5000
    # torchvision's parser reads the column-major layout back to the images that were written
    raw = np.fromfile(folder / "test_X.bin", dtype=np.uint8).reshape(40, 3, 96, 96)
    image, label = test_set[7]
    assert isinstance(image, Image.Image) and image.size == (96, 96)
    assert np.array_equal(np.asarray(image), raw[7].transpose(2, 1, 0))
    assert label == int(np.fromfile(folder / "test_y.bin", dtype=np.uint8)[7]) - 1
    assert set(train_set.labels.tolist()) == set(range(10))


def test_real_stl10_class_checks_the_archive_checksum(tmp_path: Path) -> None:
    stl10_data.write_stl10_binary(tmp_path, n_train=20, n_test=20)
    with pytest.raises(train.UsageError, match="--smoke"):
        train.load_stl10(tmp_path, download=False, verify=True)


@pytest.mark.parametrize("recipe", ["seed", "improved"])
def test_smoke_run_end_to_end(recipe: str, tmp_path: Path) -> None:
    out = tmp_path / recipe
    result = run(str(EXAMPLE / "train.py"), "--smoke", "--recipe", recipe, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    generated = re.search(r"generated STL10-layout data in (\S+)", result.stdout)
    assert generated and not Path(generated.group(1)).exists()  # nothing left behind
    if recipe == "seed":
        assert "frozen 61 parameter tensors (last: layer2.2.conv3.weight)" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == recipe and metrics["smoke"] is True
    assert metrics["split"] == {"train": 160, "val": 20, "test": 20, "stl10_test": 100}
    assert metrics["frozen_tensors"] == (61 if recipe == "seed" else 33)
    assert len(metrics["history"]) == 2
    for key in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "seconds",
        "images_per_sec",
    ):
        assert key in metrics["history"][-1]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and 0.0 <= metrics["test500_accuracy"] <= 1.0
    assert len(metrics["twenty_image_check"]["rows"]) == 20
    for picture in ("curves.png", "predictions.png"):
        with Image.open(out / picture) as image:
            image.verify()
    best = torch.load(out / "best.pt", weights_only=True)
    assert "fc.0.weight" in best["model"] or "fc.1.weight" in best["model"]
    torch.load(out / "model.pt", weights_only=True)
    photo = tmp_path / "grey.png"
    Image.new("L", (50, 70), 128).save(photo)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (300, 200), (10, 200, 30, 128)).save(rgba)
    predicted = run(
        str(EXAMPLE / "predict.py"), str(photo), str(rgba), "--checkpoint", str(out / "model.pt")
    )
    assert predicted.returncode == 0, predicted.stderr
    lines = predicted.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.count(",") == 2 for line in lines)


def test_missing_data_gives_one_clear_message_and_exit_status_2(tmp_path: Path) -> None:
    result = run(
        str(EXAMPLE / "train.py"),
        "--data-root",
        str(tmp_path / "nothing"),
        "--no-download",
        "--weights",
        "none",
    )
    assert result.returncode == 2
    assert (
        "STL10 not found under" in result.stderr
        and "--smoke" in result.stderr
        and "--download" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_unreadable_weights_give_one_clear_message_and_exit_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    result = run(str(EXAMPLE / "train.py"), "--weights", str(bad), "--data-root", str(tmp_path))
    assert result.returncode == 2
    assert "cannot read the weights file" in result.stderr and "Traceback" not in result.stderr
