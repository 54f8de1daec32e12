"""The package layout is the architecture: folders are layers and every import between our modules points one way.

Read with the standard library's ``ast`` (nothing is imported), every ``import`` of one of our modules
becomes an arrow of a graph: module level, inside functions and under ``if TYPE_CHECKING`` alike,
because an import that only runs later is still a dependency. The rules (docs/contracts.md, Layout):

* layers, each importing only the ones below it:
  ``cli/__main__/__init__ → ops → cluster → backend → pods → kube → config, clock, labels``;
  ``cluster`` and ``ops`` are the two leaves on the user's side: nothing below them imports them, only the
  entry modules do (and ``ops``, whose ``demo`` drives a cluster the way a notebook does);
* ``embedded`` is a side tree: it imports nothing of ours but ``config``, ``labels`` and ``kube``, and only
  the entry modules reach it (``kube.master`` finds ``embedded.manager`` through its entry point, by name);
* no cycle between our modules;
* no import of our modules inside a function, except the few on :data:`FUNCTION_IMPORT_ALLOW_LIST`;
* no module over :data:`MAX_MODULE_LINES` lines and no folder with more than :data:`MAX_MODULES_PER_FOLDER`
  modules.

Whatever phase 1 of the layout refactor (issue 18) left standing is listed, one module or one arrow per
entry, in :data:`KNOWN_VIOLATIONS`; anything not listed fails, and an entry that no longer happens fails
too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dask_k8s_backend"
PACKAGE_DIR = ROOT / PACKAGE

MAX_MODULE_LINES = 600
#: Counted per folder: its ``.py`` files without ``__init__.py`` (which names the folder and holds at most a
#: re-export; it is not one more thing a reader has to tell apart from its siblings). Sub-folders do not count.
MAX_MODULES_PER_FOLDER = 12

#: Modules at the top of the package that every layer may use: settings, time, label keys.
BASE = {"config", "clock", "labels"}
#: The entry modules: the only ones that may import ``cluster``, ``ops`` and ``embedded``.
ENTRY = {"", "__main__", "cli"}
#: Layer ranks: a module may import modules of its own rank or lower (cycles are caught separately).
RANK = {"base": 0, "kube": 1, "pods": 2, "backend": 3, "cluster": 4, "ops": 5, "entry": 6}
#: What ``embedded`` may import besides itself: modules by name, and whole layers.
EMBEDDED_MAY_IMPORT_MODULES = {"config", "labels"}
EMBEDDED_MAY_IMPORT_LAYERS = {"embedded", "kube"}

#: Imports of our modules that may stay inside a function (at most 5): each defers an optional or heavy
#: dependency that a light import path must not pay for.
FUNCTION_IMPORT_ALLOW_LIST = {
    # ``import dask_k8s_backend`` registers the configuration defaults and nothing else; KubeSparkCluster
    # (and with it distributed, about a second of imports) loads on first use, PEP 562.
    ("", "cluster.kube_spark_cluster"),
}

#: What phase 1 of the refactor left, for phase 2 to remove: ("cycle", a, b) an arrow a → b inside a cycle;
#: ("function-import", a, b) an import of b inside a function of a; ("layer", a, b) an arrow against the
#: layers; ("lines", module, "") a module over MAX_MODULE_LINES.
KNOWN_VIOLATIONS: set[tuple[str, str, str]] = set()  # empty since the long modules were split


@dataclass(frozen=True)
class Arrow:
    """One import of our module ``target`` by our module ``source`` (dotted names without the package)."""

    source: str
    target: str
    in_function: bool
    line: int


def _dotted(path: Path) -> tuple[str, bool]:
    """Dotted module name under the package ("" for the package itself) and whether it is a package."""
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


@cache
def our_modules() -> dict[str, Path]:
    """Every module of the package by dotted name; packages by the name of their folder."""
    return {_dotted(path)[0]: path for path in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in path.parts}


def _ours(absolute: str) -> str | None:
    """``dask_k8s_backend.x.y`` -> ``x.y``; None for anything else."""
    if absolute == PACKAGE:
        return ""
    if absolute.startswith(PACKAGE + "."):
        return absolute[len(PACKAGE) + 1:]
    return None


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Our modules an import statement loads: ``from x import y`` means module ``x.y`` when that is one."""
    modules = our_modules()
    if isinstance(node, ast.Import):
        found = [_ours(alias.name) for alias in node.names]
        return [name for name in found if name is not None and name in modules]
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[:len(package) - (node.level - 1)]
        base: str | None = _join(*package, node.module or "")
    else:
        base = _ours(node.module or "")
    if base is None:
        return []
    targets = []
    for alias in node.names:
        submodule = _join(base, alias.name)
        targets.append(submodule if submodule in modules else base)
    return [target for target in targets if target in modules]


def arrows_in(module: str, is_package: bool, source: str) -> list[Arrow]:
    """The imports of our modules in one module's source, wherever they sit (functions, TYPE_CHECKING, ...)."""
    found: list[Arrow] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, module, is_package):
                    if target != module:
                        found.append(Arrow(module, target, inside, child.lineno))
            visit(child, inside)

    visit(ast.parse(source), False)
    return found


@cache
def arrows() -> tuple[Arrow, ...]:
    """Every import of one of our modules by another in the package."""
    return tuple(arrow for module, path in our_modules().items()
                 for arrow in arrows_in(module, path.name == "__init__.py", path.read_text(encoding="utf-8")))


def layer_of(module: str) -> str:
    """``base``, ``entry``, ``embedded`` or the top folder's name (kube, pods, backend, cluster, ops)."""
    top = module.split(".")[0]
    if module in ENTRY:
        return "entry"
    if module in BASE:
        return "base"
    if top in RANK or top == "embedded":
        return top
    raise AssertionError(f"{module}: a module outside the layers (add its folder to RANK or move it)")


def layer_violation(arrow: Arrow) -> str | None:
    """Why ``arrow`` breaks the layering, or None."""
    source, target = layer_of(arrow.source), layer_of(arrow.target)
    if source == "embedded":
        allowed = target in EMBEDDED_MAY_IMPORT_LAYERS or arrow.target in EMBEDDED_MAY_IMPORT_MODULES
        return None if allowed else f"embedded imports only config, labels and kube, not {arrow.target}"
    if target == "embedded":
        return None if source == "entry" else "only the entry modules reach embedded"
    if RANK[target] > RANK[source]:
        return f"{source} is below {target}"
    return None


def cycle_arrows() -> set[tuple[str, str]]:
    """Arrows whose two ends lie on one cycle (one strongly connected component, Tarjan's algorithm)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for arrow in arrows():
        graph[arrow.source].add(arrow.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    component: dict[str, int] = {}

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component[member] = index[node]
                if member == node:
                    break

    for node in sorted(our_modules()):
        if node not in index:
            connect(node)
    return {(a.source, a.target) for a in arrows() if component[a.source] == component[a.target]}


def violations() -> set[tuple[str, str, str]]:
    """Every break of the rules, in the form of :data:`KNOWN_VIOLATIONS` entries."""
    found = {("cycle", source, target) for source, target in cycle_arrows()}
    for arrow in arrows():
        if layer_violation(arrow):
            found.add(("layer", arrow.source, arrow.target))
        if arrow.in_function and (arrow.source, arrow.target) not in FUNCTION_IMPORT_ALLOW_LIST:
            found.add(("function-import", arrow.source, arrow.target))
    for module, path in our_modules().items():
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES:
            found.add(("lines", module, ""))
    return found


def _describe(entries: set[tuple[str, str, str]]) -> str:
    return "\n".join(f"  {entry!r}," for entry in sorted(entries))


def test_every_module_sits_in_a_layer():
    for module in our_modules():
        layer_of(module)


def test_no_new_cycle_layer_break_function_import_or_big_module():
    new = violations() - KNOWN_VIOLATIONS
    assert not new, "against docs/contracts.md's layout rules (see this test's docstring):\n" + _describe(new)


def test_known_violations_are_still_real():
    """Fixed entries leave the list, so it only shrinks."""
    stale = KNOWN_VIOLATIONS - violations()
    assert not stale, "fixed, remove from KNOWN_VIOLATIONS:\n" + _describe(stale)


def test_function_import_allow_list_is_short_and_used():
    assert len(FUNCTION_IMPORT_ALLOW_LIST) <= 5
    used = {(a.source, a.target) for a in arrows() if a.in_function}
    assert FUNCTION_IMPORT_ALLOW_LIST <= used, FUNCTION_IMPORT_ALLOW_LIST - used


def test_no_folder_has_more_than_twelve_modules():
    per_folder: dict[Path, int] = defaultdict(int)
    for path in our_modules().values():
        if path.name != "__init__.py":
            per_folder[path.parent] += 1
    crowded = {str(folder.relative_to(ROOT)): count for folder, count in per_folder.items()
               if count > MAX_MODULES_PER_FOLDER}
    assert not crowded, crowded


@pytest.mark.parametrize("source, target, expected", [
    ("cluster.adaptive", "config", None),
    ("pods.builder", "backend.plugin", "pods is below backend"),
    ("embedded.api.apiserver", "clock", "embedded imports only config, labels and kube, not clock"),
    ("embedded.api.apiserver", "kube.errors", None),
    ("backend.plugin", "embedded.api.apiserver", "only the entry modules reach embedded"),
    ("backend.plugin", "ops.admin", "backend is below ops"),
])
def test_the_rules_themselves(source, target, expected):
    """The checker is code too: a few arrows it must accept and refuse."""
    assert layer_violation(Arrow(source, target, False, 1)) == expected


def test_the_import_reader_sees_every_kind_of_import():
    source = """
from __future__ import annotations
from typing import TYPE_CHECKING
import dask_k8s_backend.kube.errors
from ... import labels
from ...pods.builder import AppSpec
from . import groups

if TYPE_CHECKING:
    from ..plugin import KubernetesSchedulerBackend


def later():
    from dask_k8s_backend.config import load_settings
"""
    seen = {(a.target, a.in_function) for a in arrows_in("backend.allocation.allocator", False, source)}
    assert seen == {("kube.errors", False), ("labels", False), ("pods.builder", False),
                    ("backend.allocation.groups", False), ("backend.plugin", False), ("config", True)}
    assert ("", "cluster.kube_spark_cluster", True) in {(a.source, a.target, a.in_function) for a in arrows()}


#: Dotted names in strings that are not modules: the entry-point group of the cluster managers.
NOT_MODULE_NAMES = {"dask_k8s_backend.cluster_managers"}


def test_modules_named_in_strings_exist():
    """What the package imports by name (the CLI's subcommands, the built-in managers, the scheduler preload,
    the warm runtime's preloads) is invisible to the arrows above; after a move it must still resolve."""
    named = set()
    for path in our_modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGE + "."):
                if " " not in node.value and node.value not in NOT_MODULE_NAMES:
                    named.add(node.value)
    assert named, "the CLI names its subcommands' modules; the reader found none"
    for name in sorted(named):
        module, _, attribute = name.partition(":")
        assert _ours(module) in our_modules(), f"{name}: no module {module}"
        if attribute:
            assert f"class {attribute}" in our_modules()[_ours(module)].read_text(encoding="utf-8"), name
