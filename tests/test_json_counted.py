"""Length-bounded JSON strings: the directly built DFA (``json_counted``) against the regex
path, and the chunked lowering of long bounds (``emit_scalars.counted_string_nt``)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sgl.constrain.automata.compiler import to_dfa
from sgl.constrain.automata.derivatives import ANY_CHAR
from sgl.constrain.automata.dfa import ByteDFA
from sgl.constrain.compiled import compile_ir
from sgl.constrain.errors import CompileBudgetExceeded
from sgl.constrain.json_counted import CountedChars, counted_dfa, counted_states
from sgl.constrain.json_schema import emit_scalars, json_schema_grammar
from sgl.constrain.json_strings import json_string_node
from sgl.constrain.regex_ast import Repeat, Seq


def _same_language(a: ByteDFA, b: ByteDFA) -> bool:
    """Same language for two minimal trim DFAs: one bijection of states from the starts."""
    if a.n_states != b.n_states:
        return False
    pair, todo, done = {0: 0}, [0], set()
    while todo:
        s = todo.pop()
        if s in done:
            continue
        done.add(s)
        t = pair[s]
        ra, rb = a.table[s], b.table[t]
        if a.accepting[s] != b.accepting[t] or not np.array_equal(ra >= 0, rb >= 0):
            return False
        for x, y in zip(ra[ra >= 0].tolist(), rb[rb >= 0].tolist(), strict=True):
            if pair.setdefault(x, y) != y:
                return False
            todo.append(x)
    return len(set(pair.values())) == len(pair) == a.n_states


def _bounds(rng: random.Random) -> list[tuple[int, int | None]]:
    out = [(0, 0), (0, 1), (1, 1), (0, None), (1, None), (2, None), (5, 5)]
    for _ in range(14):
        lo = rng.randint(0, 25)
        out.append((lo, None if rng.random() < 0.25 else lo + rng.randint(0, 25)))
    return out


@pytest.mark.parametrize("opening,closing", [(True, True), (False, False), (False, True), (True, False)])
def test_counted_dfa_is_the_minimal_dfa_of_the_regex_path(opening, closing):
    """Equal to ``to_dfa`` (minimal) of the same items: same language, same state count."""
    for lo, hi in _bounds(random.Random(int(opening) * 2 + int(closing))):
        if hi == 0 and not (opening or closing):
            continue
        node = CountedChars(lo, hi, opening, closing)
        got = counted_dfa(lo, hi, opening, closing)
        assert got.n_states == counted_states(lo, hi, opening, closing)
        assert _same_language(got, to_dfa(Seq(node.items))), (lo, hi)
        assert _same_language(to_dfa(node), got)


def test_quoted_counted_string_is_the_string_lowering_of_a_length_bound():
    for lo, hi in [(0, 3), (2, 2), (4, None), (0, 12)]:
        want = to_dfa(json_string_node(Repeat(ANY_CHAR, lo, hi)))
        assert _same_language(counted_dfa(lo, hi, True, True), want), (lo, hi)


def test_counted_dfa_budget_is_checked_before_building():
    with pytest.raises(CompileBudgetExceeded) as e:
        counted_dfa(0, 10**9, True, True)  # would be ~20 billion rows: refused at once
    assert e.value.budget == "dfa_states"
    with pytest.raises(ValueError):
        counted_dfa(3, 2, True, True)


def test_counted_chars_pickle_and_equality():
    import pickle

    a = CountedChars(3, 9, False, True)
    b = pickle.loads(pickle.dumps(a))
    assert a == b and hash(a) == hash(b) and b.bounds == (3, 9, False, True)
    assert a != CountedChars(3, 9, True, True)


# ---------------------------------------------------------------------------- the chunked lowering

_ALPHABET = ["a", "Z", " ", "é", "\n", '"', "\\", "/", "😀", "日", "\x7f", "\t"]


def _texts(rng: random.Random, n: int) -> list[str]:
    plain = "x" * n
    mixed = "".join(rng.choice(_ALPHABET) for _ in range(n))
    return [plain, mixed]


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 4 characters beyond 6: every boundary case within a few characters."""
    monkeypatch.setattr(emit_scalars, "STRING_CHUNK", 4)
    monkeypatch.setattr(emit_scalars, "MAX_LEXEME_LENGTH", 6)


def test_chunked_lengths_are_exact(small_chunks):
    rng = random.Random(5)
    cases = [(0, 7), (7, 7), (8, 8), (9, None), (0, None), (3, 17), (4, 12), (5, 13), (12, 12), (1, 9)]
    cases += [(lo, lo + rng.randint(0, 14)) for lo in (rng.randint(0, 14) for _ in range(6))]
    cases += [(rng.randint(7, 14), None) for _ in range(3)]
    for lo, hi in cases:
        schema = {"type": "string", "minLength": lo} | ({} if hi is None else {"maxLength": hi})
        g = json_schema_grammar(schema)
        assert any("chunk" in name for name in g.terminals) or max(lo, hi or 0) <= 6, (lo, hi)
        cg = compile_ir(g)
        for n in range(0, (hi if hi is not None else lo) + 6):
            want = lo <= n and (hi is None or n <= hi)
            for text in _texts(rng, n):
                for ascii_only in (True, False):
                    enc = json.dumps(text, ensure_ascii=ascii_only)
                    assert cg.accepts_text(enc) == want, (lo, hi, n, enc)
        assert not cg.accepts_text('"\\ud800' + "a" * lo + '"') and not cg.accepts_text('"\x01' + "a" * lo + '"')


def test_chunked_string_inside_an_object(small_chunks):
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 5, "maxLength": 11}},
              "required": ["s"], "additionalProperties": False}
    cg = compile_ir(json_schema_grammar(schema))
    for n in range(0, 15):
        assert cg.accepts_text(json.dumps({"s": "é" * n})) == (5 <= n <= 11)


@pytest.mark.parametrize("schema", [
    {"type": "string", "minLength": 3, "maxLength": 40},
    {"type": "object", "properties": {"s": {"type": "string", "minLength": 9}, "n": {"type": "integer"}}},
])
def test_kernel_equals_fallback_across_chunk_ends(schema, small_chunks, llama3_vocab, monkeypatch):
    """Tokens crossing chunk ends (4 characters) walk on in the next chunk lexeme: the C
    kernel and the numpy fallback give the same masks at every step of a random walk."""
    from test_native_kernel import _check_identical, _needs_native

    _needs_native()
    _check_identical(json_schema_grammar(schema), llama3_vocab, monkeypatch, seed=11, steps=30)


def test_real_chunks_walk_and_accept_a_long_value(llama3_vocab):
    """The real chunk size: every mask along a walk of long tokens past a chunk end."""
    from sgl.constrain import Matcher, compile_json_schema

    cg = compile_json_schema({"type": "string", "minLength": 1, "maxLength": 1024}, llama3_vocab)
    m = Matcher(cg)
    for t in llama3_vocab.encode('"' + "abcdefgh" * 40):
        assert m.advance(t)
    assert not m.is_accepting()
    tail = llama3_vocab.encode('"')
    assert all(m.advance(t) for t in tail) and m.is_accepting()
    m2 = Matcher(cg)
    assert not all(m2.advance(t) for t in llama3_vocab.encode('"' + "ab" * 513 + '"'))


def test_nested_in_a_larger_pattern_it_reads_as_its_items():
    """Inside another node the general construction reads it as the Seq of its items."""
    from sgl.constrain.regex_ast import Alt, Seq, literal

    nested = to_dfa(Alt((CountedChars(0, 3), literal('"abcdefg"'))))
    plain = to_dfa(Alt((Seq(CountedChars(0, 3).items), literal('"abcdefg"'))))
    for text in [b'""', b'"ab"', b'"abc"', b'"abcd"', b'"abcdefg"', b'"\\n"', b"abc"]:
        assert nested.matches(text) == plain.matches(text), text
    assert nested.matches(b'"ab"') and not nested.matches(b'"abcd"') and nested.matches(b'"abcdefg"')
