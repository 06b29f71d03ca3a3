"""The lexer's per-lexeme setup (h5-compile): lexemes are prepared (fresh start, content
key) when a lexer first needs them, not at compile, and ``dfa_key`` is a content key
whatever spelling of the table it hashes.

Lexers built lazily must be the ones built eagerly: same shared cores (same content
keys, same component order), so the same masks.
"""

from __future__ import annotations

import numpy as np
import pytest

from sgl.constrain import Matcher, lexer
from sgl.constrain.automata.dfa import ByteDFA
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.json_schema import json_schema_grammar
from sgl.constrain.lexer import _prepared, dfa_key, with_fresh_start

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
                   "n": {"type": "number", "minimum": 0}},
    "required": ["name"],
}
TEXT = '{"name": "x\\u00e9y", "tags": ["a", "b"], "n": 1.5, "other": null}'


def _table(rows: list[dict[int, int]], n: int) -> np.ndarray:
    t = np.full((n, 256), -1, dtype=np.int32)
    for s, row in enumerate(rows):
        for b, to in row.items():
            t[s, b] = to
    return t


def test_every_lexeme_is_prepared_at_compile_by_default():
    g = CompiledGrammar(json_schema_grammar(SCHEMA, track_keys=True))
    assert lexer.LAZY_PREPARE_BYTES == 0
    assert all(p is not None for p in g.lexer._cache._prep)


@pytest.fixture
def lazy(monkeypatch):
    """Lazy preparation on (the knob's tested setting; off by default)."""
    monkeypatch.setattr(lexer, "LAZY_PREPARE_BYTES", 256 << 10)


def test_only_large_lexemes_are_prepared_at_compile(lazy):
    """Small lexemes wait for a lexer that needs them; a table over LAZY_PREPARE_BYTES
    (a long maxLength string) is hashed at compile, not inside the first mask."""
    g = CompiledGrammar(json_schema_grammar(SCHEMA, track_keys=True))
    assert all(p is None for p in g.lexer._cache._prep)
    big = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 200}, "t": {"type": "boolean"}}}
    g = CompiledGrammar(json_schema_grammar(big, track_keys=True))
    cache = g.lexer._cache
    large = [d.table.nbytes > lexer.LAZY_PREPARE_BYTES for d in cache.raw]
    assert any(large) and not all(large)
    assert [p is not None for p in cache._prep] == large


def test_lazy_lexers_are_the_eager_ones(lazy, llama3_vocab):
    """Walk a text; every lexer built on the way has the shared core the eager setup
    (every lexeme prepared at once, then sorted by key) gives its lexeme set."""
    g = CompiledGrammar(json_schema_grammar(SCHEMA, track_keys=True), llama3_vocab)
    assert g.accepts_text(TEXT)
    cache = g.lexer._cache
    assert len(cache) > 3  # several lexeme sets were needed
    eager = [_prepared(d) for d in cache.raw]
    for lexemes, lex in cache.items():
        order = sorted(lexemes, key=lambda i: (eager[i][1], i))
        assert lex.core.key == tuple(eager[i][1] for i in order)
    # lexemes no lexer needed stay unprepared
    used = set().union(*cache.keys())
    assert all((cache._prep[i] is None) == (i not in used) for i in range(len(cache.raw)))


def test_masks_of_a_fresh_grammar_equal_those_of_an_eagerly_prepared_one(lazy, llama3_vocab):
    g1 = CompiledGrammar(json_schema_grammar(SCHEMA, track_keys=True), llama3_vocab)
    g2 = CompiledGrammar(json_schema_grammar(SCHEMA, track_keys=True), llama3_vocab)
    _ = g2.lexer.keys  # every lexeme prepared up front, as before h5-compile
    assert all(p is not None for p in g2.lexer._cache._prep)
    m1, m2 = Matcher(g1), Matcher(g2)
    for tok in llama3_vocab.encode(TEXT):
        a = np.asarray(m1.allowed_words())
        b = np.asarray(m2.allowed_words())
        assert np.array_equal(a, b)
        assert m1.advance(tok) and m2.advance(tok)
    assert m1.is_accepting() and m2.is_accepting()


@pytest.mark.parametrize("dense", [False, True])
def test_dfa_key_is_a_content_key(dense: bool):
    # a sparse chain, or rows that read almost every byte (an "other keys" lexeme)
    n = 6
    if dense:
        rows = [{b: (s + 1) % n for b in range(256) if b != 0x22} for s in range(n)]
    else:
        rows = [{0x61 + s: s + 1} for s in range(n - 1)] + [{}]
    table = _table(rows, n)
    acc = np.zeros(n, dtype=bool)
    acc[-1] = True
    key = dfa_key(ByteDFA(table, acc))
    assert dfa_key(ByteDFA(table.copy(), acc.copy())) == key  # equal content, other objects
    assert dfa_key(ByteDFA(table.astype(np.int64), acc)) == key  # the dtype does not matter
    other = table.copy()
    other[2, 0x7A] = 3 if other[2, 0x7A] != 3 else 4
    assert dfa_key(ByteDFA(other, acc)) != key  # one entry
    dead = table.copy()
    dead[1, np.flatnonzero(dead[1] >= 0)[0]] = -1
    assert dfa_key(ByteDFA(dead, acc)) != key  # one entry gone dead
    assert dfa_key(ByteDFA(table, ~acc)) != key  # acceptance
    bigger = np.vstack([table, np.full((1, 256), -1, dtype=np.int32)])
    assert dfa_key(ByteDFA(bigger, np.append(acc, False))) != key  # a state more


def test_dfa_key_spellings_do_not_collide():
    """A sparse table and a dense one are hashed as different spellings, so a sparse
    table's pairs can never read as some dense table's bytes."""
    sparse = _table([{1: 1}, {}], 2)
    dense = _table([{b: 1 for b in range(200)}, {}], 2)
    acc = np.array([False, True])
    assert dfa_key(ByteDFA(sparse, acc)) != dfa_key(ByteDFA(dense, acc))
    assert lexer.dfa_key is dfa_key


@pytest.mark.parametrize("bounds", [(0, 255, True), (3, 40, False), (0, None, True), (2, None, False), (1, 1, True)])
def test_counted_strings_are_keyed_by_their_bounds(bounds):
    """A long maxLength string's DFA carries its content key (from the bounds) and is its
    own fresh-start form: what hashing and scanning its table would give, without that."""
    from sgl.constrain.json_counted import counted_dfa

    lo, hi, closing = bounds
    d = counted_dfa(lo, hi, True, closing)
    fresh, key = _prepared(d)
    assert fresh is d and key == d.content_key
    plain = ByteDFA(d.table.copy(), d.accepting.copy())  # the same table, no key
    assert with_fresh_start(plain) is plain  # nothing to shift: state 0 is fresh
    assert counted_dfa(lo, hi, True, closing).content_key == key  # equal bounds, equal key
    others = {counted_dfa(lo + 1, None if hi is None else hi + 1, True, closing).content_key,
              counted_dfa(lo, hi, True, not closing).content_key, dfa_key(plain)}
    assert key not in others
    assert not hasattr(counted_dfa(lo, hi, False, closing), "content_key")  # no opening quote: hashed


def test_literal_and_key_set_dfas_carry_content_keys_of_their_own_tables():
    """h6-front: literal and "other keys" DFAs come with their lexer key (no table scan
    or hash); that is only sound where the table is its own fresh-start form, and where
    equal keys mean equal tables."""
    from sgl.constrain.automata.compiler import literal_dfa
    from sgl.constrain.json_keys import KeyNotIn

    for data in (b'"a"', b'"name"', b"xyz", "\"\u00e9\"".encode()):
        d = literal_dfa(data)
        assert with_fresh_start(d) is d and not d.accepting[0]
        assert d.content_key == literal_dfa(data).content_key
        assert lexer.Lexer([d]).keys == [d.content_key]
    assert literal_dfa(b'"a"').content_key != literal_dfa(b'"b"').content_key
    assert getattr(literal_dfa(b""), "content_key", None) is None  # accepts at its start
    sets = [("a",), ("name", "id"), ("x\u00e9", 'q"', "a/b", ""), tuple(f"k{i}" for i in range(40))]
    keys = set()
    for names in sets:
        for max_nodes in (300, 3, 1):
            d = KeyNotIn(names, max_nodes).direct_byte_dfa()
            assert with_fresh_start(d) is d and not d.accepting[0]
            again = KeyNotIn(names, max_nodes).direct_byte_dfa()
            assert again.content_key == d.content_key and np.array_equal(again.table, d.table)
            keys.add(d.content_key)
    assert len(keys) == 3 * len(sets)

def _subset_lexers(n_lexemes: int, sets: list[tuple[int, ...]]):
    """A ``Lexer`` over small keyword DFAs (``"k<i>"``, like keys), and its lexers of ``sets``."""
    dfas = []
    for i in range(n_lexemes):
        word = f'"k{i}"'.encode()
        rows = [{b: s + 1} for s, b in enumerate(word)] + [{}]
        acc = np.zeros(len(rows), dtype=bool)
        acc[-1] = True
        dfas.append(ByteDFA(_table(rows, len(rows)), acc))
    lex = lexer.Lexer(dfas)
    return dfas, [lex.for_lexemes(frozenset(s)) for s in sets]


@pytest.mark.skipif(not lexer.native_enabled(), reason="the C product lexer")
def test_new_lexeme_sets_reuse_each_lexemes_c_dfa(monkeypatch):
    """A new lexeme set (a filtered key position) is built from its lexemes' kept C
    ``Dfa``s: ``native_dfa`` runs once per lexeme, not once per (set, lexeme); and the
    product is the one built from scratch, row for row."""
    calls = []
    real = lexer.native_dfa
    monkeypatch.setattr(lexer, "native_dfa", lambda d, k=None: calls.append(k) or real(d, k))
    lexer.clear_shared_cores()
    sets = [(0, 1, 2, 3), (0, 2, 3), (1, 3), (0, 1, 2), (2,)]
    dfas, lexers = _subset_lexers(4, sets)
    assert len(calls) == 4 and len(set(calls)) == 4  # one per lexeme, all sets together
    for lexemes, lex in zip(sets, lexers, strict=True):
        fresh = lexer.make_core([with_fresh_start(dfas[i]) for i in lex.order])
        assert fresh.product is not lex.core.product
        todo, seen = [0], {0}
        while todo:  # every reachable state: the same row, the same accepting lexemes
            s = todo.pop()
            row = lex.core.row(s)
            assert row == fresh.row(s)
            assert lex.core.accepts[s] == fresh.accepts[s]
            for t in set(row) - seen - {-1}:
                seen.add(t)
                todo.append(t)
        assert len(seen) > len(lexemes)  # the keys' bytes were walked
    lexer.clear_shared_cores()
