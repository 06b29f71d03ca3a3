"""Number lexemes compiled by the position automaton (``automata.numbers``): the same minimal
DFA as the general construction, and exponent forms under ``multipleOf``."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sgl.constrain import ConstraintError, compile_json_schema
from sgl.constrain.automata.compiler import general_dfa, to_dfa
from sgl.constrain.automata.numbers import MAX_POSITIONS, NumberLexeme, number_lexeme, position_dfa
from sgl.constrain.automata.ranges import NumPiece, number_regex
from sgl.constrain.regex_ast import Alt, chars, literal, repeat, seq


def canonical(dfa) -> tuple:
    """The DFA with states numbered in breadth-first order from the start: equal for
    two minimal DFAs exactly when their languages are equal."""
    order, rows, queue = {0: 0}, [], [0]
    for s in queue:
        row = []
        for t in dfa.table[s].tolist():
            if t >= 0 and t not in order:
                order[t] = len(order)
                queue.append(t)
            row.append(order[t] if t >= 0 else -1)
        rows.append(tuple(row))
    return tuple(rows), tuple(bool(dfa.accepting[s]) for s in queue)


_DECIMALS = st.one_of(
    st.integers(-10**7, 10**7).map(Decimal),
    st.tuples(st.integers(-10**6, 10**6), st.integers(0, 6)).map(lambda t: Decimal(t[0]).scaleb(-t[1])),
    st.sampled_from(["0", "1E+20", "-1E+20", "1E-9", "0.5", "-0.5"]).map(Decimal),
)


@st.composite
def pieces(draw) -> NumPiece:
    lo = draw(st.one_of(st.none(), _DECIMALS))
    hi = draw(st.one_of(st.none(), _DECIMALS))
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    kind = draw(st.sampled_from(["any", "scale", "nonint"]))
    scale = draw(st.integers(0, 4)) if kind == "scale" else 0
    return NumPiece(lo, hi, draw(st.booleans()), draw(st.booleans()), kind, scale)


@settings(max_examples=150, deadline=None)
@given(pieces())
def test_position_dfa_is_the_general_construction(piece):
    node = number_regex(piece)
    direct = position_dfa(node)
    assert direct is not None
    assert canonical(direct) == canonical(general_dfa(node)), piece


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 5, 25, 4, 20, 3]), st.integers(0, 2), st.one_of(st.none(), st.integers(-300, 0)),
       st.one_of(st.none(), st.integers(1, 300)))
@example(3, 1, 0, 273)  # over MAX_POSITIONS: position_dfa gives None, the lexeme falls back
def test_position_dfa_on_multiples(mult, scale, lo, hi):
    piece = NumPiece(None if lo is None else Decimal(lo), None if hi is None else Decimal(hi), kind="scale", scale=scale, mult=mult)
    if (lo is None) != (hi is None):
        piece = NumPiece(piece.lo, piece.hi, kind="scale", scale=scale, mult=mult)
    try:
        node = number_regex(piece)
    except ValueError:
        return  # bounds with a divisibility automaton: refused, not this module's concern
    want = canonical(general_dfa(node))
    direct = position_dfa(node)  # None past MAX_POSITIONS: the lexeme falls back then
    if direct is not None:
        assert canonical(direct) == want, piece
    assert canonical(to_dfa(number_lexeme(node))) == want, piece


def test_lexeme_wraps_once_and_falls_back():
    node = number_regex(NumPiece(Decimal(0), Decimal(100)))
    lex = number_lexeme(node)
    assert isinstance(lex, NumberLexeme) and number_lexeme(node) is lex and lex.regex == node
    assert canonical(to_dfa(lex)) == canonical(general_dfa(node))
    # not ASCII, or too many positions: to_dfa compiles the wrapped regex the general way
    wide = Alt((seq(literal("é"), repeat(chars((0x30, 0x39)), 1, 3)),))
    assert position_dfa(wide) is None
    assert canonical(to_dfa(NumberLexeme(wide.items))) == canonical(general_dfa(wide))
    long = repeat(chars((0x30, 0x39)), 0, MAX_POSITIONS + 1)
    assert position_dfa(long) is None
    assert to_dfa(number_lexeme(long)).matches(b"12345")


_EXPONENT_TEXTS = st.tuples(
    st.integers(1, 9), st.sampled_from(["", "0", "5", "25", "125", "1", "75", "05"]), st.sampled_from(["e", "E"]),
    st.sampled_from(["", "+", "-"]), st.integers(0, 20),
).map(lambda t: f"{t[0]}{'.' + t[1] if t[1] else ''}{t[2]}{t[3]}{t[4]}")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["0.01", "0.5", "0.25", "2", "20", "1", "0.001", "3", "1.5"]),
       st.sampled_from([None, (0, 400), (-50, 50), (0, None)]), st.lists(_EXPONENT_TEXTS, min_size=15, max_size=15))
def test_exponent_forms_under_multiple_of(step, bounds, texts):
    schema = {"type": "number", "multipleOf": json.loads(step)}
    if bounds is not None:
        schema["minimum"] = bounds[0]
        if bounds[1] is not None:
            schema["maximum"] = bounds[1]
    try:
        g = compile_json_schema(schema, None)
    except ConstraintError:
        return  # too many multiples between the bounds: refused, as before
    q = Decimal(step)
    for text in texts:
        value = Decimal(text)
        valid = value % q == 0 and (bounds is None or (bounds[0] <= value and (bounds[1] is None or value <= bounds[1])))
        got = g.accepts_text(text)
        assert not got or valid, (schema, text)  # never an invalid number
        if valid and step in ("0.01", "1", "0.001"):
            mant, e = text.lower().split("e")
            written = mant.split(".")[1] if "." in mant else ""
            room = int(e) - Decimal(step).as_tuple().exponent  # e + scale
            if len(written) <= min(room, 16):
                assert got, (schema, text)  # multiples of 10**-k: normalised spellings


@pytest.mark.parametrize(("schema", "text", "want"), [
    ({"type": "number", "multipleOf": 0.01}, "1e5", True),
    ({"type": "number", "multipleOf": 0.01}, "1E-2", True),
    ({"type": "number", "multipleOf": 0.01}, "1e-3", False),
    ({"type": "number", "multipleOf": 0.5}, "1.5e2", True),
    ({"type": "number", "multipleOf": 0.5}, "1.55e2", True),
    ({"type": "number", "multipleOf": 0.5}, "1.55e1", False),
    ({"type": "number", "multipleOf": 0.5, "minimum": 0, "maximum": 200}, "1.5e2", True),
    ({"type": "number", "multipleOf": 0.5, "minimum": 0, "maximum": 200}, "2.5e2", False),
    ({"type": "integer", "multipleOf": 2}, "2e16", True),
    ({"type": "integer", "multipleOf": 2}, "2.5e1", False),
    ({"type": "integer", "multipleOf": 2}, "-2e1", True),
    ({"type": "integer"}, "1.5e1", True),
    ({"type": "integer"}, "1.50e1", False),  # trailing zeros past e + scale digits (documented)
    ({"type": "integer"}, "1.50e16", True),
    # at most 16 fraction digits as written in a mantissa, at a bound's exponent too:
    # unbounded trailing zeros trapped SmolLM2 after "1.75" for a height in [50, 250]
    ({"type": "integer", "minimum": 50, "maximum": 250}, "1.75e2", True),
    ({"type": "integer", "minimum": 50, "maximum": 250}, "1.750e2", False),
    ({"type": "number", "minimum": 50, "maximum": 250}, "1.7500000000000000e2", True),
    ({"type": "number", "minimum": 50, "maximum": 250}, "1.75000000000000000e2", False),
    ({"type": "number", "minimum": 50, "maximum": 250}, "175.00000000000000000000", True),
    ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "1.2345678901234567e-1", True),
    ({"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "1.23456789012345678e-1", False),
])
def test_exponent_form_examples(schema, text, want):
    assert compile_json_schema(schema, None).accepts_text(text) == want
