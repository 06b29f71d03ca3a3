"""No test reaches into the package's private names (issue 10, item 8).

A test that pokes ``module._helper`` or ``obj._attr`` pins an implementation detail: a
refactor breaks the test without breaking any user. So a test goes through public API,
and what a test needs is made public (with a docstring) in its module. The few tests that
must look inside, such as the C-vs-Python equivalence checks of the native kernels, are
listed in ``ALLOWED`` with the names they use and why.

What counts as a private name of the package: an identifier that starts with one
underscore (dunders are Python's, not ours) and that ``src/sgl`` defines (a function,
class, assignment target, attribute, import alias or module). A test uses one by
importing it (``from sgl.x import _y``, ``import sgl._x``), by attribute access
(``obj._y``; ``self._y`` inside a class of the test that sets it itself is the test's
own), by name in ``setattr``/``getattr``/``monkeypatch.setattr`` calls, or in the source
text of a subprocess script held in a string. Every ``.py`` file under ``tests/`` is read.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src" / "sgl"

# test file -> (private names it may use, why it must); keep this short
ALLOWED: dict[str, tuple[frozenset[str], str]] = {
    "test_native_boundary.py": (
        frozenset({"_native", "_walks", "_lexers", "_c", "_deadline", "_check_budget", "_walk_rest", "_fill"}),
        "the C boundary recursion is the path taken and stops at the mask deadline inside its loop: "
        "it reads MaskComputer's and NativeBoundaries' registrations and budget state, and watches "
        "the reports to Python to show that the sub-walks are made in C",
    ),
    "test_lexer_setup.py": (
        frozenset({"_prepared", "_cache", "_prep"}),
        "the lazy per-lexeme preparation is the test's subject: which lexemes the lexer's "
        "cache has prepared, against the eager preparation",
    ),
    "test_native_keys.py": (
        frozenset({"_native", "_fill"}),
        "the C recursion scans tracking grammars by itself: it watches NativeBoundaries' "
        "reports to Python to show that no scan comes back",
    ),
}

ATTR_FUNCS = {"setattr", "getattr", "hasattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_in(tree: ast.AST) -> Iterator[str]:
    """The identifiers one source file of the package binds."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            yield node.id
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.split(".")[0]
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            yield node.value  # __slots__ entries, setattr(self, "_x", ...)


def package_private_names() -> frozenset[str]:
    names: set[str] = set()
    for path in SRC.rglob("*"):
        if path.suffix in (".py", ".c") and _private(path.stem):
            names.add(path.stem.split(".")[0])  # private modules: _native, _extras, ...
        if path.suffix == ".py":
            names.update(_defined_in(ast.parse(path.read_text(encoding="utf-8"))))
    return frozenset(n for n in names if _private(n))


def _own_attrs(tree: ast.AST) -> dict[ast.ClassDef, set[str]]:
    """Per class of the test file: the ``self._x`` attributes it assigns itself."""
    own: dict[ast.ClassDef, set[str]] = {}
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        own[cls] = {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
                    and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)
                    and n.value.id == "self"}
    return own


def _sgl_module(name: str) -> bool:
    return name == "sgl" or name.startswith("sgl.")


def _code_in_string(value: str) -> ast.AST | None:
    """A subprocess script held in a string, parsed, or None when it is not Python."""
    if "sgl" not in value or "import" not in value:
        return None
    try:
        return ast.parse(value)
    except SyntaxError:
        return None


def _text(node: ast.Constant | ast.JoinedStr) -> str:
    """A string's text; an f-string's replacement fields read as a plain name."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else ""
    return "".join(_text(v) if isinstance(v, ast.Constant) else "x" for v in node.values)


def uses(tree: ast.AST, private: frozenset[str]) -> Iterator[tuple[int, str]]:
    """``(line, name)`` for each use of a package-private name in a parsed test file."""
    own = _own_attrs(tree)
    self_ok: set[int] = set()
    for cls, attrs in own.items():
        self_ok.update(id(n) for n in ast.walk(cls) if isinstance(n, ast.Attribute)
                       and isinstance(n.value, ast.Name) and n.value.id == "self" and n.attr in attrs)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 1)
        if isinstance(node, ast.ImportFrom) and node.module and _sgl_module(node.module):
            yield from ((line, p) for p in node.module.split(".") if _private(p))
            yield from ((line, a.name) for a in node.names if _private(a.name))
        elif isinstance(node, ast.Import):
            yield from ((line, p) for a in node.names if _sgl_module(a.name)
                        for p in a.name.split(".") if _private(p))
        elif isinstance(node, ast.Attribute) and node.attr in private and id(node) not in self_ok:
            yield line, node.attr
        elif isinstance(node, ast.Call):
            yield from _attr_call(node, private, line)
        elif isinstance(node, (ast.Constant, ast.JoinedStr)):
            inner = _code_in_string(_text(node))
            if inner is not None:  # reported at the string's own (first) line
                yield from ((line, name) for _, name in uses(inner, private))


def _attr_call(node: ast.Call, private: frozenset[str], line: int) -> Iterator[tuple[int, str]]:
    """``setattr(obj, "_x", v)``, ``monkeypatch.setattr("sgl.m._x", v)`` and kin."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if name not in ATTR_FUNCS:
        return
    for arg in node.args[:2]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            parts = arg.value.split(".")
            if (len(parts) == 1 and arg.value in private) or (len(parts) > 1 and _sgl_module(arg.value)):
                yield from ((line, p) for p in parts if _private(p))


def _violations() -> list[str]:
    private = package_private_names()
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        name = path.relative_to(TESTS).as_posix()
        if name == Path(__file__).name:  # its own examples
            continue
        allowed, _why = ALLOWED.get(name, (frozenset(), ""))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{name}:{line}: {used}" for line, used in sorted(set(uses(tree, private)))
                  if used not in allowed]
    return found


def test_tests_use_no_private_names_of_the_package():
    found = _violations()
    assert not found, "tests use private names of sgl (make them public or add to ALLOWED):\n" + "\n".join(found)


def test_allowlist_entries_are_still_needed():
    private = package_private_names()
    for file, (names, why) in ALLOWED.items():
        assert why, file
        tree = ast.parse((TESTS / file).read_text(encoding="utf-8"))
        used = {name for _, name in uses(tree, private)}
        assert names <= used, f"{file}: ALLOWED lists {sorted(names - used)} but the file no longer uses them"


def test_the_checker_catches_each_form():
    private = frozenset({"_x", "_native", "_y"})
    src = (
        "from sgl.constrain.mask import _native\n"
        "import sgl.constrain._native\n"
        "obj._x\n"
        "monkeypatch.setattr(mod, '_y', 1)\n"
        "monkeypatch.setattr('sgl.m._x', 1)\n"
        "run('import sgl; sgl.m._y')\n"
        "run('from sgl.m import ' f'{name}\\nsgl.m._native')\n"
        "LAYER = {'sgl._version'}\n"
        "class T:\n"
        "    def __init__(self):\n"
        "        self._x = 1\n"
        "    def f(self):\n"
        "        return self._x, other._q, self.__dict__\n"
    )
    got = sorted(uses(ast.parse(src), private))
    assert got == [(1, "_native"), (2, "_native"), (3, "_x"), (4, "_y"), (5, "_x"), (6, "_y"), (7, "_native")]
