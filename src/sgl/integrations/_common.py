"""What the integrations share: one constraint argument set, compiled for a vocabulary,
and the state of one request's constraint as SGLang's and vLLM's grammar objects keep it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sgl.constrain import (
    CompiledGrammar,
    ConstraintError,
    Matcher,
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


class EndTracking:
    """A request's `Matcher`, and whether the text ended (EOS accepted) after each token.

    The part of SGLang's and vLLM's grammar objects that is the same: ``is_terminated``
    is true only once EOS has been accepted (before that the mask still matters: it may
    allow only EOS).
    """

    def __init__(self, compiled: CompiledGrammar) -> None:
        super().__init__()  # SGLang's / vLLM's base class, when installed
        self.matcher = Matcher(compiled)
        self._eos = frozenset(compiled.vocab.eos_token_ids)
        self._ended: list[bool] = [False]  # per accepted token: did the text end there?

    def _take(self, token: int) -> bool:
        """Advance over ``token``; False (nothing changed) when the constraint refuses it."""
        if not self.matcher.advance(token):
            return False
        self._ended.append(token in self._eos)
        return True

    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens."""
        self.matcher.rollback(num_tokens)
        if num_tokens:
            del self._ended[-num_tokens:]

    def is_terminated(self) -> bool:
        """Has EOS been accepted?"""
        return self._ended[-1]

    def forced_text(self) -> str | None:
        """The text the constraint forces next (jump-forward), or None."""
        return None if self.is_terminated() else text_of(self.matcher.forced_bytes())
