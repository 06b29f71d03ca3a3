"""Static checks on one SGL function, before any model call: call arguments, literal
constraints that do not compile, empty choices, variables read before they exist.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import re
from dataclasses import dataclass
from typing import Any

from . import api
from .choices import METHOD_NAMES
from .diagnostics import Diagnostic
from .dtypes import DTYPE_REGEX
from .expr import GRAMMAR_SYNTAXES
from .source import ApiNames, FunctionPass, Source, first_arg, literal_position


def _signature(fn: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``fn``'s (positional, keyword-only) parameter names: the checks follow the API itself."""
    params = inspect.signature(fn).parameters.values()
    return (tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD),
            tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY))


GEN_POSITIONAL, GEN_KEYWORD = _signature(api.gen)
_GEN_TYPED = (GEN_POSITIONAL[:3], tuple(k for k in GEN_POSITIONAL[3:] + GEN_KEYWORD if k != "dtype"))
SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gen": (GEN_POSITIONAL, GEN_KEYWORD),
    "gen_int": _GEN_TYPED,  # gen(..., dtype=int)
    "gen_string": _GEN_TYPED,
    "select": _signature(api.select),
}
REFUSED_API = {
    "image": "sgl.image is not supported: SGL runs text-only models",
    "video": "sgl.video is not supported: SGL runs text-only models",
}
CONSTRAINT_ARGS = ("regex", "json_schema", "grammar", "dtype", "choices")
DTYPE_NAMES = set(DTYPE_REGEX) | {"string", "integer", "boolean"}


# literal number arguments: (what a valid one satisfies, how the error says it)
NUMBER_RULES: dict[str, tuple[Any, str]] = {
    "max_tokens": (lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
    "n": (lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
    "frequency_penalty": (lambda v: isinstance(v, int | float) and -2 <= v <= 2, "a number in [-2, 2]"),
    "presence_penalty": (lambda v: isinstance(v, int | float) and -2 <= v <= 2, "a number in [-2, 2]"),
    "repetition_penalty": (lambda v: isinstance(v, int | float) and 0 < v <= 2, "a number in (0, 2]"),
    "top_logprobs_num": (lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
    "min_tokens": (lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
    "temperature": (lambda v: isinstance(v, int | float) and v >= 0, "a number >= 0"),
    "top_p": (lambda v: isinstance(v, int | float) and 0 < v <= 1, "a number in (0, 1]"),
    "min_p": (lambda v: isinstance(v, int | float) and 0 <= v <= 1, "a number in [0, 1]"),
    "timeout": (lambda v: isinstance(v, int | float) and v > 0, "a positive number of seconds"),
}


@dataclass
class BoundCall:
    """A gen/select call with its arguments by name (the ast nodes)."""

    api: str
    node: ast.Call
    args: dict[str, ast.expr]
    arg_nodes: dict[str, ast.AST]  # where to point for each argument (keyword or value)


@dataclass
class VarEvent:
    name: str | re.Pattern | None  # None: a name the checker cannot know (matches all)
    pos: tuple[int, int]  # definitions: end of their statement; reads: the read itself
    node: ast.AST | None = None


class FunctionChecker(FunctionPass):
    """Collects diagnostics for one ``@sgl.function``."""

    def __init__(self, src: Source, names: ApiNames, fn: ast.FunctionDef):
        super().__init__(src, names, fn)
        self.diagnostics: list[Diagnostic] = []
        self.stmt_stack: list[ast.stmt] = []
        self.defs: list[VarEvent] = []
        self.reads: list[VarEvent] = []

    def run(self) -> list[Diagnostic]:
        if isinstance(self.fn, ast.AsyncFunctionDef):
            self.error(f"SGL function '{self.fn.name}' cannot be async", self.fn, name_only=True)
        if self.state is None:
            self.error(
                f"SGL function '{self.fn.name}' needs the program state as its first parameter (def {self.fn.name}(s, ...))",
                self.fn,
                name_only=True,
            )
        for stmt in self.fn.body:
            self.visit(stmt)
        self.check_reads()
        return self.diagnostics

    # --- reporting ---
    def error(self, message: str, node: ast.AST, name_only: bool = False) -> None:
        self.report("error", message, node, name_only)

    def warning(self, message: str, node: ast.AST) -> None:
        self.report("warning", message, node)

    def report(self, severity: str, message: str, node: ast.AST, name_only: bool = False) -> None:
        if name_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            # point at the function's name, not its first decorator
            line = self.src.lines[node.lineno - 1] if node.lineno - 1 < len(self.src.lines) else ""
            m = re.compile(rf"def\s+({re.escape(node.name)})\b").search(line, node.col_offset)
            self.diagnostics.append(
                self.src.diagnostic_at(
                    severity, message, node.lineno, m.start(1) if m else node.col_offset
                )
            )
            return
        self.diagnostics.append(self.src.diagnostic(severity, message, node))

    # --- traversal ---
    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.stmt):
            self.stmt_stack.append(node)
            try:
                super().visit(node)
            finally:
                self.stmt_stack.pop()
        else:
            super().visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.generic_visit(node)  # a helper defined inside still uses the same API

    def visit_Assign(self, node: ast.Assign) -> None:
        if self.is_state_call(node.value, "fork"):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.fork_groups.add(target.id)
        for target in node.targets:
            key = self.state_subscript(target)
            if key is not None:
                self.define(key, node)
        self.generic_visit(node)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            call = item.context_expr
            if self.is_state_call(call, "var_scope") and call.args:
                self.define(call.args[0], node)  # defined when the block ends
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        if isinstance(node.ctx, ast.Load):
            key = self.state_subscript(node)
            if key is not None:
                self.read(key, node)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        api = self.names.api_name(node.func)
        if api is None and self.is_state_call(node):
            api = node.func.attr if node.func.attr in ("gen", "select") else None
            if self.is_state_call(node, "set_var") and node.args:
                self.define(node.args[0], self.stmt_stack[-1] if self.stmt_stack else node)
            elif self.is_state_call(node, "get_var") and node.args:
                self.read(node.args[0], node)
        if api in REFUSED_API:
            self.error(REFUSED_API[api], node)
        elif api == "separate_reasoning":
            self.check_separate_reasoning(node)
        elif api in SIGNATURES:
            bound = self.bind(api, node)
            if bound is not None:
                self.check_call(bound)
        self.generic_visit(node)

    def check_separate_reasoning(self, node: ast.Call) -> None:
        """A known model_type; the ``<name>_reasoning_content`` variables it defines."""
        from .reasoning import REASONING_FORMATS, REASONING_SUFFIX

        args = dict(zip(("expr", "model_type"), node.args, strict=False))
        args.update({kw.arg: kw.value for kw in node.keywords if kw.arg})
        model_type = args.get("model_type")
        ok, value = self.names.literal(model_type) if model_type is not None else (True, None)
        if ok and value not in REASONING_FORMATS:
            self.error(
                f"separate_reasoning needs model_type, one of {', '.join(REASONING_FORMATS)} (got {value!r})",
                model_type if model_type is not None else node,
            )
        stmt = self.stmt_stack[-1] if self.stmt_stack else node
        end = (getattr(stmt, "end_lineno", stmt.lineno), getattr(stmt, "end_col_offset", 0))
        for inner in ast.walk(args.get("expr", node)):
            if not isinstance(inner, ast.Call):
                continue
            if self.names.api_name(inner.func) not in ("gen", "gen_int", "gen_string", "select"):
                continue
            ok, name = self.names.literal(first_arg(inner, "name"))
            if ok and isinstance(name, str):
                self.defs.append(VarEvent(name + REASONING_SUFFIX, end))

    # --- state helpers ---
    def is_state_target(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id == self.state
        return (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in self.fork_groups
        )

    def is_state_call(self, node: ast.expr, method: str | None = None) -> bool:
        return (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and self.is_state_target(node.func.value)
            and (method is None or node.func.attr == method)
        )

    # --- variables ---
    def name_pattern(self, node: ast.expr | None) -> str | re.Pattern | None:
        if node is None:
            return None
        ok, value = self.names.literal(node)
        if ok and isinstance(value, str):
            return value
        if isinstance(node, ast.JoinedStr):  # f"action_{i}": literal parts, anything between
            parts = [
                re.escape(v.value) if isinstance(v, ast.Constant) else ".*" for v in node.values
            ]
            return re.compile("".join(parts), re.S)
        return None

    def define(self, name_node: ast.expr, stmt: ast.AST) -> None:
        end = (getattr(stmt, "end_lineno", stmt.lineno), getattr(stmt, "end_col_offset", 0))
        self.defs.append(VarEvent(self.name_pattern(name_node), end))

    def read(self, name_node: ast.expr, node: ast.AST) -> None:
        ok, value = self.names.literal(name_node)
        if ok and isinstance(value, str):
            self.reads.append(VarEvent(value, (node.lineno, node.col_offset), node))

    def check_reads(self) -> None:
        for r in self.reads:
            if not any(d.pos <= r.pos and _matches(d.name, r.name) for d in self.defs):
                later = any(_matches(d.name, r.name) for d in self.defs)
                why = (
                    "before it is generated"
                    if later
                    else "but no gen, select or var_scope defines it"
                )
                self.error(f"variable '{r.name}' is read {why}", r.node)

    # --- gen / select ---
    def bind(self, api: str, node: ast.Call) -> BoundCall | None:
        positional, keyword = SIGNATURES[api]
        valid = positional + keyword
        args: dict[str, ast.expr] = {}
        where: dict[str, ast.AST] = {}
        for i, arg in enumerate(node.args):
            if isinstance(arg, ast.Starred):
                return None  # *args: cannot bind statically
            if i >= len(positional):
                self.error(
                    f"{api} takes at most {len(positional)} positional arguments ({len(node.args)} given)",
                    arg,
                )
                break
            args[positional[i]] = where[positional[i]] = arg
        for kw in node.keywords:
            if kw.arg is None:
                return None  # **kwargs
            if kw.arg not in valid:
                close = difflib.get_close_matches(kw.arg, valid, n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                self.error(f"unknown argument '{kw.arg}' to {api}{hint}", kw)
            elif kw.arg in args:
                self.error(f"{api} got multiple values for argument '{kw.arg}'", kw)
            else:
                args[kw.arg] = kw.value
                where[kw.arg] = kw
        if "name" in args:
            self.define(args["name"], self.stmt_stack[-1] if self.stmt_stack else node)
        # checks on the known arguments still run after a bad one
        return BoundCall(api, node, args, where)

    def check_call(self, call: BoundCall) -> None:
        if call.api == "select" or "choices" in call.args:
            self.check_choices(call)
        if call.api != "select":
            self.check_gen(call)
        self.check_numbers(call)

    def check_choices(self, call: BoundCall) -> None:
        node = call.args.get("choices")
        if node is None:
            self.error("select needs choices", call.node)
            return
        ok, value = self.names.literal(node)
        if ok:
            if not isinstance(value, list | tuple):
                self.error(f"choices must be a list of strings, not {type(value).__name__}", node)
            elif len(value) == 0:
                self.error(f"{call.api} with empty choices", node)
            else:
                elts = node.elts if isinstance(node, ast.List | ast.Tuple) else [node] * len(value)
                for elt, v in zip(elts, value, strict=True):
                    if not isinstance(v, str):
                        self.error(f"choice {v!r} is not a string", elt)
        method = call.args.get("choices_method")
        if method is not None:
            name = method.attr if isinstance(method, ast.Attribute) else None
            ok, value = self.names.literal(method)
            if ok and isinstance(value, str):
                name = value
            if name is not None and name not in METHOD_NAMES:
                self.error(
                    f"unknown choices_method '{name}' (expected one of {', '.join(METHOD_NAMES)})",
                    method,
                )

    def check_numbers(self, call: BoundCall) -> None:
        for arg, (rule, want) in NUMBER_RULES.items():
            ok, value = self.names.literal(call.args.get(arg))
            if ok and value is not None and (isinstance(value, bool) or not rule(value)):
                self.error(f"{arg} must be {want}, got {value!r}", call.args[arg])

    def check_gen(self, call: BoundCall) -> None:
        given = [a for a in CONSTRAINT_ARGS if a in call.args and not _is_none(call.args[a])]
        if call.api in ("gen_int", "gen_string"):
            given = ["dtype", *given]
        if len(given) > 1:
            self.error(
                f"{call.api} takes at most one of regex, json_schema, grammar, dtype, choices (got {', '.join(given)})",
                call.arg_nodes.get(given[1], call.node),
            )
            return
        if "dtype" in call.args:
            self.check_dtype(call.args["dtype"])
        syntax = "lark"
        if "grammar_syntax" in call.args:
            ok, value = self.names.literal(call.args["grammar_syntax"])
            if ok and value not in GRAMMAR_SYNTAXES:
                self.error(
                    f"grammar_syntax must be one of {', '.join(GRAMMAR_SYNTAXES)}, not {value!r}",
                    call.args["grammar_syntax"],
                )
                return
            syntax = value if ok else None
        if "regex" in call.args:
            self.check_regex(call.args["regex"])
        if "json_schema" in call.args:
            self.check_schema(call.args["json_schema"])
        if "grammar" in call.args and syntax is not None:
            self.check_grammar(call.args["grammar"], syntax)

    def check_dtype(self, node: ast.expr) -> None:
        if isinstance(node, ast.Name) and node.id in ("int", "float", "str", "bool"):
            return
        ok, value = self.names.literal(node)
        if ok and value is not None and value not in DTYPE_NAMES:
            self.error(f"unsupported dtype {value!r} (expected int, float, str or bool)", node)
        elif isinstance(node, ast.Name) and node.id in ("list", "dict", "tuple", "bytes", "complex", "set"):
            self.error(f"unsupported dtype {node.id} (expected int, float, str or bool)", node)

    # --- constraints (checked with the constraint engine) ---
    def check_regex(self, node: ast.expr) -> None:
        ok, pattern = self.names.literal(node)
        if not ok or pattern is None:
            return
        if not isinstance(pattern, str):
            self.error(f"regex must be a string, not {type(pattern).__name__}", node)
            return
        from sgl.constrain.regex import parse_regex

        err = self._engine_error(parse_regex, pattern, "regex", node)
        if err is not None:
            offset = _int_location(err.location)
            self.error_in_literal(_prefixed("invalid regex", err.message), node, offset)

    def check_schema(self, node: ast.expr) -> None:
        ok, schema = self.names.literal(node)
        if not ok or schema is None:
            return
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as e:
                self.error_in_literal(f"json_schema is not valid JSON: {e.msg}", node, e.pos)
                return
        if not isinstance(schema, dict | bool):
            self.error(f"json_schema must be an object, not {type(schema).__name__}", node)
            return
        from sgl.constrain.json_schema import json_schema_grammar

        err = self._engine_error(json_schema_grammar, schema, "json_schema", node)
        if err is not None:
            target = _pointer_node(node, err.location) or node
            where = f" at {err.location}" if err.location else ""
            self.error(_prefixed(f"invalid json_schema{where}", err.message), target)

    def check_grammar(self, node: ast.expr, syntax: str) -> None:
        ok, text = self.names.literal(node)
        if not ok or text is None:
            return
        if not isinstance(text, str):
            self.error(f"grammar must be a string, not {type(text).__name__}", node)
            return
        from sgl.constrain.gbnf import ebnf_grammar, gbnf_grammar
        from sgl.constrain.lark_grammar import lark_grammar

        to_grammar = {"lark": lark_grammar, "gbnf": gbnf_grammar, "ebnf": ebnf_grammar}[syntax]
        err = self._engine_error(to_grammar, text, f"{syntax} grammar", node)
        if err is not None:
            offset = _text_location(text, err.location)
            self.error_in_literal(_prefixed(f"invalid {syntax} grammar", err.message), node, offset)

    def _engine_error(self, fn: Any, value: Any, what: str, node: ast.expr) -> Any:
        """The ConstraintError of ``fn(value)``, or None; a checker's own failure is a
        warning (it must not break compiling)."""
        from sgl.constrain.errors import ConstraintError

        try:
            fn(value)
        except ConstraintError as e:
            return e
        except RecursionError:
            self.warning(f"could not check {what}: recursion too deep", node)
        except Exception as e:  # noqa: BLE001 - a checker bug must not break compiling
            self.warning(f"could not check {what}: {type(e).__name__}: {e}", node)
        return None

    def error_in_literal(self, message: str, node: ast.expr, offset: int | None) -> None:
        """Point inside the string literal when the offset maps onto its source."""
        pos = literal_position(self.src, node, offset) if offset is not None else None
        if pos is None:
            self.error(message, node)
        else:
            self.diagnostics.append(self.src.diagnostic_at("error", message, *pos))


def _prefixed(prefix: str, message: str) -> str:
    # engines often start their messages with "invalid regex: ..." already
    return (
        message
        if message.lower().startswith(prefix.split(" at ")[0].lower())
        else f"{prefix}: {message}"
    )


def _matches(pattern: str | re.Pattern | None, name: str) -> bool:
    if pattern is None:
        return True
    if isinstance(pattern, str):
        return pattern == name
    return pattern.fullmatch(name) is not None


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _int_location(location: Any) -> int | None:
    if isinstance(location, int):
        return location
    m = re.search(r"\d+", str(location or ""))
    return int(m.group()) if m else None


def _text_location(text: str, location: Any) -> int | None:
    """Offset in ``text`` of a "line L, column C" location (1-based), or a bare offset."""
    if location is None:
        return None
    m = re.search(r"line\s+(\d+)\D+?(\d+)", str(location)) or re.fullmatch(
        r"\s*(\d+):(\d+)\s*", str(location)
    )
    if not m:
        return _int_location(location)
    line, col = int(m.group(1)), int(m.group(2))
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        return None
    return sum(len(x) + 1 for x in lines[: line - 1]) + max(col - 1, 0)


def _pointer_node(node: ast.expr, pointer: Any) -> ast.AST | None:
    """The key (or item) a JSON pointer such as ``/properties/age/minimum`` names in a
    dict literal; the deepest one found."""
    if (
        not isinstance(pointer, str)
        or not pointer.startswith("/")
        or not isinstance(node, ast.Dict)
    ):
        return None
    found: ast.AST | None = None
    current: ast.AST = node
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(current, ast.Dict):
            for k, v in zip(current.keys, current.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == token:
                    found, current = k, v
                    break
            else:
                break
        elif (
            isinstance(current, ast.List | ast.Tuple)
            and token.isdigit()
            and int(token) < len(current.elts)
        ):
            found = current = current.elts[int(token)]
        else:
            break
    return found
