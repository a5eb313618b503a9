"""The trained model apart from training: loading, predicting, evaluating and exporting a saved
model import nothing of the training stack, and the old module path still works, with a
warning."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from PIL import Image

import tlkit

TRAINING = (
    "tlkit.recipes",
    "tlkit.training",
    "tlkit.trainer",
    "tlkit.callbacks",
    "tlkit.checkpoint",
    "tlkit.optim",
    "tlkit.probe",
    "tlkit.ranking",
    "tlkit.augment",
    "tlkit.freeze",
    "tlkit.features",
)


def saved_run(root: Path) -> tuple[Path, Path]:
    """A run folder of a tiny probe on three colours, and one image to predict."""
    data = root / "data"
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220)), ("green", (30, 200, 30))):
        (data / name).mkdir(parents=True)
        for i in range(6):
            shade = tuple(max(0, c - 9 * i) for c in colour)
            Image.new("RGB", (24, 24), shade).save(data / name / f"{i}.png")
    result = tlkit.finetune(
        data, backbone_name="resnet18", weights=None, recipe="probe", image_size=32, verbose=False
    )
    run = root / "run"
    run.mkdir()
    result.save(run / "model.pt")
    return run, data / "red" / "0.png"


def loaded_after(code: str) -> list[str]:
    """The tlkit modules a fresh interpreter has loaded after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    return [m for m in modules if m.startswith("tlkit")]


def training_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(TRAINING)]


def test_loading_and_predicting_import_nothing_of_training(tmp_path: Path) -> None:
    run, image = saved_run(tmp_path)
    python = (
        "import tlkit\n"
        f"result = tlkit.load_model({str(run / 'model.pt')!r})\n"
        f"assert result.predict([{str(image)!r}]).shape == (1, 3)"
    )
    modules = loaded_after(python)
    assert "tlkit.model.result" in modules  # it did load and predict
    assert training_modules(modules) == []


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_the_predict_and_evaluate_commands_import_nothing_of_training(
    tmp_path: Path, command: str
) -> None:
    run, image = saved_run(tmp_path)
    target = image if command == "predict" else image.parents[1]
    code = (
        "import contextlib, io\n"
        "from tlkit import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert cli.main([{command!r}, {str(run)!r}, {str(target)!r}]) == 0"
    )
    modules = loaded_after(code)
    assert "tlkit.cli" in modules and "tlkit.model.result" in modules
    assert training_modules(modules) == []


OLD_PATHS = [
    ("tlkit.recipes.result", "import FinetuneResult, Recipe and load_model", "load_model"),
    ("tlkit.trainer", "use tlkit.Trainer", "Trainer"),
    ("tlkit.checkpoint", "import from tlkit.training.checkpoint", "read_checkpoint"),
]


@pytest.mark.parametrize(("path", "advice", "name"), OLD_PATHS, ids=[p[0] for p in OLD_PATHS])
def test_the_old_module_paths_still_load_with_a_deprecation_warning(
    path: str, advice: str, name: str
) -> None:
    code = (
        "import warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n"
        f"    import {path}\n"
        "except DeprecationWarning as warning:\n"
        "    print('warned:', warning)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"warned: {path} is deprecated" in done.stdout
    with warnings.catch_warnings():  # imported already, or now (warning once)
        warnings.simplefilter("ignore", DeprecationWarning)
        old = importlib.import_module(path)
    with pytest.warns(DeprecationWarning, match=advice):
        importlib.reload(old)  # each import of the module warns
    new = {"load_model": tlkit.load_model, "Trainer": tlkit.Trainer}.get(name)
    new = new or tlkit.training.checkpoint.read_checkpoint
    assert getattr(old, name) is new


def test_the_package_names_every_public_name_and_imports_it_on_first_use() -> None:
    code = "import tlkit\nassert tlkit.__version__"
    assert loaded_after(code) == ["tlkit"]  # nothing until a name is used
    for name in tlkit.__all__:
        assert getattr(tlkit, name) is not None
    with pytest.raises(AttributeError, match="module 'tlkit' has no attribute 'nope'"):
        _ = tlkit.nope  # type: ignore[attr-defined]
    code = "import tlkit\nassert tlkit.backbones.IMAGENET_MEAN and tlkit.recipes.finetune"
    assert "tlkit.backbones" in loaded_after(code)  # a submodule, imported when named
    assert set(tlkit.__all__) <= set(dir(tlkit))
