"""The docs cannot drift from the code: code blocks run, every public name is documented."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skdata

import tlkit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "```python" in p.read_text())


def _public_objects() -> list[tuple[str, object]]:
    found = []
    for name in tlkit.__all__:
        obj = getattr(tlkit, name)
        if inspect.ismodule(obj):
            for sub in obj.__all__:
                inner = getattr(obj, sub)
                if inspect.ismodule(inner):  # a package's public module: its names
                    found += [(f"{name}.{sub}.{n}", getattr(inner, n)) for n in inner.__all__]
                else:
                    found.append((f"{name}.{sub}", inner))
        elif inspect.isclass(obj) or inspect.isfunction(obj):
            found.append((name, obj))
    return found


def test_every_public_name_is_in_the_api_reference() -> None:
    api = (DOCS / "api.md").read_text()
    for name in tlkit.__all__:
        assert f"tlkit.{name}" in api, name


@pytest.mark.parametrize(
    ("name", "obj"), _public_objects(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_public_function_and_class_has_an_example(name: str, obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    assert doc, f"{name} has no docstring"
    assert "Examples:" in doc and ">>>" in doc, f"{name} has no runnable example"


@pytest.fixture
def docs_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder: an ImageFolder at ./data, ResNet18 "ImageNet" weights in the cache."""
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(torchvision.models.resnet18().state_dict(), checkpoints / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    work = tmp_path / "work"
    photos = {"cat": skdata.chelsea(), "coffee": skdata.coffee()}
    for cls, array in photos.items():
        folder = work / "data" / cls
        folder.mkdir(parents=True)
        image = Image.fromarray(array)
        for i in range(10):
            image.rotate(i * 7).resize((80, 64)).save(folder / f"{i}.png")
    monkeypatch.chdir(work)
    return work


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_code_blocks_of_the_page_run(page: Path, docs_environment: Path) -> None:
    """Run a page's ```python blocks in order in one namespace (```py blocks are not run)."""
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{page.name}[block {i}]", "exec")
        exec(code, namespace)


def test_picture_script_regenerates_pictures(tmp_path: Path) -> None:
    script = DOCS / "scripts" / "make_pictures.py"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            "--only",
            "presets",
            "--only",
            "bn_drift",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    written = {p.name for p in tmp_path.iterdir()}
    builtins = ["none", "flip", "seed", "standard", "randaugment", "trivialaugment", "autoaugment"]
    assert {f"augment_{n}.png" for n in builtins} <= written
    assert "bn_drift.png" in written
