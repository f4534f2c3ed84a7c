"""The house rules of docs/architecture.md, checked on the source: imports point down the layers, no loops, losses
import only torch, and every import hidden in a function says why beside it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rocketkd"

# Lower number = lower layer; a module may import its own layer or lower ones only (docs/architecture.md).
LAYERS = [
    ("rocketkd.errors", 0), ("rocketkd.io", 0), ("rocketkd.types", 0), ("rocketkd.config", 0),
    ("rocketkd.distributed", 0), ("rocketkd.stamps", 0),
    ("rocketkd.data", 1),
    ("rocketkd.models", 2), ("rocketkd.losses", 2),
    ("rocketkd.evaluation", 3),
    ("rocketkd.search", 4),
    ("rocketkd.candidates", 5),
    ("rocketkd.teachers", 6),
    ("rocketkd.training", 7),
    ("rocketkd.pipeline", 8), ("rocketkd.pretrain", 8),
    ("rocketkd.commands", 9), ("rocketkd.cli", 9),
]


def _layer(module: str) -> int | None:
    for prefix, rank in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return rank
    return None


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) of every import of the file."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                out.append((child.module, child.lineno, in_function))
                # `from rocketkd.x import y` may name a submodule y
                out.extend((f"{child.module}.{a.name}", child.lineno, in_function) for a in child.names
                           if child.module.startswith("rocketkd"))
            elif isinstance(child, ast.ImportFrom) and child.level:
                raise AssertionError(f"{path}:{child.lineno}: relative import; rocketkd uses absolute imports")
            visit(child, inner)

    visit(tree, False)
    return out


def _internal_edges() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _, _ in _imports(path):
            if target in modules and target != name:
                edges[name].add(target)
    return edges


def test_every_module_has_a_layer():
    assert [m for m in _modules() if m != "rocketkd" and _layer(m) is None] == []


def test_imports_point_down_the_layers():
    upward = []
    for name, path in _modules().items():
        if name == "rocketkd":  # the package's lazy public API names everything
            continue
        for target, line, _ in _imports(path):
            if not target.startswith("rocketkd.") or _layer(target) is None:
                continue
            if _layer(target) > _layer(name):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name} -> {target}")
    assert upward == [], "imports that point up the layers:\n" + "\n".join(upward)


def test_no_import_loops():
    edges = _internal_edges()
    edges.pop("rocketkd", None)
    for targets in edges.values():
        targets.discard("rocketkd")
    state: dict[str, int] = {}
    loops: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            # a package's __init__ re-exporting its own submodules is not a loop
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                loops.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                dfs(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            dfs(node, [node])
    assert loops == []


def test_losses_import_only_torch():
    for path in (PACKAGE / "losses").glob("*.py"):
        for target, line, _ in _imports(path):
            root = target.split(".")[0]
            assert root in {"torch", "__future__", "math", "typing", "collections", "dataclasses", "rocketkd"}, (
                f"{path.name}:{line} imports {target}")
            if root == "rocketkd":
                assert target.startswith("rocketkd.losses"), f"{path.name}:{line} imports {target}"


def test_imports_inside_functions_say_why():
    silent = []
    for path in _modules().values():
        lines = path.read_text().splitlines()
        for target, line, in_function in _imports(path):
            if not in_function:
                continue
            here, above = lines[line - 1], lines[line - 2] if line > 1 else ""
            if "#" not in here and not above.strip().startswith("#"):
                silent.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target}")
    assert sorted(set(silent)) == [], "function-level imports without a reason:\n" + "\n".join(sorted(set(silent)))


@pytest.mark.parametrize("limit", [700])
def test_modules_stay_readable(limit):
    long = []
    for name, path in _modules().items():
        text = path.read_text()
        n = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > 500 and "long" not in doc.lower() and "lines" not in doc.lower():
            long.append(f"{name}: {n} lines and no reason in its docstring")
        assert n <= limit or "lines" in doc.lower(), f"{name}: {n} lines"
    assert long == []
