"""The package's shape: one concept per module, public boundaries, a Trainer one can read."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """Every tlkit module ``name`` imports, at the top, inside functions or for type checking."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)]
            target = ".".join([*base, node.module] if node.module else base)
            target = target if node.level else node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.split(".")[0] == "tlkit" and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _reach(name: str) -> set[str]:
    """Every module imported by ``name``, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for nxt in GRAPH.get(todo.pop(), set()) - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_circle_of_any_kind() -> None:
    circles = sorted(n for n in GRAPH if n != "tlkit" and n in _reach(n))
    assert circles == []


FOUNDATIONS = ("tlkit.exceptions", "tlkit.registry", "tlkit.history", "tlkit.metrics", "tlkit.tta",
               "tlkit.devices", "tlkit.distributed", "tlkit.splits", "tlkit.stratify",
               "tlkit.groups", "tlkit.calibration", "tlkit._csv", "tlkit._utils")  # fmt: skip
BLOCKS = ("tlkit.data", "tlkit.decoding", "tlkit.augment", "tlkit.freeze", "tlkit.heads",
          "tlkit.backbones", "tlkit._hub", "tlkit.optim", "tlkit.probe", "tlkit.features",
          "tlkit.ranking", "tlkit.taps")  # fmt: skip
LOOP = (
    "tlkit.training",
    "tlkit.callbacks",
    "tlkit.trainer",
    "tlkit.checkpoint",
)  # with 2 old paths
MODEL = ("tlkit.model",)  # the trained model: loads and predicts without training
TOP = ("tlkit.recipes", "tlkit.report", "tlkit.export", "tlkit.cli",
       "tlkit.__main__")  # fmt: skip
TRAINING = ("tlkit.augment", "tlkit.freeze", "tlkit.optim", "tlkit.probe", "tlkit.features",
            "tlkit.ranking", *LOOP, "tlkit.recipes")  # fmt: skip


def test_every_module_is_in_one_layer() -> None:
    layers = (FOUNDATIONS, BLOCKS, LOOP, MODEL, TOP)
    homeless = [n for n in GRAPH if n != "tlkit" and sum(_in(n, *layer) for layer in layers) != 1]
    assert homeless == []


def test_the_layers_point_one_way() -> None:
    broken = []
    for name in GRAPH:
        reach = _reach(name)
        rules = [
            (
                _in(name, *FOUNDATIONS),
                "tlkit.",
                ("tlkit.exceptions", "tlkit.stratify", "tlkit.groups", "tlkit.metrics"),
            ),
            (_in(name, *BLOCKS), (*LOOP, *MODEL, *TOP), ()),
            (
                _in(name, "tlkit.callbacks"),
                ("tlkit.training.trainer", "tlkit.training.steps", "tlkit.trainer"),
                (),
            ),
            (_in(name, *LOOP), (*MODEL, *TOP), ()),
            (_in(name, *MODEL), (*TRAINING, *TOP), ()),  # nothing of training
            (_in(name, "tlkit.recipes"), ("tlkit.report", "tlkit.export", "tlkit.cli"), ()),
            (_in(name, "tlkit.report", "tlkit.export"), ("tlkit.recipes", *TRAINING), ()),
            (not _in(name, "tlkit.cli", "tlkit.__main__"), ("tlkit.cli", "tlkit.__main__"), ()),
        ]
        for applies, forbidden, allowed in rules:
            if not applies:
                continue
            bad = {
                m
                for m in reach
                if (m.startswith(forbidden) if isinstance(forbidden, str) else _in(m, *forbidden))
                and not _in(m, *allowed, "tlkit._utils")
            }
            if name == "tlkit":
                bad = set()  # the package's front door names everything (imported when used)
            broken += [f"{name} -> {m}" for m in sorted(bad)]
    assert broken == []


def _one_concept(docstring: str | None) -> bool:
    """Whether a docstring has a line saying why a long module or function is one concept."""
    return any(line.startswith("One concept: ") for line in (docstring or "").splitlines())


def test_modules_and_functions_stay_short() -> None:
    """Formatted code (``ruff format`` decides the layout), 500 lines a module and 60 body lines
    a function, unless the docstring says why it is one concept."""
    long_modules, long_functions = [], []
    for name, path in MODULES.items():
        text = path.read_text()
        tree = ast.parse(text)
        if text.count("\n") > 500 and not _one_concept(ast.get_docstring(tree)):
            long_modules.append(name)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0]
                documented = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                if _one_concept(ast.get_docstring(node)):
                    continue  # long, and its docstring says why it is one concept
                start = first.end_lineno + 1 if documented and first.end_lineno else node.lineno
                if node.end_lineno and node.end_lineno - start + 1 > 60:
                    long_functions.append(f"{name}.{node.name}")
    assert long_modules == [] and long_functions == []


def test_no_private_name_of_another_module_is_used_through_a_module_alias() -> None:
    offenders = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level
            for alias in node.names
            if f"{name.rsplit('.', 1)[0]}.{alias.name}" in MODULES or alias.name in MODULES
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                offenders.append(f"{name}: {node.value.id}.{node.attr}")
    assert offenders == []


def test_callbacks_see_the_trainer_only_through_the_protocol() -> None:
    from tlkit import Trainer
    from tlkit.callbacks import TrainerLike

    trainer = Trainer(torch.nn.Linear(2, 2), device="cpu")
    assert isinstance(trainer, TrainerLike)
    assert not hasattr(TrainerLike, "fit")  # callbacks cannot start a loop of their own


def test_every_module_has_a_test_file_or_is_private() -> None:
    tests = {p.name for p in Path(__file__).parent.glob("test_*.py")}
    untested = [
        p.name
        for p in SRC.glob("*.py")
        if not p.name.startswith("_") and f"test_{p.stem}" + ".py" not in tests
    ]
    # History and the meter are exercised by test_trainer and test_callbacks, the exceptions by
    # test_trainer, decoding (read_image, to_rgb) by test_data
    covered_elsewhere = {"history.py", "metrics.py", "exceptions.py", "decoding.py"}
    assert sorted(set(untested) - covered_elsewhere) == []


def test_the_recipes_docstring_names_every_module_of_the_package() -> None:
    said = ast.get_docstring(_tree("recipes/__init__.py")) or ""
    modules = {p.stem for p in (SRC / "recipes").glob("*.py")} - {"__init__"}
    deprecated = {m for m in modules if "deprecated" in (SRC / "recipes" / f"{m}.py").read_text()}
    assert sorted(m for m in modules - deprecated if f"[tlkit.recipes.{m}]" not in said) == []


def test_ruff_format_decides_the_layout_of_the_package() -> None:
    """The size rules measure formatted code: no line of the package opts out of the format."""
    skipped = [
        f"{path.relative_to(SRC)}:{number}"
        for path in SRC.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "fmt: skip" in line or "fmt: off" in line
    ]
    assert skipped == []
