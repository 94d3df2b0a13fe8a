"""The installed package: one import name, imports that point down, no cycles.

The graph is read from the source files of the *installed* ``slonik`` package (whatever
``import slonik`` finds), every import statement at any depth, so a function-local import
used to dodge a cycle counts like any other.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import slonik

# Layer rank: an import may only go to a strictly lower rank (or stay inside its layer).
LAYER_RANK = {"aio": 0, "storage": 1, "wal": 1, "engine": 2}
LAYERS = ("aio", "storage", "wal", "engine")


def _package_files() -> dict[str, Path]:
    """Module name -> source file of every module under slonik.<layer>."""
    mods: dict[str, Path] = {}
    for layer in LAYERS:
        spec = importlib.util.find_spec(f"slonik.{layer}")
        assert spec is not None and spec.submodule_search_locations, layer
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in root.rglob("*.py"):
            if path.name.endswith("_build.py"):
                continue  # cffi build scripts run at install time, not at import
            rel = path.relative_to(root).with_suffix("").parts
            parts = [layer, *rel]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods["slonik." + ".".join(parts)] = path
    return mods


def _import_graph(mods: dict[str, Path]) -> tuple[dict[str, set[str]], list[str]]:
    graph: dict[str, set[str]] = {m: set() for m in mods}
    foreign: list[str] = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in LAYERS or target.startswith("tests"):
                    foreign.append(f"{mod} imports {target}")
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    graph[mod].add(target)
    return graph, foreign


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_import_graph_of_the_installed_package_points_down_without_cycles():
    """Every import inside slonik.<layer> goes to the same layer or a lower one
    (engine -> storage, wal -> aio), no module set imports itself in a circle, and nothing
    imports the bare names engine/aio/storage/wal or the test suite."""
    mods = _package_files()
    assert len(mods) > 30, sorted(mods)
    graph, foreign = _import_graph(mods)
    assert foreign == []
    upward = []
    for a, outs in graph.items():
        for b in outs:
            la, lb = a.split(".")[1], b.split(".")[1]
            if la != lb and LAYER_RANK[lb] >= LAYER_RANK[la]:
                upward.append(f"{a} -> {b}")
    assert upward == []
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle():
    """The checker itself can fail: a three-module cycle and an upward edge are reported."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_test_machinery_is_not_in_the_product():
    """The crash simulator and the fault-injecting method live with the tests only."""
    for name in ("slonik.aio.crashsim", "slonik.aio.method_faulty"):
        assert importlib.util.find_spec(name) is None, name
    assert importlib.util.find_spec("tests.support.crashsim") is not None


def test_public_api_names_and_docstrings():
    """DESIGN §6's names import from slonik, each with a docstring help() shows."""
    for name in ("Database", "ConflictError", "DataCorruptionError", "KVStore", "Table",
                 "SlonikError", "DatabaseClosedError"):
        obj = getattr(slonik, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
    assert (Path(slonik.__file__).parent / "py.typed").exists()
