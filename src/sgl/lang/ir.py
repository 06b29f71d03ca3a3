"""The SGL IR: what a program does, as plain dataclasses (printed by ``printer.py``).

Python the compiler does not model stays as ``Expr`` (its source text), so any
program lowers; SGL operations (text, gen, select, roles, forks) are explicit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# SGLang's regexes for typed values (``from sglang.lang.ir import REGEX_INT``), same text.
# ``gen(dtype=...)`` uses SGL's own, stricter ones (sgl.lang.dtypes.DTYPE_REGEX).
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""


@dataclass(frozen=True)
class Loc:
    file: str
    line: int
    col: int  # 1-based


# --- values (the parts of an append) ---------------------------------------------
@dataclass
class Expr:
    """Opaque Python: an expression or a statement, kept as source text."""

    source: str
    loc: Loc | None = None


@dataclass
class Text:
    value: str
    loc: Loc | None = None


@dataclass
class VarRef:
    """``state["name"]``: a variable read."""

    name: str | Expr
    state: str = "s"
    loc: Loc | None = None


@dataclass
class Gen:
    """``sgl.gen``; ``args`` maps argument names to Python literals or ``Expr``."""

    name: str | Expr | None
    args: dict[str, Any] = field(default_factory=dict)
    kind: str = "gen"  # "gen" | "gen_int" | "gen_string"
    loc: Loc | None = None


@dataclass
class Select:
    name: str | Expr | None
    choices: list[str] | Expr
    args: dict[str, Any] = field(default_factory=dict)
    loc: Loc | None = None


@dataclass
class RoleText:
    """``sgl.user(...)``: ``parts`` wrapped as one message."""

    role: str
    parts: list[Any]
    loc: Loc | None = None


@dataclass
class RoleMarker:
    """``sgl.user_begin()`` / ``sgl.user_end()``."""

    role: str
    begin: bool
    loc: Loc | None = None


@dataclass
class Concat:
    """``a + b`` outside an append, where a part is an SGL value."""

    parts: list[Any]
    loc: Loc | None = None


# --- statements ------------------------------------------------------------------
@dataclass
class Append:
    """``target += part + part + ...``"""

    target: str
    parts: list[Any]
    loc: Loc | None = None


@dataclass
class Role:
    """``with target.user(): body``"""

    role: str
    target: str
    body: list[Any]
    loc: Loc | None = None


@dataclass
class VarScope:
    """``with target.var_scope(name): body``"""

    name: str | Expr
    target: str
    body: list[Any]
    loc: Loc | None = None


@dataclass
class With:
    """Any other ``with`` block."""

    header: Expr
    body: list[Any]
    loc: Loc | None = None


@dataclass
class Fork:
    """``name = source.fork(n)``"""

    name: str
    source: str
    n: int | Expr
    loc: Loc | None = None


@dataclass
class Join:
    forks: str
    mode: str = "gather_variable"
    loc: Loc | None = None


@dataclass
class Assign:
    target: str
    value: Any
    loc: Loc | None = None


@dataclass
class SetVar:
    """``state["name"] = value``"""

    name: str | Expr
    value: Any
    state: str = "s"
    loc: Loc | None = None


@dataclass
class If:
    test: Expr
    body: list[Any]
    orelse: list[Any] = field(default_factory=list)
    loc: Loc | None = None


@dataclass
class For:
    target: str
    iter: Expr
    body: list[Any]
    orelse: list[Any] = field(default_factory=list)
    loc: Loc | None = None


@dataclass
class While:
    test: Expr
    body: list[Any]
    orelse: list[Any] = field(default_factory=list)
    loc: Loc | None = None


@dataclass
class Return:
    value: Any = None
    loc: Loc | None = None


@dataclass
class FunctionDef:
    name: str
    params: list[str]
    state_param: str | None
    body: list[Any]
    loc: Loc | None = None


@dataclass
class Module:
    """Every SGL function in one source."""

    file: str
    functions: list[FunctionDef] = field(default_factory=list)

    def function(self, name: str) -> FunctionDef:
        for fn in self.functions:
            if fn.name == name:
                return fn
        raise KeyError(f"no SGL function {name!r} in {self.file}")
