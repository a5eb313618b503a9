"""The README's quickstart runs as written (ImageNet weights served from torchvision's cache)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    torch.save(torchvision.models.resnet50().state_dict(), checkpoints / url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model, torch.nn.Module)
    assert sum(not p.requires_grad for p in model.parameters()) == 61
