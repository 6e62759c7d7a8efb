"""The import graph of vicregl_cli, read with `ast` (every import, lazy ones included): no module imports
another that imports it back, no cycle at all, and data flows one way (DESIGN §1): cli -> (pretrain |
evaluate | transfer) -> backbones / data / report, the three protocol packages never importing each other."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vicregl_cli"
PROTOCOLS = ("pretrain", "evaluate", "transfer")
BELOW = ("backbones", "data", "report", "rng_state", "voc_ap")  # used by the protocols, never using them
ABOVE = ("cli", "commands", "pretrain_hooks", *PROTOCOLS)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the modules of the package it imports (`from package import module`
    counts as importing the module)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.level == 0, f"{name}: relative import of {node.module}"
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    imported.add(submodule if submodule in modules else node.module)
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


def part(module: str) -> str:
    """The top-level part of the package a module belongs to: vicregl_cli.pretrain.loop -> pretrain."""
    return module.split(".")[1] if "." in module else module


def test_the_graph_is_read_from_the_sources():
    graph = import_graph()
    wiring = graph["vicregl_cli.pretrain_hooks"]
    assert {"vicregl_cli.evaluate.monitor", "vicregl_cli.pretrain.loop"} <= wiring
    assert "vicregl_cli.voc_ap" in graph["vicregl_cli.evaluate.svm_fit"]
    assert "vicregl_cli.rng_state" in graph["vicregl_cli.transfer.tv_detection.engine"]
    assert len(graph) > 100


def test_no_two_modules_import_each_other_and_no_cycle():
    graph = import_graph()
    mutual = sorted((a, b) for a, targets in graph.items() for b in targets if a < b and a in graph[b])
    assert mutual == []
    graphlib.TopologicalSorter(graph).prepare()  # CycleError names a longer cycle


def test_imports_flow_from_the_commands_down():
    crossing = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        for target in targets
        if (part(source) in PROTOCOLS and part(target) in PROTOCOLS and part(source) != part(target))
        or (part(source) in BELOW and part(target) in ABOVE)
    ]
    assert crossing == []
