"""The import graph of ``animate124.scene`` has no cycle and no knob read from the environment."""

from __future__ import annotations

import ast
from pathlib import Path

import animate124.scene

SCENE = Path(animate124.scene.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(SCENE.parent.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """Module -> the ``animate124.scene`` modules it imports (anywhere in the file, lazy imports too).

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``.
    """
    files = {_module_name(p): p for p in SCENE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in files)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for a in node.names:
                    full = f"{node.module}.{a.name}"
                    if full in files:
                        deps.add(full)
                    elif node.module in files:
                        deps.add(node.module)
        graph[name] = deps - {name}
    return graph


def test_scene_import_graph_is_acyclic():
    graph = _graph()
    assert "animate124.scene.grid.launch" in graph and "animate124.scene.fields" in graph
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, node, dep])
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    # the grid package's submodules never import the package itself, only each other
    for name, deps in graph.items():
        if name.startswith("animate124.scene.grid."):
            assert "animate124.scene.grid" not in deps, name
    # fields use the grid's public API only
    assert graph["animate124.scene.fields"] >= {"animate124.scene.grid"}
    assert not any(d.startswith("animate124.scene.grid.") for d in graph["animate124.scene.fields"])


def test_scene_imports_no_stages_cli_or_config_and_reads_no_grid_env():
    for path in SCENE.rglob("*.py"):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(
                    ("animate124.stages", "animate124.cli", "animate124.config")
                ), path
        assert "ANIMATE124_GRID" not in text, path
    assert not (SCENE / "encoding.py").exists() and not (SCENE / "encoding_triton.py").exists()
