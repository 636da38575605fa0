"""The library's shape: imports run one way, no module reaches into another's private names, and no `except
ImportError` quietly swaps one model for another. An `ast` walk over every import, lazy ones inside functions too."""

import ast
from pathlib import Path

import pytest

import fidelity_lib

PACKAGE_ROOT = Path(fidelity_lib.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def imported_modules(name: str, tree: ast.Module) -> set[str]:
    """The fidelity_lib modules ``name`` imports anywhere, and the packages those imports run from outside them."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names if alias.name.startswith("fidelity_lib")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("fidelity_lib"):
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    edges = set()
    for target in targets:
        parts = target.split(".")
        edges.add(target)
        # importing a.b.c runs a.b's __init__ too; from inside a.b that is the package's own business
        edges |= {".".join(parts[:k]) for k in range(2, len(parts)) if not name.startswith(".".join(parts[:k]) + ".")}
    return {edge for edge in edges if edge in MODULES and edge != name}


GRAPH = {name: imported_modules(name, tree) for name, tree in TREES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_walk_sees_the_imports_it_must():
    assert "fidelity_lib.components" in GRAPH["fidelity_lib.generate"]
    assert "fidelity_lib.detections" in GRAPH["fidelity_lib.metrics.detection"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_fidelity_lib():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("leaf", ["fidelity_lib.detections", "fidelity_lib.clip", "fidelity_lib.prompts"])
def test_the_shared_leaves_import_no_method_or_model_module(leaf):
    allowed = {"fidelity_lib.models", "fidelity_lib.datasets", "fidelity_lib.toyworld", "fidelity_lib.toyworld.scenes"}
    assert GRAPH[leaf] <= allowed, f"{leaf} imports {sorted(GRAPH[leaf] - allowed)}"


def test_only_components_maps_a_profile_to_models():
    """The toy world's loaders and the paper loaders meet in fidelity_lib.components, nowhere else in the methods."""
    for name in ("fidelity_lib.spacetime", "fidelity_lib.attend_excite", "fidelity_lib.models", "fidelity_lib.metrics.clip_score",
                 "fidelity_lib.metrics.detection", "fidelity_lib.metrics.blip_similarity", "fidelity_lib.metrics.suite"):
        assert "fidelity_lib.components" not in GRAPH[name], name
        assert not any(edge.startswith("fidelity_lib.toyworld.") and edge != "fidelity_lib.toyworld.scenes" for edge in GRAPH[name]), name


def private_uses(name: str, tree: ast.Module) -> list[str]:
    """`from fidelity_lib.x import _y` and `x._y` on an imported fidelity_lib module, in module ``name``."""
    found, module_aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fidelity_lib"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in MODULES:
                    module_aliases.add(alias.asname or alias.name)
                elif alias.name.startswith("_") and node.module != name:
                    found.append(f"{name}:{node.lineno} imports {full}")
        elif isinstance(node, ast.Import):
            module_aliases |= {alias.asname or alias.name for alias in node.names if alias.name.startswith("fidelity_lib")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    found = [use for name, tree in TREES.items() for use in private_uses(name, tree)]
    assert found == []


def test_private_use_is_detected():
    tree = ast.parse("from fidelity_lib.attend_excite import _decode\nfrom fidelity_lib import attend_excite as ae\nae._x")
    assert len(private_uses("fidelity_lib.spacetime", tree)) == 2


def catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def test_every_except_import_error_re_raises():
    """An ImportError may be explained, never swallowed: a missing dependency must not change which model runs."""
    swallowed = [
        f"{name}:{node.lineno}"
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ExceptHandler) and node.type is not None and catches_import_error(node)
        and not any(isinstance(statement, ast.Raise) for statement in node.body)
    ]
    assert swallowed == []
