"""Run reports: per-class metrics and the files of a run folder."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from tlkit import finetune
from tlkit.report import class_table, per_class_metrics, write_report


def test_precision_recall_and_support_from_a_confusion_matrix() -> None:
    matrix = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2 never seen nor predicted
    rows = per_class_metrics(matrix)
    assert rows[0] == {"precision": 5 / 7, "recall": 5 / 6, "support": 6}
    assert rows[1] == {"precision": 3 / 4, "recall": 3 / 5, "support": 5}
    assert rows[2]["precision"] is None and rows[2]["recall"] is None  # JSON null, not NaN
    table = class_table(["a", "b", "c"], rows)
    assert "| a | 0.714 | 0.833 | 6 |" in table and table.count("\n") == 4
    assert "| c | - | - | 0 |" in table


def test_the_mistakes_picture_is_drawn_only_when_there_are_mistakes(tmp_path: Path) -> None:
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (32, 32), colour).save(tmp_path / "data" / name / f"{i}.png")
    result = finetune(tmp_path / "data", backbone_name="resnet18", weights=None, recipe="probe",
                      image_size=32, verbose=False)  # fmt: skip
    assert result.val_metrics["accuracy"] == 1.0  # two solid colours: nothing to show
    out = tmp_path / "run"
    out.mkdir()
    (out / "top_losses.png").write_bytes(b"an earlier run's picture")
    report = write_report(result, out).read_text()
    assert not (out / "top_losses.png").exists()
    assert "None: all 12 validation images are classified right." in report
    # the same run with every validation prediction reversed: both images are mistakes
    assert result.val_probs is not None and result.val_images is not None
    result.val_probs = result.val_probs.flip(1)
    result.val_metrics["accuracy"] = 0.0
    report = write_report(result, out).read_text()
    with Image.open(out / "top_losses.png") as picture:
        assert picture.width > 300  # two panels, not an empty figure
    assert "![Most confident mistakes (validation)](top_losses.png)" in report
    assert "None: all" not in report
