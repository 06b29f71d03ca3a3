"""Pretty-prints the SGL IR (``sgl check --ir``).

Text is shown as a Python string literal, opaque Python in backticks, and SGL
operations by name::

    function qa(s, question)  # prog.py:4
      s += "Q: " + `question` + "\\n"
      s += "A:" + gen answer(stop="\\n", temperature=0)
"""

from __future__ import annotations

from typing import Any

from . import ir

INDENT = "  "
MAX_LITERAL = 100  # long literals (schemas) are cut so each IR line stays readable


def format_module(module: ir.Module) -> str:
    """Every function of ``module``, separated by blank lines."""
    return "\n".join(format_function(fn) + "\n" for fn in module.functions)


def format_function(fn: ir.FunctionDef) -> str:
    where = f"  # {fn.loc.file}:{fn.loc.line}" if fn.loc else ""
    return "\n".join([f"function {fn.name}({', '.join(fn.params)}){where}", *_block(fn.body, 1)])


def _block(stmts: list[Any], depth: int) -> list[str]:
    if not stmts:
        return [INDENT * depth + "pass"]
    out: list[str] = []
    for stmt in stmts:
        out += _stmt(stmt, depth)
    return out


def _stmt(node: Any, depth: int) -> list[str]:
    pad = INDENT * depth
    if isinstance(node, ir.Append):
        return [f"{pad}{node.target} += {_parts(node.parts)}"]
    if isinstance(node, ir.Role):
        return [f"{pad}role {node.role} on {node.target}:"] + _block(node.body, depth + 1)
    if isinstance(node, ir.VarScope):
        return [f"{pad}var_scope {_name(node.name)} on {node.target}:"] + _block(node.body, depth + 1)
    if isinstance(node, ir.With):
        return [f"{pad}with {_value(node.header)}:"] + _block(node.body, depth + 1)
    if isinstance(node, ir.Fork):
        return [f"{pad}{node.name} = fork {node.source} x {_value(node.n)}"]
    if isinstance(node, ir.Join):
        return [f"{pad}join {node.forks} ({node.mode})"]
    if isinstance(node, ir.SetVar):
        return [f"{pad}{node.state}[{_name(node.name)}] = {_value(node.value)}"]
    if isinstance(node, ir.Assign):
        return [f"{pad}{node.target} = {_value(node.value)}"]
    if isinstance(node, ir.If | ir.For | ir.While):
        head = (f"for {node.target} in {_value(node.iter)}" if isinstance(node, ir.For)
                else f"{type(node).__name__.lower()} {_value(node.test)}")  # if / while
        out = [f"{pad}{head}:"] + _block(node.body, depth + 1)
        return out + ([f"{pad}else:"] + _block(node.orelse, depth + 1) if node.orelse else [])
    if isinstance(node, ir.Return):
        return [f"{pad}return" + ("" if node.value is None else f" {_value(node.value)}")]
    if isinstance(node, ir.Expr):
        return [f"{pad}`{line}`" for line in node.source.splitlines() or [""]]
    return [f"{pad}{_value(node)}"]


def _parts(parts: list[Any]) -> str:
    return " + ".join(_value(p) for p in parts) if parts else '""'


def _name(name: Any) -> str:
    return name if isinstance(name, str) else _value(name)


def _value(node: Any) -> str:
    if isinstance(node, ir.Text):
        return repr(node.value)
    if isinstance(node, ir.Expr):
        return f"`{' '.join(node.source.split())}`"
    if isinstance(node, ir.VarRef):
        return f"{node.state}[{_name(node.name) if not isinstance(node.name, str) else repr(node.name)}]"
    if isinstance(node, ir.Gen):
        name = "" if node.name is None else f" {_name(node.name)}"
        return f"{node.kind}{name}({_args(node.args)})"
    if isinstance(node, ir.Select):
        name = "" if node.name is None else f" {_name(node.name)}"
        extra = _args(node.args)
        return f"select{name}({_value(node.choices)}{', ' + extra if extra else ''})"
    if isinstance(node, ir.RoleText):
        return f"{node.role}({_parts(node.parts)})"
    if isinstance(node, ir.RoleMarker):
        return f"{node.role}_{'begin' if node.begin else 'end'}"
    if isinstance(node, ir.Concat):
        return _parts(node.parts)
    if isinstance(node, list | tuple):
        inner = ", ".join(_value(v) for v in node)
        return f"[{inner}]" if isinstance(node, list) else f"({inner})"
    if isinstance(node, dict):
        text = "{" + ", ".join(f"{k!r}: {_value(v)}" for k, v in node.items()) + "}"
        return text if len(text) <= MAX_LITERAL else text[: MAX_LITERAL - 4] + " ...}"
    return repr(node)


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in args.items())
