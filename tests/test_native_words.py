"""The mask words' C helpers (``_native_words.c``) against their numpy twins.

``take_words`` compacts a walk's words out of the reused scratch (and must leave it
clear); ``or_parts`` ORs a mask's parts in one call. Both are on every mask miss of the
native path, so a wrong word here is a wrong mask; the pure-Python fallback uses
``mask.or_parts`` / ``mask.or_into``.
"""

from __future__ import annotations

import numpy as np
import pytest

import sgl.constrain as sc
from sgl.constrain import lexer
from sgl.constrain.bitmask import pack_bools
from sgl.constrain.mask import SPARSE_WORDS, or_parts
from sgl.constrain.native import extension


def _needs_native():
    if extension is None:
        pytest.skip("the C mask kernel is not built (no compiler at install)")


def _random_parts(rng: np.random.Generator, n: int) -> list:
    parts = []
    for _ in range(int(rng.integers(0, 7))):
        kind = int(rng.integers(3))
        if kind == 0:
            parts.append(rng.integers(0, 2**32, n, dtype=np.uint32) & rng.integers(0, 2**32, n, dtype=np.uint32))
        elif kind == 1:
            idx = np.unique(rng.integers(0, n, int(rng.integers(0, n + 1)))).astype(np.int64)
            parts.append((idx, rng.integers(0, 2**32, idx.size, dtype=np.uint32)))
        else:
            parts.append(("&", rng.integers(0, 2**32, n, dtype=np.uint32), rng.integers(0, 2**32, n, dtype=np.uint32)))
    return parts


def test_or_parts_equals_numpy():
    _needs_native()
    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(1, 400))
        parts = _random_parts(rng, n)
        start = rng.integers(0, 2**32, n, dtype=np.uint32) * rng.integers(0, 2, n, dtype=np.uint32)
        want, got = start.copy(), start.copy()
        or_parts(want, parts)
        extension.or_parts(got, parts)
        assert np.array_equal(want, got)


def test_or_parts_rejects_bad_parts():
    _needs_native()
    out = np.zeros(8, dtype=np.uint32)
    with pytest.raises(ValueError, match="out of range"):
        extension.or_parts(out, [(np.array([8], dtype=np.int64), np.array([1], dtype=np.uint32))])
    with pytest.raises(ValueError, match="out of range"):
        extension.or_parts(out, [(np.array([-1], dtype=np.int64), np.array([1], dtype=np.uint32))])
    with pytest.raises(ValueError, match="another width"):
        extension.or_parts(out, [np.zeros(9, dtype=np.uint32)])
    with pytest.raises(ValueError, match="another width"):
        extension.or_parts(out, [("&", np.zeros(8, dtype=np.uint32), np.zeros(7, dtype=np.uint32))])
    with pytest.raises(ValueError, match="indices, values"):
        extension.or_parts(out, [(np.zeros(1, dtype=np.int64),)])
    assert not out.any()  # nothing written before the bad part was found


@pytest.mark.parametrize("nonzero", [0, 1, SPARSE_WORDS, SPARSE_WORDS + 1, 500])
def test_take_words_compacts_and_clears(nonzero):
    _needs_native()
    rng = np.random.default_rng(nonzero)
    scratch = np.zeros(4008, dtype=np.uint32)
    at = rng.choice(scratch.size, nonzero, replace=False)
    scratch[at] = rng.integers(1, 2**32, nonzero, dtype=np.uint32)
    want = scratch.copy()
    taken = extension.take_words(scratch, SPARSE_WORDS)
    assert not scratch.any()
    if nonzero <= SPARSE_WORDS:
        idx, vals = np.frombuffer(taken[0], dtype=np.int64), np.frombuffer(taken[1], dtype=np.uint32)
        assert np.array_equal(idx, np.flatnonzero(want)) and np.array_equal(vals, want[idx])
    else:
        assert np.array_equal(np.frombuffer(taken, dtype=np.uint32), want)


def test_budget_error_leaves_no_words_behind(llama3_vocab, monkeypatch):
    """A walk stopped by the lexer budget must not leave its half-written words in the
    reused scratch, where the next walk would pick them up as allowed tokens: after
    ``y`` the letters' lexer runs over the budget mid-walk; the grammar's next mask
    (after ``x``, a small lexer of its own) allows ``q`` alone."""
    from sgl.constrain import Matcher
    from sgl.constrain.compiled import CompiledGrammar
    from sgl.constrain.errors import CompileBudgetExceeded
    from sgl.constrain.lark_grammar import lark_grammar

    _needs_native()
    monkeypatch.setenv("SGL_NATIVE", "1")
    monkeypatch.setattr(lexer, "MAX_LEXER_STATES", 20)
    lexer.clear_shared_cores()
    m = Matcher(CompiledGrammar(lark_grammar('start: "x" A | "y" B\nA: "q"\nB: /[a-z]{0,40}/\n'), llama3_vocab))
    tid = {b: i for i, b in enumerate(llama3_vocab.token_bytes) if b in (b"x", b"y", b"q")}
    after_y, after_x = m.copy(), m.copy()
    assert after_y.advance(tid[b"y"]) and after_x.advance(tid[b"x"])
    with pytest.raises(CompileBudgetExceeded):
        after_y.allowed_words()
    got = after_x.allowed_words()  # the same grammar's mask computer, the same scratch
    assert np.flatnonzero(np.unpackbits(got.view(np.uint8), bitorder="little")).tolist() == [tid[b"q"]]


@pytest.mark.parametrize("width", [1, 7, 8, 255, 256, 257, 4008, 4011])
def test_take_words_at_block_edges(width):
    """take_words counts in blocks of 256 words and skips zero runs 8 words at a time:
    words at the edges of those blocks, widths that are not multiples of either, and a
    count that passes the limit inside a block are compacted (or not) exactly."""
    _needs_native()
    rng = np.random.default_rng(width)
    edges = [k for k in (0, 6, 7, 8, 9, 254, 255, 256, 257, 511, 512, width - 2, width - 1) if 0 <= k < width]
    clustered = list(range(max(0, width - SPARSE_WORDS - 1), width))  # the limit passed in the last block
    for at in (edges, clustered, clustered[1:]):
        scratch = np.zeros(width, dtype=np.uint32)
        scratch[at] = rng.integers(1, 2**32, len(at), dtype=np.uint32)
        want = scratch.copy()
        taken = extension.take_words(scratch, SPARSE_WORDS)
        assert not scratch.any()
        if np.count_nonzero(want) <= SPARSE_WORDS:
            idx, vals = np.frombuffer(taken[0], dtype=np.int64), np.frombuffer(taken[1], dtype=np.uint32)
            assert np.array_equal(idx, np.flatnonzero(want)) and np.array_equal(vals, want[idx])
        else:
            assert np.array_equal(np.frombuffer(taken, dtype=np.uint32), want)


def test_words_digest_and_equal():
    _needs_native()
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2**32, 4008, dtype=np.uint32)
    b = a.copy()
    assert extension.words_digest(a) == extension.words_digest(b) and extension.words_equal(a, b)
    b[4007] ^= 1 << 31
    assert extension.words_digest(a) != extension.words_digest(b) and not extension.words_equal(a, b)
    for k in (0, 1, 2, 3, 4, 5, 6, 7, 4006):  # a bit in each lane of the digest, and its tail
        c = a.copy()
        c[k] ^= 1
        assert extension.words_digest(c) != extension.words_digest(a)
    assert extension.words_digest(a[:7]) != extension.words_digest(a[:6])  # odd lengths: the tail
    assert not extension.words_equal(a, a[:-1])


def test_equal_masks_are_one_array(llama3_vocab, monkeypatch):
    """Native masks are interned per grammar: equal masks of different parser columns
    share one read-only array (the fallback keeps its own arrays; tests compare contents)."""
    from sgl.constrain import Matcher
    from sgl.constrain.compiled import CompiledGrammar
    from sgl.constrain.json_schema import json_schema_grammar

    _needs_native()
    monkeypatch.setenv("SGL_NATIVE", "1")
    lexer.clear_shared_cores()
    m = Matcher(CompiledGrammar(json_schema_grammar({"type": "array", "items": {"type": "integer"}}), llama3_vocab))
    tid = {b: i for i, b in enumerate(llama3_vocab.token_bytes) if b in (b"[", b"1", b",")}
    for b in (b"[", b"1", b","):
        m.allowed_words()
        assert m.advance(tid[b])
    once = m.allowed_words()
    col_once = m.column
    for b in (b"1", b","):
        assert m.advance(tid[b])
    assert m.column is not col_once  # another column...
    assert m.allowed_words() is once and not once.flags.writeable  # ...the same mask


def test_first_byte_words_equal_the_tokens_selected_one_by_one(llama3_vocab):
    """``starts_next`` (tokens whose first byte is dead): taken as all tokens less the
    live bytes' runs when most bytes are dead, else packed directly; both equal packing
    the selected ids, for every share of dead bytes (numpy only: no native needed)."""
    g = sc.compile_json_schema({"type": "object", "properties": {"a": {"type": "string"}}}, llama3_vocab)
    mc, tokens = g.masks, g.masks.tokens
    rng = np.random.default_rng(9)
    for k in (0, 1, 5, 100, 127, 128, 129, 200, 250, 255, 256):
        dead = np.zeros(256, dtype=bool)
        dead[rng.choice(256, k, replace=False)] = True
        selected = np.zeros(tokens.n_words * 32, dtype=bool)
        selected[tokens.with_first_byte(np.flatnonzero(dead))] = True
        assert np.array_equal(mc.first_byte_words(dead), pack_bools(selected)), k
