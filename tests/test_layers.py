"""The package's layers: imports flow one way, from the entry points down to the pure cores.

Every ``import zflight...`` in every module, including those inside functions, is read from the
source (no import is executed), so a lazy import cannot hide a layer violation or a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zflight"

# Lower number = lower layer. A module may import its own layer (within the same room) or below.
LAYERS = {
    "analysis": 0,
    "models": 0,
    "data": 0,
    "config": 0,
    "schedules": 0,
    "module": 1,
    "callbacks": 1,
    "run": 2,
    "train": 3,
    "visualize": 3,
    "ablation": 3,
    "rehearse": 3,
    "cli": 4,
    "__main__": 5,
}


def room(module: str) -> str:
    """``zflight.run.build`` -> ``run``; ``zflight.train`` -> ``train``."""
    return module.split(".")[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def zflight_imports(path: Path) -> set[str]:
    """Every zflight module that ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("zflight."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "zflight":
                found.update(f"zflight.{a.name}" for a in node.names)
            elif node.module.startswith("zflight."):
                found.add(node.module)
    return found


MODULES = {module_name(p): zflight_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_room_has_a_layer():
    assert {room(m) for m in MODULES if m != "zflight"} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "zflight"))
def test_imports_flow_down(module):
    layer = LAYERS[room(module)]
    upward = [i for i in MODULES[module] if LAYERS[room(i)] > layer]
    assert not upward, f"{module} imports a higher layer: {upward}"
    if room(module) in ("analysis", "models", "data", "config"):
        sideways = [i for i in MODULES[module] if room(i) != room(module) and room(i) != "config"]
        assert not sideways, f"{module} is a pure core but imports {sideways}"


def test_no_import_cycles():
    """Depth-first search over the module graph (packages resolve to their __init__)."""
    graph = {m: {i for i in deps if i in MODULES and i != m} for m, deps in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
