"""What the integrations share: one constraint argument set, compiled for a vocabulary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sgl.constrain import (
    CompiledGrammar,
    ConstraintError,
    Vocabulary,
    compile_choices,
    compile_grammar,
    compile_json_schema,
    compile_regex,
)


def compile_constraint(
    vocab: Vocabulary | None,
    *,
    json_schema: Any = None,
    regex: str | None = None,
    grammar: str | None = None,
    grammar_syntax: str = "lark",
    choices: Sequence[str] | None = None,
    json_options: Mapping[str, Any] | None = None,
) -> CompiledGrammar:
    """Compile exactly one constraint for ``vocab`` (None: text only, to validate it).

    ``json_schema``: a dict, JSON text, ``True`` (any JSON value) or a pydantic model
    class; ``grammar`` is Lark, GBNF or EBNF text (``grammar_syntax``). ``json_options``
    go to `compile_json_schema` (e.g. ``{"whitespace": "compact"}``).
    """
    from sgl.lang.expr import schema_of

    given = [name for name, value in (("json_schema", json_schema), ("regex", regex),
                                      ("grammar", grammar), ("choices", choices)) if value is not None]
    if len(given) != 1:
        raise ConstraintError(
            "give exactly one of json_schema, regex, grammar, choices"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if json_schema is not None:
        schema = json_schema if isinstance(json_schema, bool) else schema_of(json_schema)
        assert schema is not None  # json_schema is not None here
        return compile_json_schema(schema, vocab, **dict(json_options or {}))
    if regex is not None:
        return compile_regex(regex, vocab)
    if grammar is not None:
        return compile_grammar(grammar, vocab, syntax=grammar_syntax)
    if isinstance(choices, str) or not choices:
        raise ConstraintError("choices must be a non-empty list of strings")
    return compile_choices(list(choices), vocab)


def guess_grammar_syntax(text: str) -> str:
    """``"gbnf"`` for GBNF/EBNF text (``name ::= ...`` rules), else ``"lark"``."""
    return "gbnf" if "::=" in text else "lark"


def text_of(data: bytes) -> str | None:
    """``data`` up to its last whole UTF-8 character, as text; None when that is empty."""
    from sgl.constrain.matcher import utf8_prefix

    text = utf8_prefix(data).decode("utf-8")
    return text or None
