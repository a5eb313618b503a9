"""Run reports: per-class metrics and the files of a run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tlkit import finetune
from tlkit import report as report_module
from tlkit._utils import atomic_write_text, replace_folder
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


def _two_colours(root: Path) -> Path:
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (32, 32), colour).save(root / name / f"{i}.png")
    return root


def test_a_failed_report_leaves_the_earlier_run_whole_and_a_finished_one_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = finetune(_two_colours(tmp_path / "data"), backbone_name="resnet18", weights=None,
                      recipe="probe", image_size=32, verbose=False)  # fmt: skip
    out = tmp_path / "run"
    write_report(result, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result.val_metrics["accuracy"] = 0.123  # a different run

    def broken(*args: object) -> list[str]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "pictures", broken)  # where write_report looks
    with pytest.raises(OSError, match="No space left"):
        write_report(result, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]  # no partial left
    monkeypatch.undo()
    write_report(result, out)
    assert json.loads((out / "metrics.json").read_text())["accuracy"] == 0.123
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]


def test_a_folder_holding_other_files_is_never_replaced(tmp_path: Path) -> None:
    result = finetune(_two_colours(tmp_path / "data"), backbone_name="resnet18", weights=None,
                      recipe="probe", image_size=32, verbose=False)  # fmt: skip
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match=r"thesis\.tex"):
        write_report(result, out)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_a_partial_folder_of_a_killed_writer_is_removed_and_a_live_one_kept(
    tmp_path: Path,
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".run.{dead.pid}.abc.tmp"
    (stale / "inner").mkdir(parents=True)
    live = tmp_path / f".run.{os.getppid()}.def.tmp"
    live.mkdir()
    replace_folder(tmp_path / "run", lambda folder: (folder / "model.pt").write_bytes(b"new"))
    assert not stale.exists() and live.is_dir()
    assert (tmp_path / "run" / "model.pt").read_bytes() == b"new"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0o700


def test_files_get_the_permissions_the_umask_gives_and_a_replaced_file_keeps_its_own(
    tmp_path: Path,
) -> None:
    old = os.umask(0o027)  # a group-shared place: rw-r-----
    try:
        written = atomic_write_text("new", tmp_path / "notes.txt")
        assert written.stat().st_mode & 0o777 == 0o640  # not mkstemp's private 0o600
        os.umask(0o022)
        assert atomic_write_text("newer", written).stat().st_mode & 0o777 == 0o640  # its own
        made = replace_folder(tmp_path / "run", lambda f: atomic_write_text("x", f / "a.json"))
        assert (made / "a.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
