"""What the integrations share: one constraint argument set, compiled for a vocabulary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sgl.constrain import (
    CompiledGrammar,
    ConstraintError,
    Vocabulary,
    compile_spec,
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
    from sgl.types import ConstraintSpec

    spec = ConstraintSpec(regex=regex, json_schema=json_schema, grammar=grammar,
                          grammar_syntax=grammar_syntax, choices=choices)
    given = [k for k in ("json_schema", "regex", "grammar", "choices") if getattr(spec, k) is not None]
    if len(given) != 1:
        raise ConstraintError(
            "give exactly one of json_schema, regex, grammar, choices"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if isinstance(choices, str) or (choices is not None and not choices):
        raise ConstraintError("choices must be a non-empty list of strings")
    return compile_spec(spec, vocab, json_options=dict(json_options or {}))


def text_of(data: bytes) -> str | None:
    """``data`` up to its last whole UTF-8 character, as text; None when that is empty."""
    from sgl.constrain.matcher import utf8_prefix

    text = utf8_prefix(data).decode("utf-8")
    return text or None
