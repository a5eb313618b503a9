"""Calibrated probabilities (temperature scaling), balanced accuracy and an honest "unknown"."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

import tlkit
from tlkit import cli, finetune, load_model
from tlkit.calibration import (
    cross_fitted_ece,
    expected_calibration_error,
    fit_temperature,
    logits_of,
    reliability,
    scale,
    threshold_table,
)
from tlkit.metrics import ClassificationMeter, balanced_accuracy

from . import shapes


def _calibrated(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose softmax is calibrated by construction: labels drawn from it."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, 4, generator=g)
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).flatten()
    return logits, labels


def test_the_temperature_undoes_a_known_over_confidence_and_keeps_every_prediction() -> None:
    logits, labels = _calibrated(4000)
    for factor in (0.5, 3.0):
        t = fit_temperature(factor * logits, labels)
        assert t == pytest.approx(factor, rel=0.15)
        scaled = (factor * logits / t).softmax(1)
        assert torch.equal(scaled.argmax(1), logits.argmax(1))
        before = expected_calibration_error((factor * logits).softmax(1), labels)
        assert expected_calibration_error(scaled, labels) < before / 2
        assert cross_fitted_ece(factor * logits, labels) < before / 2
    # a calibrated model is left alone
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)


def test_one_temperature_calibrates_every_label_of_a_multi_label_model() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(3000, 5, generator=g)
    labels = torch.bernoulli(logits.sigmoid(), generator=g)  # calibrated by construction
    t = fit_temperature(3.0 * logits, labels)
    assert t == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error((3.0 * logits).sigmoid(), labels)
    after = expected_calibration_error(scale(3.0 * logits, t, multi_label=True), labels)
    assert after < before / 2 and cross_fitted_ece(3.0 * logits, labels) < before / 2
    bins = reliability(logits.sigmoid(), labels)
    assert sum(bins.count) == 3000 * 5  # every (image, label) pair
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)
    probs = torch.tensor([[0.2, 0.9]])
    assert torch.allclose(scale(logits_of(probs, multi_label=True), 1.0, multi_label=True).float(),
                          probs)  # fmt: skip
    with pytest.raises(ValueError, match="multi-hot labels must be 0 or 1"):
        fit_temperature(logits, 2 * labels)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="temperature must be a positive finite number"):
            scale(logits, bad, multi_label=True)  # type: ignore[arg-type]


def test_calibration_refuses_what_it_cannot_read() -> None:
    logits, labels = _calibrated(10)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        fit_temperature(logits[:, 0], labels)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        fit_temperature(logits, labels + 4)
    with pytest.raises(ValueError, match="N integer class indices"):
        fit_temperature(logits, labels.float())
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(torch.full_like(logits, float("nan")), labels)
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        reliability(logits.softmax(1), labels, bins=0)
    assert fit_temperature(logits[:1], labels[:1]) == 1.0  # nothing to fit on


def test_reliability_bins_and_threshold_table_count_what_they_say() -> None:
    probs = torch.tensor([[0.95, 0.05], [0.92, 0.08], [0.55, 0.45], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 0, 1])
    bins = reliability(probs, labels, bins=10)
    assert bins.count == [1, 1, 2] and bins.accuracy == [1.0, 1.0, 0.5]
    assert bins.ece == pytest.approx((0.45 + 0.3 + 2 * abs(0.5 - 0.935)) / 4)
    rows = threshold_table(probs.max(1).values, probs.argmax(1) == labels,
                           torch.tensor([0.5, 0.99, 0.2]), thresholds=[0.6, 0.99])  # fmt: skip
    assert rows[0] == {"min_confidence": 0.6, "answered": 0.75, "accuracy": 2 / 3,
                       "unknown_rejected": 2 / 3}  # fmt: skip
    assert rows[1]["answered"] == 0.0 and rows[1]["accuracy"] is None


def test_balanced_accuracy_is_the_mean_recall_and_the_meter_reports_it() -> None:
    matrix = torch.tensor([[95, 5], [4, 1]])  # accuracy 0.91, the small class mostly missed
    assert balanced_accuracy(matrix) == pytest.approx((0.95 + 0.2) / 2)
    meter = ClassificationMeter(confusion=True)
    outputs = torch.tensor([[2.0, 0.0]] * 9 + [[0.0, 2.0]])
    targets = torch.tensor([0] * 8 + [1, 1])
    meter.update(torch.tensor(0.0), outputs, targets)
    assert meter.compute()["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("calibration")
    data = shapes.write(base / "train", 8, seed=0)
    result = finetune(data, backbone_name="resnet18", weights=None, recipe="probe",
                      image_size=32, verbose=False)  # fmt: skip
    return {"base": base, "data": data, "result": result}


def test_finetune_calibrates_on_the_predictions_that_judged_it_and_saves_the_temperature(
    fitted: dict[str, Any],
) -> None:
    result, base = fitted["result"], fitted["base"]
    metrics = result.val_metrics
    assert result.temperature == metrics["temperature"]
    # the fitted temperature is kept only when it lowers the error on the half it did not see
    gain = metrics["ece_before"] - metrics["ece_scaled"]
    applied = gain >= max(metrics["ece_gain_se"], 0.001)
    assert result.temperature == (metrics["fitted_temperature"] if applied else 1.0)
    said = "probabilities calibrated on the out-of-fold" if applied else "probabilities left as"
    assert any(r.startswith(said) for r in result.recipe.reasons)
    t = 2.5  # whatever was fitted, predictions are the logits divided by the temperature
    result = dataclasses.replace(result, temperature=t)
    # predictions are the network's logits divided by the temperature
    files = sorted(Path(fitted["data"]).rglob("*.png"))[:5]
    x = result.preprocess(files)
    scores = result.model(x) if not result.tta else None
    probs = result.predict(files)
    if scores is not None:
        assert torch.allclose(probs, (scores / t).softmax(1), atol=1e-5)
    loaded = load_model(result.save(Path(base) / "model.pt"))
    assert loaded.temperature == pytest.approx(t)
    assert torch.allclose(loaded.predict(files), probs, atol=1e-5)


def test_a_model_file_with_a_bad_temperature_is_refused(fitted: dict[str, Any]) -> None:
    path = Path(fitted["base"]) / "bad.pt"
    fitted["result"].save(path)
    state = torch.load(path, weights_only=True)
    for bad in (0.0, "hot", float("nan")):
        torch.save({**state, "temperature": bad}, path)
        with pytest.raises(ValueError, match="temperature must be a number"):
            load_model(path)


def test_predict_answers_unknown_below_the_minimum_confidence(
    fitted: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    result = fitted["result"]
    files = sorted(Path(fitted["data"]).rglob("*.png"))[:4]
    labels = result.predict_labels(files)
    assert all(name in shapes.SHAPES for name, _ in labels)
    top = min(p for _, p in labels)
    kept = result.predict_labels(files, min_confidence=top + 1e-6)
    assert [name is None for name, _ in kept] == [p < top + 1e-6 for _, p in labels]
    with pytest.raises(ValueError, match="min_confidence must be a probability"):
        result.predict_labels(files, min_confidence=1.5)
    # from the command line, with a model made unsure of everything (a huge temperature)
    run = Path(fitted["base"]) / "unsure"
    run.mkdir()
    result.save(run / "model.pt")
    state = torch.load(run / "model.pt", weights_only=True)
    torch.save({**state, "temperature": 1000.0}, run / "model.pt")
    capsys.readouterr()
    argv = ["predict", str(run), *map(str, files)]
    assert cli.main([*argv, "--min-confidence", "0.5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(line.split("\t")[1] == "unknown" for line in lines)
    assert cli.main([*argv, "--json", "--min-confidence", "0.5"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert all(r["label"] is None and r["top_class"] in shapes.SHAPES for r in records)
    assert cli.main(argv) == 0  # without the option, every image gets its top class
    assert all(line.split("\t")[1] in shapes.SHAPES
               for line in capsys.readouterr().out.strip().splitlines())  # fmt: skip
    assert cli.main([*argv, "--min-confidence", "2"]) == 2
    assert "min_confidence must be a probability from 0 to 1, got 2.0" in capsys.readouterr().err


def test_evaluate_reports_balanced_accuracy_and_what_each_threshold_rejects(
    fitted: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base = Path(fitted["base"])
    run = base / "evaluated"
    run.mkdir()
    fitted["result"].save(run / "model.pt")
    test = shapes.write(base / "test", 3, seed=1)
    others = base / "others" / "nested"
    others.mkdir(parents=True)
    for i in range(3):  # images of no class: flat greys
        Image.new("L", (40, 30), 60 * i).save(others / f"{i}.png")
    capsys.readouterr()
    argv = ["evaluate", str(run), str(test), "--unknown", str(base / "others"), "--json"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert 0 <= summary["balanced_accuracy"] <= 1 and "balanced accuracy" in out
    assert [r["min_confidence"] for r in summary["thresholds"]][:2] == [0.3, 0.4]
    for row in summary["thresholds"]:
        assert row["unknown_rejected"] in (0.0, 1 / 3, 2 / 3, 1.0)
    rejected = [r["unknown_rejected"] for r in summary["thresholds"]]
    assert rejected == sorted(rejected)  # a higher threshold rejects at least as many
    assert cli.main([*argv, "--min-confidence", "0.99"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["min_confidence"] for r in summary["thresholds"]] == [0.99]
    assert cli.main(["evaluate", str(run), str(test), "--unknown", str(base / "none")]) == 2
    assert "is not a folder of images" in capsys.readouterr().err


def test_the_report_shows_calibration_and_balanced_accuracy(fitted: dict[str, Any]) -> None:
    from tlkit.report import write_report

    out = Path(fitted["base"]) / "report"
    report = write_report(fitted["result"], out).read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["balanced_accuracy"] <= 1
    assert metrics["calibration"]["temperature"] == fitted["result"].temperature
    assert "## Calibration" in report
    assert "![Reliability (validation)](reliability.png)" in report
    with Image.open(out / "reliability.png") as picture:
        assert picture.width >= 300
    for applied in (True, False):
        figures = {"ece_before": 0.2, "ece_scaled": 0.05 if applied else 0.1996,
                   "ece_gain_se": 0.0}  # fmt: skip
        result = dataclasses.replace(
            fitted["result"], temperature=2.0 if applied else 1.0,
            val_metrics={**fitted["result"].val_metrics, **figures},
        )  # fmt: skip
        report = write_report(result, out).read_text()
        assert ("temperature of 2.00" in report and "0.200 before, 0.050 after" in report) == (
            applied
        )
        # refused for a gain under AUTO.calibration_gain (0.1996 against 0.2): said so
        assert (
            "error of 0.200 on the half it was not fitted on, not lower by 0.001 than 0.200 "
            "without it" in report
        ) == (not applied)


def test_an_exported_model_carries_the_temperature(fitted: dict[str, Any]) -> None:
    from tlkit.export import Deployable

    net = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    images = torch.randint(0, 256, (3, 3, 9, 9), dtype=torch.uint8)
    plain = Deployable(net, ["a", "b"], 8, (0.5,) * 3, (0.5,) * 3, (255, 255, 255))
    hot = Deployable(net, ["a", "b"], 8, (0.5,) * 3, (0.5,) * 3, (255, 255, 255), temperature=4.0)
    expected = (plain(images).log() / 4.0).softmax(1)
    assert torch.allclose(hot(images), expected, atol=1e-6)
    assert not torch.allclose(hot(images), plain(images), atol=1e-3)


# --------------------------------------------------------------------------- imbalanced classes
def _skewed(n_big: int, n_small: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([0] * n_big + [1] * n_small)
    x = torch.randn(len(y), 6, generator=g) + 1.2 * y[:, None].float()  # overlapping clouds
    return x, y


def test_a_balanced_probe_finds_the_small_class_that_plain_accuracy_gives_up() -> None:
    from tlkit import LinearProbe
    from tlkit.probe import balancing_weights

    x, y = _skewed(300, 15, seed=0)
    test_x, test_y = _skewed(500, 500, seed=1)  # balanced test set
    plain = LinearProbe().fit(x, y)
    balanced = LinearProbe(class_weight="balanced").fit(x, y)
    recall = [
        float((p.predict(test_x)[test_y == 1] == 1).float().mean()) for p in (plain, balanced)
    ]
    assert recall[1] > recall[0] + 0.2
    right = [(p.predict(test_x) == test_y).double() for p in (plain, balanced)]
    assert right[1].mean() > right[0].mean()  # balanced accuracy on a balanced test set
    # C was chosen on balanced accuracy: the weighted mean of the out-of-fold hits
    assert balanced.cv_probs_ is not None
    hits = (balanced.cv_probs_.argmax(1) == y).double()
    assert balanced.cv_accuracy_[balanced.C_] == pytest.approx(
        float((hits * balancing_weights(y, 2)).mean())
    )
    with pytest.raises(ValueError, match="class_weight must be None, 'balanced'"):
        LinearProbe(class_weight="equal")
    with pytest.raises(ValueError, match="positive finite"):
        LinearProbe(class_weight=[1.0, -1.0])
    with pytest.raises(ValueError, match="2 weights for 3 classes"):
        LinearProbe(class_weight=[1.0, 2.0]).fit(x, y, classes=3)


def test_weighted_comparisons_count_a_small_class_as_much_as_a_large_one() -> None:
    from tlkit.probe import balancing_weights
    from tlkit.recipes.keep_rule import clearly_better

    y = torch.tensor([0] * 90 + [1] * 10)
    default = torch.ones(100, dtype=torch.bool)
    default[90:] = False  # right on the big class only
    other = default.clone()
    other[:6] = False  # loses 6 big-class images ...
    other[90:] = True  # ... to get the 10 small-class ones
    assert not clearly_better(default, other)[0]  # +4 images of 100: within the noise
    wins, gain, _ = clearly_better(default, other, weights=balancing_weights(y, 2))
    assert wins and gain == pytest.approx((84 / 90 + 1.0) / 2 - 0.5)  # balanced accuracies


def test_finetune_balances_skewed_classes_by_itself_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "data"
    shapes.write(root, 4, seed=0)
    extra = shapes.write(tmp_path / "more", 16, seed=3) / "circle"
    for i, file in enumerate(sorted(extra.glob("*.png"))):
        file.rename(root / "circle" / f"more-{i}.png")  # circles: 20 against 4 of the others
    kwargs: dict[str, Any] = {"backbone_name": "resnet18", "weights": None, "recipe": "probe",
                              "image_size": 32, "verbose": False}  # fmt: skip
    result = finetune(root, **kwargs)
    assert result.recipe.class_weight == pytest.approx([32 / 80, 2.0, 2.0, 2.0])  # N / (K n_c)
    reasons = "\n".join(result.recipe.reasons)
    assert "up to 5.0 to 1 (more than 4): balanced class weights" in reasons
    assert "cross-validation balanced accuracy" in reasons
    plain = finetune(root, class_weight=None, **kwargs)
    assert plain.recipe.class_weight is None
    assert "every image weighs alike" in "\n".join(plain.recipe.reasons)
    given = finetune(root, class_weight={c: 1.0 for c in shapes.SHAPES}, **kwargs)
    assert given.recipe.class_weight == [1.0] * 4
    with pytest.raises(ValueError, match=r"missing \['triangle'\]"):
        finetune(root, class_weight={"circle": 1.0, "cross": 1.0, "square": 1.0}, **kwargs)


def test_a_balanced_sampler_draws_fine_tuning_images_by_class_weight_instead_of_the_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    shapes.write(root, 4, seed=0)
    extra = shapes.write(tmp_path / "more", 16, seed=3) / "circle"
    for i, file in enumerate(sorted(extra.glob("*.png"))):
        file.rename(root / "circle" / f"more-{i}.png")  # circles: 20 against 4 of the others
    drawn: list[torch.Tensor] = []  # the labels of 200 passes over each training loader
    losses: list[nn.Module] = []
    fit = tlkit.Trainer.fit

    def recording_fit(trainer: tlkit.Trainer, train: Any, *args: Any, **kwargs: Any) -> Any:
        drawn.append(torch.cat([batch[1] for _ in range(200) for batch in train]))
        losses.append(trainer.loss)
        return fit(trainer, train, *args, **kwargs)

    monkeypatch.setattr(tlkit.Trainer, "fit", recording_fit)
    kwargs: dict[str, Any] = {"backbone_name": "resnet18", "weights": None, "recipe": "full",
                              "image_size": 32, "verbose": False}  # fmt: skip
    result = finetune(root, sampler="balanced", **kwargs)
    assert result.recipe.sampler == "balanced"
    reasons = "\n".join(result.recipe.reasons)
    assert "fine-tuning draws its images by them instead (a balanced sampler)" in reasons
    assert "each epoch draws its images with replacement" in reasons
    assert all(getattr(m, "weight", None) is None for m in losses)  # the loss unweighted
    plain = finetune(root, **kwargs)  # shuffled, the class weights in the loss instead
    assert plain.recipe.sampler == "shuffle" and losses[-1].weight is not None
    balanced, shuffled = (torch.bincount(d, minlength=4).double() for d in drawn)
    assert shuffled[0] / shuffled[1:].max() > 3  # each image once a pass: 17 circles to 3 or 4
    # drawn in proportion to each class's weight times its images: about as often each
    expected = torch.tensor(result.recipe.class_weight).double() * shuffled
    expected *= balanced.sum() / expected.sum()
    assert torch.allclose(balanced, expected, rtol=0.15)
    assert balanced.max() / balanced.min() < 1.5


def test_a_balanced_sampler_is_refused_without_class_weights_or_one_class_per_image(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="sampler must be 'shuffle' or 'balanced', got 'even'"):
        finetune(tmp_path / "no such folder", sampler="even")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_weight=None gives no weights"):
        finetune(tmp_path / "no such folder", sampler="balanced", class_weight=None)
    root = tmp_path / "tags"
    (root / "images").mkdir(parents=True)
    rows = ["path,labels"]
    for i in range(8):
        Image.new("RGB", (16, 16), (40 * i, 10, 10)).save(root / "images" / f"{i}.png")
        rows.append(f"images/{i}.png,{'a b' if i % 2 else 'a'}")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    tags = tlkit.ImageDataset.from_csv(root / "tags.csv", label_sep=" ")
    with pytest.raises(ValueError, match="sampler='balanced' needs one label per image"):
        finetune(tags, sampler="balanced", backbone_name="resnet18", weights=None,
                 verbose=False)  # fmt: skip
    even = shapes.write(tmp_path / "even", 4, seed=0)  # auto gives no weights: nothing to draw by
    result = finetune(even, sampler="balanced", backbone_name="resnet18", weights=None,
                      recipe="probe", image_size=32, verbose=False)  # fmt: skip
    assert result.recipe.sampler == "shuffle" and result.recipe.class_weight is None
    assert "the balanced sampler is not needed" in "\n".join(result.recipe.reasons)


def test_a_bad_class_weight_is_refused_before_any_image_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class_weight must be 'auto', 'balanced', None"):
        finetune(tmp_path / "no such folder", class_weight="balance")
    with pytest.raises(ValueError, match="positive finite"):
        finetune(tmp_path / "no such folder", class_weight={"a": 0})


def test_the_threshold_travels_with_the_exported_model(
    fitted: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    base = Path(fitted["base"])
    run = base / "exported"
    run.mkdir()
    fitted["result"].save(run / "model.pt")
    target = base / "model.pt2"
    assert cli.main(["export", str(run), "--output", str(target), "--min-confidence", "0.7"]) == 0
    extra = {"classes.json": "", "tlkit.json": ""}
    torch.export.load(str(target), extra_files=extra)
    settings = json.loads(extra["tlkit.json"])
    assert settings == {
        "min_confidence": 0.7,
        "temperature": fitted["result"].temperature,
        "multi_label": False,
        "thresholds": None,
    }
    assert cli.main(["export", str(run), "--output", str(target), "--min-confidence", "-1"]) == 2
    assert "min_confidence must be a probability from 0 to 1, got -1.0" in capsys.readouterr().err


def test_calibration_on_new_images_recovers_the_probabilities_without_the_temperature() -> None:
    from tlkit.calibration import calibration_on

    torch.manual_seed(0)
    logits = 3 * torch.randn(400, 5)
    labels = torch.distributions.Categorical(logits=logits / 2).sample()  # overconfident
    figures = calibration_on((logits / 2).softmax(1), labels, 2.0)
    assert figures["ece_without_temperature"] == pytest.approx(
        expected_calibration_error(logits.softmax(1), labels), abs=1e-5
    )
    assert figures["ece"] < figures["ece_without_temperature"]  # the temperature fixes it
    tags = (torch.rand(400, 3) < (logits[:, :3] / 2).sigmoid()).float()
    multi = calibration_on((logits[:, :3] / 2).sigmoid(), tags, 2.0, multi_label=True)
    assert multi["ece_without_temperature"] == pytest.approx(
        expected_calibration_error(logits[:, :3].sigmoid(), tags), abs=1e-5
    )


def test_a_temperature_is_kept_only_when_its_gain_stands_clear_of_the_noise() -> None:
    from tlkit.recipes.reasons import calibrated
    from tlkit.recipes.scores import calibrate

    g = torch.Generator().manual_seed(0)
    for n, over_confident in ((400, True), (120, False)):
        top = 0.55 + 0.4 * torch.rand(n, generator=g)  # each answer's confidence
        right = torch.rand(n, generator=g) < (0.6 if over_confident else top)
        labels = torch.randint(0, 2, (n,), generator=g)
        predicted = torch.where(right, labels, 1 - labels)
        probs = torch.stack([1 - top, top], 1)
        probs = torch.where((predicted == 1)[:, None], probs, probs.flip(1))
        t, _, figures = calibrate(probs, labels)
        gain = figures["ece_before"] - figures["ece_scaled"]
        assert figures["ece_gain_se"] > 0
        if over_confident:  # 60% right at 0.75 on average: a clear gain, kept
            assert gain > figures["ece_gain_se"] and t == figures["fitted_temperature"] > 1
        else:  # calibrated already: whatever the fit gains on 120 images is noise
            assert gain < figures["ece_gain_se"] and t == 1.0
            assert "not lower by more than one standard error" in calibrated(
                "out-of-fold predictions", figures
            )


def test_the_standard_error_of_a_calibration_gain_refuses_what_it_cannot_read() -> None:
    from tlkit.calibration import calibration_on, ece_difference_se

    probs, labels = torch.full((10, 2), 0.5), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="same images"):
        ece_difference_se(probs, probs[:5], labels)
    for bad in (0, 1, 2.5, True):
        with pytest.raises(ValueError, match="draws must be an integer of at least 2"):
            ece_difference_se(probs, probs, labels, draws=bad)
    with pytest.raises(ValueError):
        ece_difference_se(probs, probs, labels[:5])  # labels of other images
    with pytest.raises(ValueError, match="temperature"):
        calibration_on(probs, labels, 0.0)
