"""The package's shape: one concept per module, public boundaries, a Trainer one can read."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tlkit"


def _tree(name: str) -> ast.Module:
    return ast.parse((SRC / name).read_text())


def test_no_module_imports_private_names_of_another() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    where = path.relative_to(SRC)
                    offenders.append(f"{where}: from {node.module} import {private}")
    assert offenders == []


def test_the_trainer_class_is_under_400_lines_and_imports_only_the_callback_base() -> None:
    tree = _tree("trainer.py")
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno is not None
    assert trainer.end_lineno - trainer.lineno + 1 < 400
    from_callbacks = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "callbacks"
        for alias in node.names
    ]
    assert from_callbacks == ["Callback"]


def test_every_module_has_a_test_file_or_is_private() -> None:
    tests = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    untested = [
        p.name
        for p in SRC.glob("*.py")
        if not p.name.startswith("_") and f"test_{p.stem}" + ".py" not in tests
    ]
    # History, the progress bar and the meter are exercised by test_trainer and test_callbacks
    covered_elsewhere = {"history.py", "progress.py", "metrics.py"}
    assert sorted(set(untested) - covered_elsewhere) == []
