"""JSON Schema (draft 2020-12 and draft-07 spellings) -> grammar IR.

``json_schema_grammar(schema)`` returns a ``Grammar`` whose language is the JSON
texts valid against the schema (with a bounded-whitespace layout). How:

1. Every (sub)schema becomes ``Facets``: the set of values it allows, split by JSON
   type. Scalars are exact sets (number intervals, a string-language expression,
   booleans, null); arrays and objects are lists of ``ArraySpec``/``ObjectSpec``
   whose element/property schemas stay *references* (``Sub``/``SAnd``/``SNot``), so
   recursive ``$ref``\\ s become recursive nonterminals. ``allOf`` intersects facets,
   ``anyOf`` unites them, ``not`` complements them (where the complement is
   expressible), ``oneOf`` is a union when the branches are disjoint (else
   ``A∧¬B ∨ ¬A∧B``), ``if``/``then``/``else`` is ``(if∧then) ∨ (¬if∧else)``.
2. Facets become rules: one lexeme per scalar set (a whole JSON string, quotes
   included, with pattern/format/length/enum folded in; a number with its bounds
   encoded exactly, see ``automata.ranges``), literal lexemes for keys, and punctuation
   lexemes with the bounded whitespace merged in.

Greedy lexing is exact by construction: a number is never followed by a lexeme that
starts with a digit, ``.``, ``e`` or a sign; a string lexeme ends at its closing quote;
whitespace is merged only *after* ``{ [ , :`` and *before* ``} ] , :``.

A keyword that cannot be honoured raises ``ConstraintError(message, location=<JSON
pointer>, keyword=...)``; with ``lenient=True`` the keyword is dropped instead (the
output may then violate it) and a warning is recorded (``warnings`` list, and
``warnings.warn``); ``lenient={"uniqueItems", ...}`` does so for the named keywords
only. Never silently ignored. Unknown keywords and unknown ``format``
values are annotations and are ignored, as validators do.

Layout of this package (one concern per module): ``common`` (budgets, options,
helpers), ``refs`` (schema handles, ``$ref`` resolution), ``facets`` (facets and
their algebra), ``keywords`` (keywords to facets), ``values`` (``enum``/``const``),
``emit_scalars``/``emit_arrays``/``emit_objects`` (grammar rules), ``compiler``
(the class that joins them). String languages live in ``constrain/json_strings.py``,
formats in ``constrain/json_formats.py``, the derivative automaton construction in
``constrain/automata/derivatives.py``.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterable

from ..errors import CompileBudgetExceeded, ConstraintError
from ..grammar import Grammar
from .common import MAX_SCHEMA_BYTES, Options
from .compiler import JsonSchemaCompiler

__all__ = ["MAX_SCHEMA_BYTES", "JsonSchemaCompiler", "json_schema_grammar"]


def json_schema_grammar(
    schema: dict | str | bool,
    *,
    any_order: bool = False,
    lenient: bool | Iterable[str] = False,
    whitespace: str = "flexible",
    max_whitespace: int = 8,
    warnings: list | None = None,
    track_keys: bool = False,
    max_fraction_digits: int | None = None,
    numbers: str = "json",
    text_size: int | None = None,
) -> Grammar:
    """The grammar IR of the JSON texts valid against ``schema``.

    ``schema`` is a dict, a bool, or JSON text. Declared properties may come in any order
    (each at most once) while an object's budget allows it: every member free for up to
    about 8 members, else the required ones and as many optional ones as fit, the others
    in schema order among themselves (with a note in ``warnings``); ``any_order`` raises
    the budget. Other keys are allowed between them
    (docs/json_schema_objects.md). A declared key never comes twice; a key that only
    ``additionalProperties``/``patternProperties`` allow can (no context-free grammar
    can track an unbounded set of names; llguidance and XGrammar neither). ``whitespace="compact"`` accepts exactly ``json.dumps``' default separators
    (``", "`` and ``": "``, no newlines); ``"flexible"`` accepts up to
    ``max_whitespace`` spaces/tabs, or one newline plus up to ``4*max_whitespace``
    spaces/tabs, after ``{ [ , :`` and before ``} ] , :`` (``json.dumps(indent=2)``
    output up to depth 16); a root ``"x-guidance": {"whitespace_flexible": false}`` (llguidance's
    spelling) asks for compact from inside the schema. ``lenient=True`` turns refusals into warnings (appended to
    ``warnings`` and issued with ``warnings.warn``), dropping the keyword (the output may
    then violate it, as llguidance's ``lenient``); ``lenient`` may instead name the keywords
    to relax, e.g. ``lenient=["uniqueItems"]`` (arrays of objects or free strings cannot be
    kept unique by a grammar); otherwise an unsupported keyword
    raises ``ConstraintError`` with its JSON pointer. Budgets raise
    ``CompileBudgetExceeded``.

    ``max_fraction_digits=N`` (opt-in; default None, JSON's unbounded digits) accepts only
    number spellings with at most ``N`` digits after the decimal point (the exponent
    form stays): a small model that keeps appending zeros (``10.000000000…``, valid JSON
    and, with ``multipleOf: 0.01``, a valid multiple) then has to stop. Values that need
    more digits (``multipleOf: 1e-9``, an ``enum`` of ``0.1234567``) can then be written
    only in exponent form or not at all, so it changes which JSON is accepted and is off
    unless asked for.

    ``numbers="canonical"`` (opt-in; default ``"json"``, every spelling JSON has) accepts
    each number only in its shortest plain spelling: ``25``, ``175``, ``-0.5``, not
    ``25.0``, ``1.75e2`` or ``-0`` (every value keeps one spelling, so no value is lost).
    For generation: ``type: integer`` then comes out as an integer literal, as from
    llguidance or XGrammar, and a small model cannot wander into ``1.75`` (only ``e2``
    would end it) or ``25.000…``. A root ``"x-sgl": {"numbers": "canonical"}`` asks for it
    from inside the schema.

    ``track_keys=True`` hands "no declared key twice" to the parser (the grammar's
    ``unique_keys``, which ``CompiledGrammar`` honours; ``compile_json_schema`` sets it):
    every optional member then comes in any order at any object size, required ones as
    above. Leave it off for a grammar used by anything else (e.g. inside another grammar).

    ``text_size``: the length of ``json.dumps(schema)`` where the caller has it already
    (``compile_json_schema`` spells the schema for its cache key), for the size budget;
    otherwise the schema is spelled again here to measure it.
    """
    if whitespace not in ("flexible", "compact"):
        raise ConstraintError(f"whitespace must be 'flexible' or 'compact', not {whitespace!r}")
    if not isinstance(max_whitespace, int) or max_whitespace < 0:
        raise ConstraintError("max_whitespace must be a non-negative integer")
    if max_fraction_digits is not None and (not isinstance(max_fraction_digits, int)
                                            or isinstance(max_fraction_digits, bool) or max_fraction_digits < 0):
        raise ConstraintError(f"max_fraction_digits must be a non-negative integer, not {max_fraction_digits!r}")
    if isinstance(schema, str):
        if len(schema) > MAX_SCHEMA_BYTES:
            raise CompileBudgetExceeded(f"schema text is larger than {MAX_SCHEMA_BYTES} bytes")
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"schema is not valid JSON: {e.msg}", f"line {e.lineno}, column {e.colno}") from None
    if not isinstance(schema, dict | bool):
        raise ConstraintError(f"a schema must be an object or a boolean, not {type(schema).__name__}", "#")
    if isinstance(schema, dict) and (len(json.dumps(schema)) if text_size is None else text_size) > MAX_SCHEMA_BYTES:
        raise CompileBudgetExceeded(f"schema is larger than {MAX_SCHEMA_BYTES} bytes")
    whitespace = _schema_whitespace(schema, whitespace)
    numbers = _schema_numbers(schema, numbers)
    opts = Options(any_order, _lenient_option(lenient), whitespace, max_whitespace, warnings, track_keys,
                   max_fraction_digits, numbers)
    # millions of small immutable nodes: the cyclic GC would rescan them over and over
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return JsonSchemaCompiler(schema, opts).build()
    finally:
        if was_enabled:
            gc.enable()


def _lenient_option(lenient) -> bool | frozenset:
    """``lenient`` as True/False or a frozenset of keyword names."""
    if isinstance(lenient, bool):
        return lenient
    if isinstance(lenient, str) or not isinstance(lenient, Iterable) or not all(isinstance(k, str) for k in lenient):
        raise ConstraintError("lenient must be true/false or a list of keyword names, e.g. ['uniqueItems']")
    return frozenset(lenient)


def _schema_numbers(schema: dict | bool, default: str) -> str:
    """The number spelling asked for: ``"x-sgl": {"numbers": ...}`` at the schema's
    root, else ``default``; either must be ``"json"`` or ``"canonical"``."""
    ext = schema.get("x-sgl") if isinstance(schema, dict) else None
    where = "numbers"
    if isinstance(ext, dict) and "numbers" in ext:
        default, where = ext["numbers"], "#/x-sgl/numbers"
    if default not in ("json", "canonical"):
        raise ConstraintError(f"numbers must be 'json' or 'canonical', not {default!r}", where)
    return default


def _schema_whitespace(schema: dict | bool, default: str) -> str:
    """The whitespace style a schema asks for itself, llguidance's way:
    ``"x-guidance": {"whitespace_flexible": false}`` at the root means compact.

    It lets a schema travel with its style through APIs that take only a schema (a
    program's ``gen(json_schema=...)``, an OpenAI ``response_format``).
    """
    ext = schema.get("x-guidance") if isinstance(schema, dict) else None
    if not isinstance(ext, dict) or "whitespace_flexible" not in ext:
        return default
    flexible = ext["whitespace_flexible"]
    if not isinstance(flexible, bool):
        raise ConstraintError("whitespace_flexible must be true or false", "#/x-guidance/whitespace_flexible")
    return "flexible" if flexible else "compact"
