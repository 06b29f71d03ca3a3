"""Reading SGL source: load it (function, file or string), parse it, and recognise
the SGL API in it (``sgl.gen``, ``from sgl import select``, ``import sglang as sgl``).
"""

from __future__ import annotations

import ast
import inspect
import linecache
import os
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .diagnostics import Diagnostic

SGL_MODULES = ("sgl", "sglang")


@dataclass
class Source:
    """Parsed source plus where it came from; ``line_offset``/``col_offset`` map
    positions when only a dedented snippet of a file could be read."""

    file: str
    text: str
    tree: ast.Module | None = None
    target_line: int | None = None  # compile only the function defined here
    line_offset: int = 0
    col_offset: int = 0
    syntax_error: Diagnostic | None = None
    lines: list[str] = field(default_factory=list)

    def line_text(self, line: int) -> str:
        """The source text of (real, 1-based) ``line``."""
        i = line - self.line_offset - 1
        if 0 <= i < len(self.lines):
            return " " * self.col_offset + self.lines[i] if self.col_offset else self.lines[i]
        return ""

    def char_col(self, lineno: int, col_offset: int) -> int:
        """The 0-based character column of an ast position (ast counts bytes)."""
        raw = self.lines[lineno - 1] if 0 < lineno <= len(self.lines) else ""
        return len(raw.encode("utf-8")[:col_offset].decode("utf-8", errors="replace"))

    def position(self, lineno: int, col_offset: int) -> tuple[int, int]:
        """The real (line, 1-based character column) of an ast position."""
        return lineno + self.line_offset, self.char_col(lineno, col_offset) + 1 + self.col_offset

    def diagnostic(self, severity: str, message: str, node: Any, end: bool = True) -> Diagnostic:
        line, col = self.position(node.lineno, node.col_offset)
        end_col = None
        if end and getattr(node, "end_lineno", None) == node.lineno:
            end_col = self.position(node.lineno, node.end_col_offset)[1]
        return Diagnostic(severity, message, self.file, line, col, self.line_text(line), end_col)

    def diagnostic_at(self, severity: str, message: str, line: int, col: int) -> Diagnostic:
        """A diagnostic at an ast-relative (line, 0-based character column)."""
        real_line = line + self.line_offset
        return Diagnostic(
            severity,
            message,
            self.file,
            real_line,
            col + 1 + self.col_offset,
            self.line_text(real_line),
        )


def parse(file: str, text: str, **kwargs: Any) -> Source:
    src = Source(file=file, text=text, lines=text.splitlines(), **kwargs)
    try:
        src.tree = ast.parse(text, filename=file)
    except SyntaxError as e:  # e.offset is 1-based
        src.syntax_error = src.diagnostic_at("error", f"syntax error: {e.msg}", e.lineno or 1,
                                             (e.offset or 1) - 1)
    return src


def load_path(path: str | os.PathLike) -> Source:
    path = Path(path)
    return parse(str(path), path.read_text(encoding="utf-8"))


def load_function(func: Any) -> Source | None:
    """The whole file that defines ``func`` (for its imports and constants), aimed at
    ``func``; a dedented snippet if only ``inspect.getsource`` works; None if neither."""
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    file = code.co_filename
    lines = linecache.getlines(file, getattr(inspect.getmodule(func), "__dict__", None))
    if lines:
        src = parse(file, "".join(lines), target_line=code.co_firstlineno)
        if src.tree is not None and find_function_at(src.tree, code.co_firstlineno) is not None:
            return src
    try:
        snippet, start = inspect.getsourcelines(func)
    except (OSError, TypeError):
        return None
    text = "".join(snippet)
    dedented = textwrap.dedent(text)
    indent = len(text.splitlines()[0]) - len(dedented.splitlines()[0]) if text.strip() else 0
    return parse(file, dedented, target_line=1, line_offset=start - 1, col_offset=indent)


def find_function_at(tree: ast.AST, line: int) -> ast.FunctionDef | None:
    """The function whose ``def`` or first decorator is on ``line``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            if line in (first, node.lineno):
                return node
    return None


class ApiNames:
    """Which names in a module refer to the SGL API, and its literal constants."""

    def __init__(self, tree: ast.Module | None):
        self.modules: set[str] = set(SGL_MODULES)
        self.imported: dict[str, str] = {}  # local name -> API name
        self.constants: dict[str, Any] = {}
        if tree is None:
            return
        assigned: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in SGL_MODULES:
                        self.modules.add(alias.asname or alias.name.split(".")[0])
            elif (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").split(".")[0] in SGL_MODULES
            ):
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = alias.name
        for node in tree.body:  # module-level constants only: NAME = literal, assigned once
            if (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                name = node.targets[0].id
                assigned[name] = assigned.get(name, 0) + 1
                try:
                    self.constants[name] = ast.literal_eval(node.value)
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    self.constants.pop(name, None)
        for name, count in assigned.items():
            if count > 1:
                self.constants.pop(name, None)

    def api_name(self, func: ast.expr) -> str | None:
        """``sgl.gen`` / ``gen`` (imported from sgl) → ``"gen"``; otherwise None."""
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in self.modules
        ):
            return func.attr
        if isinstance(func, ast.Name) and func.id in self.imported:
            return self.imported[func.id]
        return None

    def is_sgl_decorator(self, dec: ast.expr) -> bool:
        target = dec.func if isinstance(dec, ast.Call) else dec
        return self.api_name(target) == "function"

    def literal(self, node: ast.expr | None) -> tuple[bool, Any]:
        """(True, value) for a literal or a module constant; (False, None) otherwise."""
        if node is None:
            return False, None
        if isinstance(node, ast.Name) and node.id in self.constants:
            return True, self.constants[node.id]
        try:
            return True, ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return False, None


def sgl_functions(tree: ast.Module, names: ApiNames) -> list[ast.FunctionDef]:
    """Every function decorated with ``@sgl.function``, in source order."""
    found = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(names.is_sgl_decorator(d) for d in n.decorator_list)
    ]
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


_ESCAPE = re.compile(
    r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[^}]*\}|[0-7]{1,3}|\n|.)", re.S
)


def literal_position(src: Source, node: ast.expr, offset: int) -> tuple[int, int] | None:
    """The ast-relative (line, 0-based column) of character ``offset`` of the value of
    string literal ``node`` (escapes decoded); None if the source cannot be mapped."""
    if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return None
    segment = ast.get_source_segment(src.text, node)
    if segment is None:
        return None
    i = 0
    while i < len(segment) and segment[i].isalpha():
        i += 1
    prefix = segment[:i].lower()
    quote = segment[i : i + 3] if segment[i : i + 3] in ('"""', "'''") else segment[i : i + 1]
    start = i + len(quote)
    body = segment[start : len(segment) - len(quote)]
    source_index = _value_to_source(body, raw="r" in prefix)
    if source_index is None or len(source_index) != len(node.value) + 1:
        return None  # implicit concatenation or something unexpected: no mapping
    at = start + source_index[max(0, min(offset, len(node.value)))]
    before = segment[:at]
    newlines = before.count("\n")
    if newlines:
        return node.lineno + newlines, at - before.rfind("\n") - 1
    return node.lineno, src.char_col(node.lineno, node.col_offset) + at


def _value_to_source(body: str, raw: bool) -> list[int] | None:
    """For each character of the literal's value, its index in ``body`` (plus the end)."""
    if raw:
        return list(range(len(body) + 1))  # a raw literal's value is its source
    index: list[int] = []
    i = 0
    while i < len(body):
        if body[i] != "\\":
            index.append(i)
            i += 1
            continue
        m = _ESCAPE.match(body, i)
        if m is None:
            return None
        try:
            with warnings.catch_warnings():  # "\d" in a plain literal warns, and stays two chars
                warnings.simplefilter("ignore")
                produced = "" if m.group() == "\\\n" else ast.literal_eval('"' + m.group() + '"')
        except (ValueError, SyntaxError):
            return None
        index += [i] * len(produced)
        i = m.end()
    index.append(len(body))
    return index


def first_arg(call: ast.Call, keyword: str) -> ast.expr | None:
    """The call's first positional argument, else its ``keyword`` argument, else None."""
    return call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == keyword), None)


class FunctionPass(ast.NodeVisitor):
    """A pass over one ``@sgl.function`` (the checks, the lowering to IR): its source, the
    module's SGL names, its state parameter and the fork groups made from that state."""

    def __init__(self, src: Source, names: ApiNames, fn: ast.FunctionDef):
        self.src = src
        self.names = names
        self.fn = fn
        params = fn.args.posonlyargs + fn.args.args
        self.state = params[0].arg if params else None
        self.fork_groups: set[str] = set()

    def state_subscript(self, node: ast.expr) -> ast.expr | None:
        """``key`` when ``node`` is ``s[key]`` on the state, else None."""
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == self.state:
            return node.slice
        return None
