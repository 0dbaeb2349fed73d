"""The module structure: no import loops between edgecoe's top-level modules, and the
engine's mechanism (cache, scheduling, engine, simulator) imports without ONNX Runtime."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "edgecoe"


def top_level_import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Top-level module or package of edgecoe -> those it imports (function-level imports included)."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        node = rel[0].removesuffix(".py")
        if node == "__init__":
            continue  # the package's lazy facade re-exports; it is the API, not a layer
        graph.setdefault(node, set())
        for stmt in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                names = [stmt.module]
            elif isinstance(stmt, ast.Import):
                names = [a.name for a in stmt.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "edgecoe" and len(parts) > 1 and parts[1] != node:
                    graph[node].add(parts[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # node -> 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_no_import_loop_between_top_level_modules():
    graph = top_level_import_graph()
    assert {"engine", "runtime", "sim", "cache", "sched", "loaders", "profile"} <= set(graph)
    assert find_cycle(graph) is None, f"import loop: {' -> '.join(find_cycle(graph) or [])}"


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_mechanism_imports_without_onnx_runtime():
    code = ("import sys, edgecoe, edgecoe.cache, edgecoe.sched, edgecoe.engine, edgecoe.sim;"
            "print(sorted(m for m in ('onnxruntime', 'onnx', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


if __name__ == "__main__":  # print the graph (for notes and reviews)
    for module, deps in sorted(top_level_import_graph().items()):
        print(f"{module} -> {', '.join(sorted(deps)) or '-'}")
