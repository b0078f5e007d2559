"""The package layers of docs/contracts.md ("Layers"), checked on the source: the model package
imports nothing of the harness (nor Lightning), whether at the top of a module or inside a function.
Walking the AST of every file (not importing them) also sees imports that only run on some path."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_MODEL = ("harness", "lightning", "analysis")


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in one file; relative imports are
    resolved against the file's package so `from ..harness import x` cannot slip through."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.append((node.lineno, name))
    return sorted(found)


def layer_violations(root: Path, folder: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((root / folder).rglob("*.py")):
        for line, name in imported_modules(path, root):
            if name.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(root)}:{line} imports {name}")
    return bad


def test_model_package_imports_nothing_of_the_harness():
    assert layer_violations(ROOT, "model", FORBIDDEN_IN_MODEL) == []


def test_the_check_sees_top_level_function_level_and_relative_imports(tmp_path):
    """The walker itself can fail: each spelling of a forbidden import is reported."""
    pkg = tmp_path / "model" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text(
        "import harness.train\n"
        "def f():\n    from harness.suggest import did_you_mean\n"
        "from ...harness import config\n"
        "from .b import ok\n"
    )
    assert layer_violations(tmp_path, "model", FORBIDDEN_IN_MODEL) == [
        "model/sub/a.py:1 imports harness.train",
        "model/sub/a.py:3 imports harness.suggest",
        "model/sub/a.py:4 imports harness",
    ]  # ".b" resolves to model.sub.b: allowed
