"""Several labels per image, end to end: a multi-label CSV through `tlkit fit`, the saved
model, `predict`, `evaluate`, `export` and the report."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import tlkit
from tlkit import cli
from tlkit.calibration import expected_calibration_error
from tlkit.metrics import choose_thresholds, multi_label_metrics

MARKS = {  # label: (box, colour), each drawn where the image has the label
    "red": ((2, 2, 16, 16), (230, 20, 20)),
    "blue": ((22, 22, 38, 38), (20, 20, 230)),
    "green": ((22, 2, 38, 18), (20, 200, 20)),
}


def write_tagged(root: Path, n: int, seed: int, sep: str = "|") -> Path:
    """``n`` images with each mark at random and ``tags.csv`` listing the marks drawn."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        image = Image.new("RGB", (40, 40), (128, 128, 128))
        draw = ImageDraw.Draw(image)
        tags = [name for name, rate in zip(MARKS, (0.5, 0.4, 0.3), strict=True)
                if float(torch.rand(1, generator=g)) < rate]  # fmt: skip
        for name in tags:
            draw.rectangle(MARKS[name][0], fill=MARKS[name][1])
        image.save(root / f"{i}.png")
        rows.append(f'{i}.png,"{sep.join(tags)}"')
    (root / "tags.csv").write_text("path,tags\n" + "\n".join(rows) + "\n")
    return root / "tags.csv"


FIT = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("multi")
    train = write_tagged(base / "train", 60, seed=0)
    test = write_tagged(base / "test", 24, seed=1)
    assert cli.main(["fit", str(train), "--out", str(base / "run"), *FIT]) == 0
    return {"train": train, "test": test, "out": base / "run"}


def test_fit_detects_several_labels_and_keeps_out_of_fold_thresholds(run) -> None:
    model = tlkit.load_model(run["out"])
    assert model.multi_label and model.classes == ["blue", "green", "red"]
    metrics = json.loads((run["out"] / "metrics.json").read_text())
    assert metrics["multi_label"] and metrics["images"] == 60
    assert "cross-validation" in metrics["method"]
    assert [metrics["per_class"][c]["threshold"] for c in model.classes] == model.thresholds
    assert sum(metrics["per_class"][c]["images"] for c in model.classes) == int(
        tlkit.ImageDataset.from_csv(run["train"]).targets.sum()
    )
    report = (run["out"] / "report.md").read_text()
    assert "mean average precision" in report and "## Per label" in report
    assert "Confusion matrix" not in report and not (run["out"] / "confusion_matrix.png").exists()
    assert (run["out"] / "average_precision.png").is_file()
    # calibrated like a single-label model: one temperature on every label's logit
    assert metrics["calibration"]["temperature"] == model.temperature
    assert metrics["calibration"]["ece"] <= metrics["calibration"]["ece_before"]
    assert "## Calibration" in report and (run["out"] / "reliability.png").is_file()


def test_the_python_result_scores_what_it_judged_and_refuses_a_single_answer(tmp_path) -> None:
    csv = write_tagged(tmp_path / "data", 60, seed=0)
    result = tlkit.finetune(csv, backbone_name="resnet18", weights=None, image_size=32,
                            verbose=False)  # fmt: skip
    assert result.recipe.name == "probe" and result.val_labels is not None
    assert result.val_probs is not None and result.val_labels.shape == (60, 3)
    expected = multi_label_metrics(result.val_probs, result.val_labels,
                                   torch.tensor(result.thresholds))  # fmt: skip
    assert result.val_metrics["map"] == pytest.approx(expected["map"])
    # the thresholds were chosen out of fold, then carried through the calibration: the same
    # decisions as thresholds chosen on the calibrated probabilities
    probs = result.val_probs
    chosen = choose_thresholds(probs, result.val_labels)
    assert torch.equal(probs >= torch.tensor(result.thresholds), probs >= chosen)
    assert any("temperature" in r for r in result.recipe.reasons)
    files = [csv.parent / f"{i}.png" for i in range(5)]
    probs = result.predict(files)
    sets = result.predict_label_sets(files)
    for row, labels in zip(probs, sets, strict=True):
        wanted = {c for c, p, t in zip(result.classes, row.tolist(), result.thresholds,
                                       strict=True) if p >= t}  # fmt: skip
        assert {name for name, _ in labels} == wanted
    with pytest.raises(ValueError, match="use predict_label_sets"):
        result.predict_labels(files)


def test_predict_and_evaluate_answer_label_sets(run, capsys) -> None:
    model = tlkit.load_model(run["out"])
    files = [run["test"].parent / f"{i}.png" for i in range(4)]
    capsys.readouterr()
    assert cli.main(["predict", str(run["out"]), *map(str, files), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [set(line["labels"]) for line in lines] == [
        {name for name, _ in labels} for labels in model.predict_label_sets(files)
    ]
    rows = run["out"].parent / "label-sets.csv"
    command = ["evaluate", str(run["out"]), str(run["test"]), "--json", "--predictions", str(rows)]
    assert cli.main(command) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    data = tlkit.ImageDataset.from_csv(run["test"])
    with rows.open(newline="") as f:  # each image's labels and answer, as predict gives them
        written = list(csv.DictReader(f))
    answered = model.predict_label_sets(data.files)
    assert [r["file"] for r in written] == [str(f) for f in data.files]
    for r, labels, truth in zip(written, answered, data.targets, strict=True):
        wanted, given = (set(r[k].split(";")) - {""} for k in ("labels", "predicted"))
        assert given == {name for name, _ in labels}
        assert wanted == {data.classes[i] for i in truth.nonzero()[:, 0]}
        assert r["right"] == str(int(wanted == given))
    assert summary["exact_match"] == pytest.approx(sum(r["right"] == "1" for r in written) / 24)
    expected = multi_label_metrics(model.predict(data.files), data.targets,
                                   torch.tensor(model.thresholds))  # fmt: skip
    assert summary["map"] == pytest.approx(expected["map"]) and summary["images"] == 24
    assert summary["map"] > 0.8  # the marks are plain to see
    ece = expected_calibration_error(model.predict(data.files), data.targets)
    assert summary["ece"] == pytest.approx(ece, abs=1e-6)  # each label's probability
    for args in (
        ["predict", str(run["out"]), str(files[0]), "--min-confidence", "0.5"],
        ["evaluate", str(run["out"]), str(run["test"]), "--unknown", str(run["test"].parent)],
    ):
        assert cli.main(args) == 2
        assert "each label at its own threshold" in capsys.readouterr().err


def test_the_pt2_export_gives_each_labels_probability_and_carries_the_thresholds(run) -> None:
    target = run["out"].parent / "multi.pt2"
    assert cli.main(["export", str(run["out"]), "--output", str(target)]) == 0
    extra = {"classes.json": "", "tlkit.json": ""}
    program = torch.export.load(str(target), extra_files=extra).module()
    settings = json.loads(extra["tlkit.json"])
    model = tlkit.load_model(run["out"])
    assert settings["multi_label"] and settings["thresholds"] == model.thresholds
    files = [run["test"].parent / f"{i}.png" for i in range(6)]
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(f)).copy()).permute(2, 0, 1)
                          for f in files])  # fmt: skip
    assert torch.allclose(program(pixels), model.predict(files), atol=1e-4)
    warmer = dataclasses.replace(model, temperature=1.7)  # calibrated: each label's logit / T
    assert not torch.allclose(warmer.predict(files), model.predict(files), atol=1e-3)
    tlkit.export.export(warmer, run["out"].parent / "warm.pt2")
    program = torch.export.load(str(run["out"].parent / "warm.pt2")).module()
    assert torch.allclose(program(pixels), warmer.predict(files), atol=1e-4)
    with pytest.raises(ValueError, match="own threshold"):
        tlkit.export.export(model, run["out"].parent / "x.pt2", min_confidence=0.5)


def test_a_label_column_with_label_sep_and_a_folder_given_one_exits_2(tmp_path, capsys) -> None:
    csv = write_tagged(tmp_path / "data", 30, seed=2, sep=";")
    text = csv.read_text().replace("path,tags", "path,label")
    csv.write_text(text)
    out = tmp_path / "run"
    assert cli.main(["fit", str(csv), "--out", str(out), "--label-sep", ";", *FIT]) == 0
    assert tlkit.load_model(out).multi_label
    assert cli.main(["fit", str(tmp_path / "data"), "--out", str(out), "--label-sep", ";",
                     *FIT]) == 2  # fmt: skip
    assert "--label-sep reads a CSV" in capsys.readouterr().err


def test_the_trainer_trains_a_multi_label_head_with_bce() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    tags = (torch.rand(200, 4) < 0.4).float()
    x = torch.randn(200, 6) + torch.cat([2 * tags, torch.zeros(200, 2)], 1)
    loader = DataLoader(TensorDataset(x, tags), batch_size=32, shuffle=True)
    model = torch.nn.Linear(6, 4)
    trainer = tlkit.Trainer(model, optimizer=torch.optim.Adam(model.parameters(), 0.05),
                            loss=torch.nn.BCEWithLogitsLoss(), verbose=False)  # fmt: skip
    history = trainer.fit(loader, loader, epochs=5)
    assert history["val_loss"][-1] < history["val_loss"][0]
    right = ((model(x) > 0) == (tags > 0.5)).double().mean()
    assert history["val_accuracy"][-1] == pytest.approx(float(right), abs=1e-6)
    assert "val_top5_accuracy" not in history.records[-1]
    assert torch.allclose(trainer.predict(x), model(x).sigmoid(), atol=1e-6)
    with pytest.raises(ValueError, match="multi-label loss"):
        trainer.evaluate(loader, tta=True)


def test_fine_tuning_a_multi_label_model_uses_bce_and_judges_on_held_out_images(tmp_path) -> None:
    csv = write_tagged(tmp_path / "data", 80, seed=3)
    result = tlkit.finetune(csv, backbone_name="resnet18", weights=None, image_size=32,
                            recipe="lp-ft", verbose=False)  # fmt: skip
    assert result.multi_label and result.recipe.finetune_epochs > 0
    assert result.val_labels is not None and result.val_probs is not None
    reasons = " ".join(result.recipe.reasons)
    assert "label-ranking precision" in reasons and "binary cross-entropy per label" in reasons
    assert "label smoothing" not in reasons
    if result.recipe.kept == "probe":  # judged out of fold on every training image
        assert len(result.val_labels) == 80
    else:  # judged on the held-out fold, thresholds chosen there
        assert 0 < len(result.val_labels) < 80
        assert torch.allclose(
            torch.tensor(result.thresholds, dtype=torch.float64),
            choose_thresholds(result.val_probs, result.val_labels),
        )
    history = result.history.records
    assert history and all(r["stage"] == "finetune" for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    files = [csv.parent / f"{i}.png" for i in range(3)]
    assert torch.allclose(tlkit.load_model(result.save(tmp_path / "m.pt")).predict(files),
                          result.predict(files), atol=1e-5)  # fmt: skip
