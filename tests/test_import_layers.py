"""The package's import graph follows the layer order in docs/architecture.md.

Every import in ``src/sgl`` counts, function-local ones included (a lazy import hides a
cycle from Python, not from the design), and so does a string that names a module of the
package (``importlib.import_module("sgl.server.main")``, a table of lazy imports). A unit is a subpackage (``sgl.engine``) or a
top-level module (``sgl.cli``); a unit may import only units of a lower layer, or the
same-layer units listed in ``SAME_LAYER``, and the unit graph has no cycle.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "sgl"

# bottom to top; keep in step with docs/architecture.md
LAYERS: list[set[str]] = [
    {"sgl._version", "sgl._extras", "sgl.errors", "sgl.types", "sgl.telemetry"},
    {"sgl.constrain"},
    {"sgl.engine"},
    {"sgl.backends"},
    {"sgl.decode", "sgl.integrations"},
    {"sgl.lang", "sgl.runtime"},
    {"sgl.server", "sgl.cli", "sgl.viz"},
    {"sgl", "sgl.__main__", "sgl.backtrack"},
]
# same-layer imports the design allows (each one direction only; a cycle still fails)
SAME_LAYER: set[tuple[str, str]] = {("sgl.runtime", "sgl.lang"), ("sgl.cli", "sgl.server"),
                                    ("sgl.cli", "sgl.viz")}

LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "sgl"
    if (SRC / parts[1]).is_dir() or (SRC / f"{parts[1]}.py").exists():
        return f"sgl.{parts[1]}"
    return "sgl"  # a name imported from the package itself (``from sgl import gen``)


def _imports(path: Path) -> set[str]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    return imports_in(path.read_text(), package)


def imports_in(source: str, package: str) -> set[str]:
    """The ``sgl`` modules that ``source`` (a module of ``package``) imports, anywhere."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "sgl":  # ``from sgl import errors`` imports sgl.errors
                found.update(f"sgl.{a.name}" for a in node.names)
            else:
                found.add(target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_a_module(node.value):
            found.add(node.value)  # imported by name at run time
    return {t for t in found if t == "sgl" or t.startswith("sgl.")}


def _names_a_module(text: str) -> bool:
    """Is ``text`` exactly the dotted name of a module or subpackage under ``src/sgl``?"""
    if not re.fullmatch(r"sgl(\.\w+)+", text):
        return False
    path = SRC.joinpath(*text.split(".")[1:])
    return path.is_dir() or path.with_suffix(".py").is_file()


def unit_graph() -> dict[str, set[str]]:
    """unit -> units it imports, over every ``.py`` file under ``src/sgl``."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in sorted(SRC.rglob("*.py")):
        src_unit = _unit(_module_name(path))
        for target in _imports(path):
            dst_unit = _unit(target)
            if dst_unit != src_unit:
                graph[src_unit].add(dst_unit)
    return graph


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in SRC.rglob("*.py")}
    assert units - set(LAYER_OF) == set(), "add new units to LAYERS and docs/architecture.md"


def test_imports_point_down():
    wrong = []
    for src_unit, targets in unit_graph().items():
        for dst_unit in targets:
            lo, hi = LAYER_OF.get(dst_unit, -1), LAYER_OF.get(src_unit, -1)
            if lo < hi or (src_unit, dst_unit) in SAME_LAYER:
                continue
            wrong.append(f"{src_unit} -> {dst_unit}")
    assert wrong == [], "imports against the layer order: " + ", ".join(sorted(wrong))


def test_no_import_cycle():
    graph = unit_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(unit: str) -> None:
        state[unit] = 1
        stack.append(unit)
        for nxt in sorted(graph.get(unit, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit)


def test_constrain_is_a_leaf_package():
    """``sgl.constrain`` imports only the bottom leaves: adapters need nothing else."""
    assert unit_graph()["sgl.constrain"] <= LAYERS[0]


def test_the_checker_sees_function_local_and_relative_imports():
    """A lazy import inside a function counts as an edge (it can hide a cycle)."""
    source = "def f():\n    from ..lang import state\n    import sgl.server.app\n\nfrom . import sampler\n"
    assert imports_in(source, "sgl.engine") == {"sgl.lang", "sgl.server.app", "sgl.engine"}


def test_the_checker_sees_modules_imported_by_name():
    """``importlib.import_module("sgl.x")`` and lazy-import tables are edges too; other
    strings (a logger's name, a message) are not."""
    source = ('import importlib\n_LAZY = {"LocalModel": "sgl.backends.local"}\n'
              'def f():\n    return importlib.import_module("sgl.server.main")\n'
              'MESSAGE = "sgl.LocalModel needs torch"\n')
    assert imports_in(source, "sgl") == {"sgl.backends.local", "sgl.server.main"}
