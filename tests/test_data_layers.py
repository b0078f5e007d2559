"""harness/data is built in layers (docs/contracts.md, "harness/data in layers"): its modules import
each other without a circle, every import goes down the layers, and an import inside a function
says why it is there. Imports are read with `ast` (nothing is imported), at module level and inside
functions alike: a circle closed by a function-level import is still a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "harness" / "data"

# the layers, lowest first; a module may import its own layer or a lower one (docs/contracts.md)
LAYERS = {
    "schema": ("contract", "features", "counts", "sequences", "keyed"),
    "statistics": ("stats", "floor"),
    "validation": ("validate",),
    "generation": ("synth", "planted", "rules", "oracle", "converters"),
    "resolution": ("resolve",),
    "loading": ("prepared", "mapped", "datamodule"),
    "cli": ("__main__",),
}
RANK = {m: i for i, mods in enumerate(LAYERS.values()) for m in mods}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(DATA.rglob("*.py"))}


def imported(node: ast.AST, package: str, known: set[str]) -> list[str]:
    """The modules an import statement names (`from pkg import mod` names pkg.mod); `package` is
    the importing module's package, for relative imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: `from . import x` is the package itself, each more dot one up
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, *([base] if base else [])])
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the harness.data modules it imports (anywhere in the file)."""
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in imported(node, package, known):
                # `import harness.data.converters.common` names converters.common; a name below a
                # module (harness.data.contract.Manifest) is that module
                while target and target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in known and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph as [a, b, ..., a], or None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return path[path.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def layer_of(module: str) -> str:
    rest = module.removeprefix("harness.data").lstrip(".")
    return rest.split(".")[0] if rest else ""  # "" is the package's empty __init__


def test_the_cycle_finder_finds_a_circle_through_a_function_level_import():
    # the checker itself can fail: a circle in a made-up graph, and one closed inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    src = "import harness.data.b\n\ndef f():\n    from harness.data import a\n    from . import c\n"
    known = {"harness.data.a", "harness.data.b", "harness.data.c"}
    found = {t for node in ast.walk(ast.parse(src)) for t in imported(node, "harness.data", known)}
    assert found == known


def test_harness_data_has_no_import_circle():
    graph = import_graph()
    assert "harness.data.contract" in graph and "harness.data.converters.taobao" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle in harness/data: " + " -> ".join(cycle)


def test_every_import_goes_down_the_layers():
    graph = import_graph()
    unplaced = sorted(m for m in graph if layer_of(m) and layer_of(m) not in RANK)
    assert not unplaced, f"place these modules in LAYERS (and docs/contracts.md): {unplaced}"
    upward = [
        f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
        for a, targets in graph.items()
        for b in targets
        if layer_of(a) and layer_of(b) and RANK[layer_of(b)] > RANK[layer_of(a)]
    ]
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    """(line, source) of every import inside a function body."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found.append((node.lineno, ast.unparse(node)))
    return sorted(set(found))


@pytest.mark.parametrize("path", sorted(DATA.rglob("*.py")), ids=lambda p: module_name(p))
def test_an_import_inside_a_function_says_why(path):
    lines = path.read_text().splitlines()
    silent = [
        f"{path.relative_to(ROOT)}:{n}: {src}"
        for n, src in function_level_imports(path)
        # the reason sits on the import's line or in a comment at most three lines above it
        if not any("#" in line for line in lines[max(0, n - 4) : n])
    ]
    assert not silent, (
        "imports inside functions need a comment saying why (a heavy or optional dependency); "
        "otherwise import at the top:\n" + "\n".join(silent)
    )
