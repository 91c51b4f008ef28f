"""The layers' import rules (issue 17, items 3 and 6), read from the source with `ast`.

    featcache  (commands, Python API, predict a folder)  -> everything below
    service    (HTTP)                                     -> classifier, extractor
    classifier (heads, predicting from a cache)           -> extractor, but not its engines
    extractor  (engines, planner, cache, conv base)       -> nothing above it

and inside extractor: the cache package (`extractor.cache`) knows nothing of the engines or of
what makes features, and no module-level import cycle. Every import counts for the layer rules,
also those inside functions or under `if TYPE_CHECKING:` (a layer never points back up, even
lazily). The cycle rule reads module-level imports only; imports inside functions are allowed
where loading a module at import time would close a circle or cost time, and are listed in
`LAZY_BACK_EDGES` so that a new one is a decision, not an accident.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("extractor", "classifier", "service", "featcache")
ENGINES = ("extractor.runner", "extractor.ray_engine", "extractor.planner", "extractor.cli",
           "extractor.compact_cli")

#: Imports inside functions among extractor's modules that would close an import cycle if they
#: were at module level: (importer, imported) -> why it is lazy.
#: None since issue 17 item 1: VGG16's geometry lives in extractor/vgg16.py, which imports
#: nothing of the product, so features.py imports it at the top.
LAZY_BACK_EDGES: dict[tuple[str, str], str] = {}


@dataclasses.dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the module imported (a submodule when `from package import submodule`)
    top_level: bool  # run when the module is imported (not in a function, not TYPE_CHECKING)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES
            for p in sorted((REPO / package).rglob("*.py"))}


MODULES = all_modules()


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST, top: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, False)
            elif isinstance(child, ast.If) and _type_checking(child):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), False)
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), top)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(name, alias.name, top, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    yield Import(name, sub if sub in MODULES else base, top, child.lineno)
            else:
                yield from visit(child, top)

    yield from visit(tree, True)


IMPORTS = [imp for name, path in MODULES.items() for imp in imports_of(name, path)]


def _within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def _offenders(importers: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{imp.module}:{imp.line} imports {imp.target}" for imp in IMPORTS
            if _within(imp.module, importers)
            and any(_within(imp.target, f) for f in forbidden)]


def test_every_package_is_read() -> None:
    assert {"extractor.cache.layout", "extractor.planner", "classifier.predict",
            "service.app", "featcache.predict_cli"} <= MODULES.keys()
    assert len(IMPORTS) > 200


@pytest.mark.parametrize(("importers", "forbidden"), [
    ("extractor", ("classifier", "service", "featcache")),
    ("classifier", ("service", "featcache", *ENGINES)),
    ("service", ("featcache",)),
    ("extractor.cache", (*ENGINES, "extractor.backbone", "extractor.runtimes")),
], ids=["extractor", "classifier", "service", "extractor.cache"])
def test_no_layer_imports_what_sits_above_it(importers: str, forbidden: tuple[str, ...]) -> None:
    assert _offenders(importers, forbidden) == []


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES if _within(m, "extractor")}
    for imp in IMPORTS:
        if (imp.module in graph and imp.target in graph and imp.target != imp.module
                and (imp.top_level or not top_level_only)):
            graph[imp.module].add(imp.target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (a path that comes back to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return False


def test_no_import_cycle_among_extractors_modules_at_module_level() -> None:
    cycle = _cycle(_graph(top_level_only=True))
    assert cycle is None, " -> ".join(cycle or [])


def test_the_lazy_imports_that_avoid_a_cycle_are_the_listed_ones() -> None:
    graph = _graph(top_level_only=True)
    back = {(imp.module, imp.target) for imp in IMPORTS
            if not imp.top_level and imp.module in graph and imp.target in graph
            and imp.target != imp.module and _reaches(graph, imp.target, imp.module)}
    assert back == set(LAZY_BACK_EDGES)
