"""The public compile functions, with a small cache keyed by content and vocabulary."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence

from .compiled import CompiledGrammar, choices_grammar
from .errors import ConstraintError

_CACHE_SIZE = 64
_cache: OrderedDict = OrderedDict()
_cache_lock = threading.Lock()


def _cached(key, build) -> CompiledGrammar:
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    compiled = build()
    with _cache_lock:
        _cache[key] = compiled
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return compiled


def _vocab_key(vocab) -> str:
    return "" if vocab is None else getattr(vocab, "fingerprint", str(id(vocab)))


def compile_regex(pattern: str, vocab=None) -> CompiledGrammar:
    """Compile a Python ``re`` pattern (whole-text match, as ``re.fullmatch``)."""
    from .regex import regex_grammar

    if not isinstance(pattern, str):
        raise ConstraintError(f"regex must be a string, not {type(pattern).__name__}")
    return _cached(("regex", pattern, _vocab_key(vocab)), lambda: CompiledGrammar(regex_grammar(pattern), vocab))


def compile_json_schema(schema, vocab=None, **options) -> CompiledGrammar:
    """Compile a JSON Schema (dict, JSON text or bool). See ``json_schema.json_schema_grammar``."""
    from .json_schema import json_schema_grammar

    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"schema is not valid JSON: {e.msg}", f"line {e.lineno}, column {e.colno}") from e
    key = ("json", json.dumps(schema, sort_keys=True), json.dumps(options, sort_keys=True, default=str), _vocab_key(vocab))
    return _cached(key, lambda: CompiledGrammar(json_schema_grammar(schema, **options), vocab))


def compile_grammar(text: str, vocab=None, syntax: str = "lark", start: str | None = None) -> CompiledGrammar:
    """Compile a context-free grammar in Lark, GBNF (llama.cpp) or EBNF syntax."""
    if syntax == "lark":
        from .lark_grammar import lark_grammar as frontend

        default_start = "start"
    elif syntax == "gbnf":
        from .gbnf import gbnf_grammar as frontend

        default_start = "root"
    elif syntax == "ebnf":
        from .gbnf import ebnf_grammar as frontend

        default_start = "root"
    else:
        raise ConstraintError(f"unknown grammar syntax {syntax!r} (use 'lark', 'gbnf' or 'ebnf')")
    start = start or default_start
    key = ("grammar", syntax, text, start, _vocab_key(vocab))
    return _cached(key, lambda: CompiledGrammar(frontend(text, start=start), vocab))


def compile_choices(choices: Sequence[str], vocab=None) -> CompiledGrammar:
    """Compile a list of alternative strings; the output is exactly one of them."""
    return _cached(("choices", tuple(choices), _vocab_key(vocab)), lambda: CompiledGrammar(choices_grammar(list(choices)), vocab))
