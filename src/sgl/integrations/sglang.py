"""SGL's constraint engine as an SGLang grammar backend.

::

    from sgl.integrations.sglang import register
    register()            # SGLang's register_grammar_backend("sgl", ...)
    # then run SGLang with grammar_backend="sgl" (in the process that runs the scheduler)

`SGLGrammarBackend` compiles SGLang's constraint keys (``json``: a JSON Schema or
``$$ANY$$``; ``regex``; ``ebnf``: GBNF-style rules) into `SGLGrammarObject` s, which
implement SGLang's ``BaseGrammarObject``: accept_token, rollback, is_terminated, copy,
allocate/fill/move/apply_vocab_mask and jump-forward (try_jump_forward,
jump_forward_str_state, jump_and_retokenize). Structural tags are not supported (the
request fails as an invalid grammar). SGLang is imported only when installed, for its
base classes, and by `register`.
"""

from __future__ import annotations

import logging
from typing import Any

from sgl.constrain import CompiledGrammar, ConstraintError, Vocabulary, apply_bitmask
from sgl.integrations._common import EndTracking, compile_constraint

log = logging.getLogger(__name__)

try:  # subclass SGLang's classes when it is there; the methods are the same without it
    from sglang.srt.constrained import base_grammar_backend as _sglang
except ImportError:  # SGLang is not installed
    _sglang = None

_BaseObject: Any = _sglang.BaseGrammarObject if _sglang else object
_BaseBackend: Any = _sglang.BaseGrammarBackend if _sglang else object

ANY_JSON = "$$ANY$$"  # SGLang's key for "any JSON value" (response_format json_object)


class SGLGrammarObject(EndTracking, _BaseObject):
    """One request's constraint state, as SGLang's scheduler and sampler use it."""

    def __init__(self, compiled: CompiledGrammar) -> None:
        super().__init__(compiled)
        self.compiled = compiled
        self.finished = False

    # -- state ---------------------------------------------------------------------
    def accept_token(self, token: int) -> None:
        """Advance over ``token``; `ConstraintError` if the constraint forbids it."""
        if not self._take(int(token)):
            raise ConstraintError(f"token {token} is not allowed by the constraint here")

    def copy(self) -> SGLGrammarObject:
        """A fresh object for the same constraint, at its start (SGLang caches compiled
        grammars and hands each request a copy)."""
        return SGLGrammarObject(self.compiled)

    # -- masks -----------------------------------------------------------------------
    def allocate_vocab_mask(self, vocab_size: int, batch_size: int, device: Any) -> Any:
        """A CPU int32 bitmask ``(batch_size, ceil(vocab_size / 32))``, all allowed, so rows
        of requests without a grammar stay unconstrained."""
        import torch

        return torch.full((batch_size, (vocab_size + 31) // 32), -1, dtype=torch.int32)

    def fill_vocab_mask(self, vocab_mask: Any, idx: int) -> None:
        self.matcher.fill_bitmask(vocab_mask, idx)

    @staticmethod
    def move_vocab_mask(vocab_mask: Any, device: Any) -> Any:
        # The mask stays on the CPU: apply_bitmask expands its bits there and moves the
        # boolean mask to the logits' device in one copy.
        return vocab_mask

    @staticmethod
    def apply_vocab_mask(logits: Any, vocab_mask: Any) -> None:
        """Set the logits of disallowed tokens to -inf, in place."""
        apply_bitmask(logits, vocab_mask.cpu() if hasattr(vocab_mask, "cpu") else vocab_mask)

    # -- jump-forward ------------------------------------------------------------------
    def try_jump_forward(self, tokenizer: Any) -> tuple[list[int], str] | None:
        """``([], text)`` when the constraint forces ``text`` next, else None."""
        text = self.forced_text()
        return ([], text) if text else None

    def jump_forward_str_state(self, helper: tuple[list[int], str]) -> tuple[str, int]:
        return helper[1], -1

    def jump_and_retokenize(self, old_output_ids: list[int], new_output_ids: list[int],
                            next_state: int) -> None:
        """The output was re-tokenized with the forced text appended: roll back to the
        common prefix of the old and new token ids, then accept the new ones."""
        common = 0
        for old, new in zip(old_output_ids, new_output_ids, strict=False):
            if old != new:
                break
            common += 1
        self.rollback(len(old_output_ids) - common)
        for t in new_output_ids[common:]:
            self.accept_token(t)


class SGLGrammarBackend(_BaseBackend):
    """SGLang's grammar backend over `sgl.constrain`.

    ``tokenizer``: the model's (transformers) tokenizer; ``vocab_size``: the model's
    logit count; ``eos_token_ids``: the ids that end generation (default: the
    tokenizer's); ``compact_json``: JSON without free whitespace.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Any = None,
                 compact_json: bool = False) -> None:
        if _sglang is not None:
            super().__init__()
        eos = sorted(int(t) for t in eos_token_ids) if eos_token_ids else None
        self.vocab = Vocabulary.from_tokenizer(tokenizer, int(vocab_size), eos_token_ids=eos)
        self.json_options = {"whitespace": "compact"} if compact_json else {}

    def _compile(self, kind: str, key: str, **args: Any) -> SGLGrammarObject | None:
        try:
            return SGLGrammarObject(compile_constraint(self.vocab, json_options=self.json_options, **args))
        except (ConstraintError, TypeError) as e:
            return self._invalid(kind, key, str(e))

    def _invalid(self, kind: str, key: str, why: str) -> Any:
        log.warning("sgl: invalid %s constraint %.200r: %s", kind, key, why)
        invalid = getattr(_sglang, "InvalidGrammarObject", None)
        return invalid(f"{kind}: {why}") if invalid is not None else None

    def dispatch_json(self, key_string: str) -> SGLGrammarObject | None:
        schema: Any = True if key_string == ANY_JSON else key_string
        return self._compile("json", key_string, json_schema=schema)

    def dispatch_regex(self, key_string: str) -> SGLGrammarObject | None:
        return self._compile("regex", key_string, regex=key_string)

    def dispatch_ebnf(self, key_string: str) -> SGLGrammarObject | None:
        return self._compile("ebnf", key_string, grammar=key_string, grammar_syntax="gbnf")

    def dispatch_structural_tag(self, key_string: str) -> Any:
        return self._invalid("structural_tag", key_string, "structural tags are not supported by SGL")


def create_backend(*args: Any, **kwargs: Any) -> SGLGrammarBackend:
    """The factory SGLang's ``create_grammar_backend`` calls for ``grammar_backend="sgl"``.

    Takes SGLang's ``(server_args, tokenizer, vocab_size, eos_token_ids)`` positionally,
    or the same by keyword.
    """
    names = ("server_args", "tokenizer", "vocab_size", "eos_token_ids")
    given = dict(zip(names, args, strict=False)) | kwargs
    server_args = given.get("server_args")
    compact = given.get("constrained_json_disable_any_whitespace",
                        getattr(server_args, "constrained_json_disable_any_whitespace", False))
    return SGLGrammarBackend(given["tokenizer"], given["vocab_size"], given.get("eos_token_ids"),
                             compact_json=bool(compact))


def register(name: str = "sgl") -> None:
    """Register SGL with SGLang as grammar backend ``name`` (needs SGLang installed)."""
    from sglang.srt.constrained.base_grammar_backend import register_grammar_backend

    register_grammar_backend(name, create_backend)
