"""GBNF (llama.cpp) and transformers-cfg EBNF grammar text -> the grammar IR.

The language is tiny: ``name ::= alternatives`` rules, ``|``, ``( )``, ``*``, ``+``,
``?``, ``{m}``/``{m,}``/``{m,n}``, string literals with escapes (``\\xNN``, ``\\uNNNN``,
``\\UNNNNNNNN``, ``\\t \\r \\n \\\\ \\"`` ...), character classes ``[^a-z\\n]``, ``.``
(any character), ``#`` comments, and rule references. A rule ends at a newline unless
the newline is inside parentheses or follows ``::=`` or ``|``. transformers-cfg's EBNF
files are the same language (its parser is a port of llama.cpp's).

These grammars are character-level, but the matcher lexes greedily: a lexeme ends only
when the next byte cannot extend it. So every character piece becomes its own
single-character lexeme, which is always exact, and a regular part of the grammar
(one that does not recurse) is merged into one multi-character lexeme only where that
is provably exact:

1. no other lexeme that may be allowed at the same place starts with a character the
   merged lexeme may start with (checked on FOLLOW sets, which over-approximate
   "allowed at the same place"), and
2. no lexeme that may follow it starts with a byte that could extend a complete match
   of it (so greedy lexing stops exactly where the grammar wants).

Merging is tried from the largest regular parts down, and any part that breaks a
condition is split into its pieces until the whole grammar passes.
"""

from __future__ import annotations

from .errors import ConstraintError
from .gbnf_lower import MAX_CHECKED_LEXEMES, MAX_NESTED_COPIES, _Lowering  # noqa: F401 (limits, documented here)
from .gbnf_parse import GAlt, GChars, GExpr, GRef, GRep, GSeq, _Parser  # noqa: F401 (re-exported)
from .grammar import Grammar


def gbnf_grammar(text: str, start: str = "root") -> Grammar:
    """Compile llama.cpp GBNF ``text`` into the grammar IR, starting at rule ``start``.

    Raises ``ConstraintError`` with ``line L, column C`` for syntax errors and for
    references to undefined rules.
    """
    return _compile(text, start, "gbnf")


def ebnf_grammar(text: str, start: str = "root") -> Grammar:
    """Compile a transformers-cfg EBNF grammar (GBNF's dialect) into the grammar IR."""
    return _compile(text, start, "ebnf")


def parse_rules(text: str, dialect: str = "gbnf") -> dict[str, GExpr]:
    """The rules of a GBNF (``dialect="gbnf"``) or EBNF (``"ebnf"``) text by name, as
    parsed, before lowering; syntax errors raise ``ConstraintError`` with the line."""
    return _Parser(text, dialect).parse()


def _compile(text: str, start: str, dialect: str) -> Grammar:
    rules = parse_rules(text, dialect)
    if start not in rules:
        raise ConstraintError(f"{dialect.upper()} grammar has no {start!r} rule")
    return _Lowering(rules, start, dialect).run()
