"""``sgl.compile``: SGL source (a function, a ``.py``/``.sgl`` file, a string) → IR and
diagnostics, before any model call.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ir
from .checks import SIGNATURES, FunctionChecker
from .diagnostics import Diagnostic, format_all
from .source import (
    ApiNames,
    FunctionPass,
    Source,
    find_function_at,
    first_arg,
    load_function,
    load_path,
    parse,
    sgl_functions,
)

ROLES = ("system", "user", "assistant")


@dataclass
class CompiledProgram:
    """What the compiler found: ``ir`` (a Module of FunctionDefs) and ``diagnostics``."""

    ir: ir.Module
    diagnostics: list[Diagnostic] = field(default_factory=list)
    source_available: bool = True
    function: Any = field(default=None, repr=False, compare=False)  # the SglFunction, if any
    backend: Any = field(default=None, repr=False, compare=False)  # from compile(backend=...)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run the compiled function (SGLang's ``f.compile().run(...)``)."""
        kwargs.setdefault("backend", self.backend)
        return self._function().run(*args, **kwargs)

    def run_batch(self, batch_kwargs: Any, **kwargs: Any) -> Any:
        """Run the compiled function once per item (SGLang's ``compile().run_batch``)."""
        kwargs.setdefault("backend", self.backend)
        return self._function().run_batch(batch_kwargs, **kwargs)

    def print_graph(self) -> None:
        """Print the IR (SGLang's name)."""
        print(self.pretty(), end="")

    def _function(self) -> Any:
        if self.function is None:
            raise TypeError("this program was compiled from source text; only an @sgl.function runs")
        return self.function

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.is_error]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if not d.is_error]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """All diagnostics, formatted with source lines and carets."""
        return format_all(self.diagnostics)

    def pretty(self) -> str:
        """The IR, pretty-printed."""
        from .printer import format_module

        return format_module(self.ir)


def compile(program: Any, *, name: str | None = None) -> CompiledProgram:  # noqa: A001 - SGL's public name
    """Compile an SGL program: an ``@sgl.function`` (or plain function), a path to a
    ``.py``/``.sgl`` file, or source text. ``name`` keeps only that function."""
    func = getattr(program, "func", program)
    if callable(func) and not isinstance(program, str | os.PathLike):
        compiled = _compile_function(func, decorated=hasattr(program, "func"))
        if hasattr(program, "run"):
            compiled.function = program
        return compiled
    if isinstance(program, os.PathLike) or (isinstance(program, str) and _looks_like_path(program)):
        src = load_path(program)
    elif isinstance(program, str):
        src = parse("<string>", program)
    else:
        raise TypeError(
            f"cannot compile {type(program).__name__}: pass an SGL function, a path or source text"
        )
    return _compile_source(src, name)


def _looks_like_path(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    return text.endswith((".py", ".sgl")) or Path(text).is_file()


def _compile_function(func: Any, decorated: bool) -> CompiledProgram:
    src = load_function(func)
    file = getattr(getattr(func, "__code__", None), "co_filename", "<unknown>")
    if src is None:
        return CompiledProgram(ir.Module(file), source_available=False)
    if src.syntax_error is not None:
        return CompiledProgram(ir.Module(src.file), [src.syntax_error])
    node = find_function_at(src.tree, src.target_line)
    if node is None:
        return CompiledProgram(ir.Module(src.file), source_available=False)
    names = ApiNames(src.tree)
    diagnostics = []
    if not decorated and not any(names.is_sgl_decorator(d) for d in node.decorator_list):
        diagnostics.append(
            src.diagnostic(
                "error",
                f"'{node.name}' is not an SGL function (decorate it with @sgl.function)",
                node,
                end=False,
            )
        )
    fn_ir, found = _compile_one(src, names, node)
    return CompiledProgram(ir.Module(src.file, [fn_ir]), diagnostics + found)


def _compile_source(src: Source, name: str | None) -> CompiledProgram:
    if src.syntax_error is not None:
        return CompiledProgram(ir.Module(src.file), [src.syntax_error])
    names = ApiNames(src.tree)
    nodes = sgl_functions(src.tree, names)
    if name is not None:
        nodes = [n for n in nodes if n.name == name]
    if not nodes:
        what = f"no SGL function named '{name}'" if name else "no @sgl.function in this program"
        return CompiledProgram(ir.Module(src.file), [src.diagnostic_at("error", what, 1, 0)])
    module = ir.Module(src.file)
    diagnostics: list[Diagnostic] = []
    for node in nodes:
        fn_ir, found = _compile_one(src, names, node)
        module.functions.append(fn_ir)
        diagnostics += found
    return CompiledProgram(module, diagnostics)


def _compile_one(
    src: Source, names: ApiNames, node: ast.FunctionDef
) -> tuple[ir.FunctionDef, list[Diagnostic]]:
    diagnostics = FunctionChecker(src, names, node).run()
    diagnostics.sort(key=lambda d: (d.line, d.col))
    return Lowerer(src, names, node).lower(), diagnostics


class Lowerer(FunctionPass):
    """Lowers one function body to IR statements; Python it does not model stays ``Expr``."""

    def lower(self) -> ir.FunctionDef:
        params = [
            a.arg for a in self.fn.args.posonlyargs + self.fn.args.args + self.fn.args.kwonlyargs
        ]
        return ir.FunctionDef(
            self.fn.name, params, self.state, self.block(self.fn.body), self.loc(self.fn)
        )

    # --- helpers ---
    def loc(self, node: ast.AST) -> ir.Loc:
        line, col = self.src.position(node.lineno, node.col_offset)
        return ir.Loc(self.src.file, line, col)

    def text_of(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.src.text, node) or ast.unparse(node)

    def opaque(self, node: ast.AST) -> ir.Expr:
        return ir.Expr(self.text_of(node), self.loc(node))

    def block(self, stmts: list[ast.stmt]) -> list[Any]:
        out = []
        for stmt in stmts:
            lowered = self.visit(stmt)
            out.extend(lowered if isinstance(lowered, list) else [lowered])
        return out

    def is_target(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id == self.state or node.id in self.fork_groups
        return (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in self.fork_groups
        )

    def state_method(self, node: ast.expr) -> tuple[str, str] | None:
        """(target source, method) for ``s.method(...)`` / ``forks[i].method(...)``."""
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and self.is_target(node.func.value)
        ):
            return self.text_of(node.func.value), node.func.attr
        return None

    # --- statements ---
    def generic_visit(self, node: ast.AST) -> Any:
        return self.opaque(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> Any:
        if isinstance(node.op, ast.Add) and self.is_target(node.target):
            return ir.Append(self.text_of(node.target), self.parts(node.value), self.loc(node))
        return self.opaque(node)

    def visit_Expr(self, node: ast.Expr) -> Any:
        call = node.value
        method = self.state_method(call)
        if method is not None:
            target, name = method
            if name in ("gen", "select"):
                return ir.Append(target, [self.api_call(name, call)], self.loc(node))
            if name in ROLES and call.args:
                return ir.Append(
                    target,
                    [ir.RoleText(name, self.parts(call.args[0]), self.loc(call))],
                    self.loc(node),
                )
            if name == "join" and target in self.fork_groups:
                return self.join(target, call, node)
        return self.opaque(node)

    def join(self, forks: str, call: ast.Call, node: ast.AST) -> ir.Join:
        ok, mode = self.names.literal(first_arg(call, "mode"))
        return ir.Join(forks, mode if ok and isinstance(mode, str) else "gather_variable", self.loc(node))

    def visit_Assign(self, node: ast.Assign) -> Any:
        if len(node.targets) != 1:
            return self.opaque(node)
        target = node.targets[0]
        method = self.state_method(node.value)
        if isinstance(target, ast.Name) and method is not None and method[1] == "fork":
            self.fork_groups.add(target.id)
            call = node.value
            n_node = first_arg(call, "size")
            ok, n = self.names.literal(n_node)
            n_value = n if ok else (self.opaque(n_node) if n_node is not None else 1)
            return ir.Fork(target.id, method[0], n_value, self.loc(node))
        key = self.state_subscript(target)
        if key is not None:
            return ir.SetVar(self.var_name(key), self.value(node.value), self.state, self.loc(node))
        return ir.Assign(self.text_of(target), self.value(node.value), self.loc(node))

    def visit_With(self, node: ast.With) -> Any:
        if len(node.items) == 1 and node.items[0].optional_vars is None:
            method = self.state_method(node.items[0].context_expr)
            call = node.items[0].context_expr
            if method is not None and method[1] in ROLES and not call.args:
                return ir.Role(method[1], method[0], self.block(node.body), self.loc(node))
            if method is not None and method[1] == "var_scope" and call.args:
                return ir.VarScope(
                    self.var_name(call.args[0]), method[0], self.block(node.body), self.loc(node)
                )
        header = ", ".join(self.text_of(item) for item in node.items)
        return ir.With(ir.Expr(header, self.loc(node)), self.block(node.body), self.loc(node))

    def visit_If(self, node: ast.If) -> Any:
        return ir.If(
            self.opaque(node.test), self.block(node.body), self.block(node.orelse), self.loc(node)
        )

    def visit_For(self, node: ast.For) -> Any:
        return ir.For(
            self.text_of(node.target),
            self.opaque(node.iter),
            self.block(node.body),
            self.block(node.orelse),
            self.loc(node),
        )

    def visit_While(self, node: ast.While) -> Any:
        return ir.While(
            self.opaque(node.test), self.block(node.body), self.block(node.orelse), self.loc(node)
        )

    def visit_Return(self, node: ast.Return) -> Any:
        return ir.Return(self.value(node.value) if node.value is not None else None, self.loc(node))

    # --- values ---
    def value(self, node: ast.expr) -> Any:
        parts = self.parts(node)
        if len(parts) == 1:
            return parts[0]
        if any(not isinstance(p, ir.Expr) for p in parts):
            return ir.Concat(parts, self.loc(node))
        return self.opaque(node)

    def parts(self, node: ast.expr) -> list[Any]:
        """Flatten ``a + b + c`` into the parts an append executes one after another."""
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.parts(node.left) + self.parts(node.right)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [ir.Text(node.value, self.loc(node))]
        key = self.state_subscript(node)
        if key is not None:
            return [ir.VarRef(self.var_name(key), self.state, self.loc(node))]
        if isinstance(node, ast.Call):
            api = self.names.api_name(node.func)
            if api in SIGNATURES:
                return [self.api_call(api, node)]
            if api in ROLES:
                inner = self.parts(node.args[0]) if node.args else []
                return [ir.RoleText(api, inner, self.loc(node))]
            if api and api.endswith(("_begin", "_end")) and api.rsplit("_", 1)[0] in ROLES:
                role, edge = api.rsplit("_", 1)
                return [ir.RoleMarker(role, edge == "begin", self.loc(node))]
        return [self.opaque(node)]

    def var_name(self, node: ast.expr) -> str | ir.Expr:
        ok, value = self.names.literal(node)
        return value if ok and isinstance(value, str) else self.opaque(node)

    def api_call(self, api: str, node: ast.Call) -> Any:
        positional, _ = SIGNATURES[api]
        args: dict[str, Any] = {}
        for i, arg in enumerate(node.args[: len(positional)]):
            args[positional[i]] = self.arg_value(arg)
        for kw in node.keywords:
            args[kw.arg or "**"] = self.arg_value(kw.value)
        name = args.pop("name", None)
        if api == "select" or "choices" in args:
            choices = args.pop("choices", [])
            return ir.Select(name, choices, args, self.loc(node))
        return ir.Gen(name, args, api, self.loc(node))

    def arg_value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Name) and node.id in ("int", "float", "str", "bool"):
            return ir.Expr(node.id, self.loc(node))  # dtype=int etc.
        if isinstance(node, ast.Name) and node.id in self.names.constants:
            return self.opaque(node)  # keep the constant's name, it reads better
        ok, value = self.names.literal(node)
        return value if ok else self.opaque(node)
