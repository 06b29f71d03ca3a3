"""The values that ``sgl.gen``, ``sgl.select``, ``sgl.user`` ... return at run time.

Appending one to a state (``s += expr``) executes it. Expressions concatenate with
strings and with each other (``"A:" + sgl.gen("x")``), as in SGLang.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .choices import ChoicesSamplingMethod, method_name
from .dtypes import normalize_dtype

GRAMMAR_SYNTAXES = ("lark", "gbnf", "ebnf")


class SglExpr:
    """Base of everything a program can append to its state."""

    def __add__(self, other: Any) -> ExprList:
        return ExprList(_items(self) + _items(_as_expr(other)))

    def __radd__(self, other: Any) -> ExprList:
        return ExprList(_items(_as_expr(other)) + _items(self))


def _as_expr(value: Any) -> SglExpr:
    if isinstance(value, SglExpr):
        return value
    if isinstance(value, str):
        return Constant(value)
    raise TypeError(
        f"cannot concatenate {type(value).__name__} with an SGL expression; use str(...)"
    )


def _items(expr: SglExpr) -> list[SglExpr]:
    return list(expr.items) if isinstance(expr, ExprList) else [expr]


@dataclass(eq=False)
class ExprList(SglExpr):
    items: list[SglExpr]

    @property
    def expr_list(self) -> list[SglExpr]:
        """SGLang's name for ``items``."""
        return self.items


def _flatten(expr: SglExpr) -> list[SglExpr]:
    if isinstance(expr, ExprList):
        return [leaf for item in expr.items for leaf in _flatten(item)]
    return [expr]


@dataclass(eq=False)
class Constant(SglExpr):
    value: str


@dataclass(eq=False)
class GenExpr(SglExpr):
    """One generation call; None fields inherit the run's defaults."""

    name: str | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    stop_token_ids: tuple[int, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    regex: str | None = None
    json_schema: dict | str | None = None
    grammar: str | None = None
    grammar_syntax: str = "lark"
    dtype: str | None = None
    timeout: float | None = None
    sampler: Any = None  # generates instead of the backend (e.g. an OptimalSampler)
    n: int | None = None  # SGLang: n samples, the variable becomes a list
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    ignore_eos: bool | None = None
    repetition_penalty: float | None = None
    stop_regex: Any = None  # a pattern or a list of them
    return_logprob: bool | None = None
    logprob_start_len: int | None = None
    top_logprobs_num: int | None = None
    return_text_in_logprobs: bool | None = None
    # the pydantic model class given as json_schema= or dtype=: the value is parsed into it
    # (`ProgramState.parsed`); with dtype= the variable holds the instance, not the text
    model: Any = field(default=None, repr=False)
    value_is_model: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.n is not None and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ValueError(f"n must be a positive integer, got {self.n!r}")
        if self.max_tokens is not None and self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if self.stop is not None:
            self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if self.stop_token_ids is not None:
            self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        if is_model_class(self.dtype):  # dtype=Model: JSON under the model's schema, stored parsed
            if self.json_schema is not None:
                raise ValueError("gen accepts at most one of regex, json_schema, grammar, dtype "
                                 "(got json_schema, dtype)")
            self.json_schema, self.dtype, self.value_is_model = self.dtype, None, True
        if is_model_class(self.json_schema):
            self.model = self.json_schema
        self.json_schema = schema_of(self.json_schema)
        self.dtype = normalize_dtype(self.dtype)
        if self.grammar_syntax not in GRAMMAR_SYNTAXES:
            raise ValueError(
                f"grammar_syntax must be one of {', '.join(GRAMMAR_SYNTAXES)}, not {self.grammar_syntax!r}"
            )
        given = [
            k for k in ("regex", "json_schema", "grammar", "dtype") if getattr(self, k) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"gen accepts at most one of regex, json_schema, grammar, dtype (got {', '.join(given)})"
            )


@dataclass(eq=False)
class SelectExpr(SglExpr):
    """Pick one of ``choices`` by scoring each continuation."""

    name: str | None
    choices: list[str]
    temperature: float = 0.0
    method: str = "token_length_normalized"
    seed: int | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.choices is None or len(self.choices) == 0:
            raise ValueError("select needs at least one choice")
        bad = [c for c in self.choices if not isinstance(c, str)]
        if bad:
            raise TypeError(f"select choices must be strings, got {bad[0]!r}")
        self.choices = list(self.choices)
        self.method = method_name(self.method)


@dataclass(eq=False)
class RoleBegin(SglExpr):
    role: str


@dataclass(eq=False)
class RoleEnd(SglExpr):
    role: str


@dataclass(eq=False)
class VarScopeBegin(SglExpr):
    name: str


@dataclass(eq=False)
class VarScopeEnd(SglExpr):
    name: str


class SeparateReasoning(SglExpr):
    """After ``expr`` ran: split each of its gen/select values into the answer (kept in
    the variable and the text) and the reasoning (``<name>_reasoning_content``)."""

    def __init__(self, model_type: str | None, expr: SglExpr) -> None:
        self.model_type = model_type
        self.expr = expr
        self.name: str | None = None
        for item in self.targets():
            self.name = self.process_name_for_reasoning(item.name)

    @staticmethod
    def process_name_for_reasoning(name: str) -> str:
        from .reasoning import REASONING_SUFFIX

        return f"{name}{REASONING_SUFFIX}"

    def targets(self) -> list[GenExpr | SelectExpr]:
        """The named gen/select expressions whose values are split."""
        return [i for i in _flatten(self.expr) if isinstance(i, GenExpr | SelectExpr) and i.name is not None]

    def __repr__(self) -> str:
        return f"SeparateReasoning(model_type={self.model_type}, name={self.name})"


@dataclass(eq=False)
class ConcatAndAppend(SglExpr):
    """Append the text each fork added since the fork point (``join("concate_and_append")``)."""

    states: list[Any] = field(default_factory=list)


def is_model_class(obj: Any) -> bool:
    """Whether ``obj`` is a pydantic model class (it has a schema and parses JSON)."""
    return isinstance(obj, type) and callable(getattr(obj, "model_json_schema", None)) \
        and callable(getattr(obj, "model_validate_json", None))


def schema_of(schema: Any) -> dict | str | None:
    """A JSON Schema from a dict, a JSON string or a pydantic model class."""
    if schema is None or isinstance(schema, dict | str):
        return schema
    to_schema = getattr(schema, "model_json_schema", None)
    if callable(to_schema):
        return to_schema()
    raise TypeError(
        f"json_schema must be a dict, a JSON string or a pydantic model class, not {type(schema).__name__}"
    )


__all__ = [
    "ChoicesSamplingMethod",
    "ConcatAndAppend",
    "Constant",
    "ExprList",
    "GenExpr",
    "RoleBegin",
    "RoleEnd",
    "SelectExpr",
    "SeparateReasoning",
    "SglExpr",
    "VarScopeBegin",
    "VarScopeEnd",
]
