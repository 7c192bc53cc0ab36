"""The package's shape: no import cycle (lazy imports included), the layers, module sizes, type ignores."""

from __future__ import annotations

import ast
from pathlib import Path

import animate124

PKG = Path(animate124.__file__).parent
MAX_LINES = 600
MAX_TYPE_IGNORES = 10
# the library layers never import the stages, the CLI or the config tree (DESIGN.md)
LIBRARY = ("animate124.scene", "animate124.render", "animate124.guidance", "animate124.losses")
ABOVE_LIBRARY = ("animate124.stages", "animate124.cli", "animate124.config")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


FILES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """The package modules a file imports anywhere (module level, lazy, TYPE_CHECKING)."""
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.startswith("animate124"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("animate124"):
                continue
            for a in node.names:
                full = f"{node.module}.{a.name}"
                deps.add(full if full in FILES else node.module)
    return deps


GRAPH = {name: {d for d in _imports(path) if d in FILES} - {name} for name, path in FILES.items()}


def test_no_import_cycle_anywhere_in_the_package():
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, node, dep])
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            visit(node, [])


def test_library_layers_do_not_import_stages_cli_or_config():
    bad = [
        f"{name} imports {dep}"
        for name, path in FILES.items()
        if name.startswith(LIBRARY)
        for dep in _imports(path)
        if dep.startswith(ABOVE_LIBRARY)
    ]
    assert not bad, bad
    cli_users = [n for n, p in FILES.items() if not n.startswith("animate124.cli") and any(
        d.startswith("animate124.cli") for d in _imports(p))]  # fmt: skip
    assert not cli_users, cli_users


def test_no_module_is_too_big_to_work_in():
    big = {n: len(p.read_text().splitlines()) for n, p in FILES.items()}
    assert {n: k for n, k in big.items() if k > MAX_LINES} == {}


def test_type_ignores_are_few():
    found = [
        f"{n}:{i}" for n, p in FILES.items() for i, line in enumerate(p.read_text().splitlines(), 1)
        if "type: ignore" in line
    ]  # fmt: skip
    assert len(found) <= MAX_TYPE_IGNORES, found
