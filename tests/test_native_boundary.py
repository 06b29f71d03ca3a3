"""The boundary recursion in C (``extension.Boundaries``, ``boundary.NativeBoundaries``).

Its masks are compared with the pure-Python fallback by every case of
``test_native_kernel.py`` (the native side now runs this recursion); here: that the C
path is really the one taken, that it stops at the mask budget, and that it refuses
malformed registrations instead of reading out of bounds.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from sgl.constrain import Matcher, lexer
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.errors import CompileBudgetExceeded
from sgl.constrain.json_schema import json_schema_grammar
from sgl.constrain.native import extension

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "tags": {"type": "array", "items": {
    "enum": ["a", "bc"]}}, "n": {"type": "integer"}}, "required": ["name"]}


def _matcher(vocab, monkeypatch) -> Matcher:
    if extension is None:
        pytest.skip("the C mask kernel is not built (no compiler at install)")
    monkeypatch.setenv("SGL_NATIVE", "1")
    lexer.clear_shared_cores()
    return Matcher(CompiledGrammar(json_schema_grammar(SCHEMA), vocab))


def _walk(m: Matcher, text: str, vocab) -> None:
    """Advance ``m`` over ``text`` one byte-level token at a time (computing each mask)."""
    by_bytes = {b: i for i, b in enumerate(vocab.token_bytes) if b}
    for ch in text.encode():
        m.allowed_words()
        assert m.advance(by_bytes[bytes([ch])])


def test_the_c_recursion_is_used(llama3_vocab, monkeypatch):
    m = _matcher(llama3_vocab, monkeypatch)
    _walk(m, '{"name": "x", "tags": ["a"', llama3_vocab)
    native = m.compiled.masks._native
    assert native is not None
    walks, made = native._c.counts()
    assert walks > len(native._walks) and made > 0  # sub-walks were made (and registered) in C
    assert len(native._lexers) > 1


def test_deadline_inside_the_c_loop_is_the_mask_budget(llama3_vocab, monkeypatch):
    m = _matcher(llama3_vocab, monkeypatch)
    _walk(m, '{"name": "x"', llama3_vocab)
    masks = m.compiled.masks
    native = masks._native
    # a registered walk with boundary groups, run again with a deadline already past
    w = next(i for i, r in native._walks.items() if r.boundary_ids.size)
    res = native._walks[w]
    col = m.column
    words = np.zeros(masks.tokens.n_words, dtype=np.uint32)
    lex = next(lx for lx in native._lexers if lx.core is not None)
    assert native._c.run(col.uid, native.lexer_id(lex), w, words, time.monotonic() - 1.0) is None
    masks._deadline = time.monotonic() - 1.0
    try:
        with pytest.raises(CompileBudgetExceeded, match="mask_seconds"):
            native.run(col, lex, res, words, masks._deadline, masks._check_budget, masks._walk_rest)
    finally:
        masks._deadline = None


def test_boundaries_rejects_bad_registrations(llama3_vocab, monkeypatch):
    m = _matcher(llama3_vocab, monkeypatch)
    b = extension.Boundaries(m.compiled.parser.native, [], 8)
    with pytest.raises(ValueError, match="another width"):
        b.add_walk(np.zeros(9, dtype=np.uint32), [])
    with pytest.raises(ValueError, match="out of range"):
        b.add_walk((np.array([8], dtype=np.int64), np.array([1], dtype=np.uint32)), [])
    w = b.add_walk(np.zeros(8, dtype=np.uint32), [0])
    with pytest.raises(IndexError):
        b.set_sub(w, 1, 0, w)
    with pytest.raises(IndexError):
        b.set_sub(w, 0, 0, w + 1)
    with pytest.raises(ValueError, match="ascending"):
        b.set_lexer((3, 2), 0)
    with pytest.raises(ValueError, match="bad words"):
        b.run(0, 0, w, np.zeros(7, dtype=np.uint32), 1e300)
    with pytest.raises(ValueError, match="bad words"):
        b.run(0, 0, w + 5, np.zeros(8, dtype=np.uint32), 1e300)


def test_allowed_sets_are_told_apart(llama3_vocab, monkeypatch):
    """Lexer lookups by allowed set compare contents (not only a hash)."""
    m = _matcher(llama3_vocab, monkeypatch)
    b = extension.Boundaries(m.compiled.parser.native, [], 8)
    b.set_lexer((1, 2, 3), 7)
    b.set_lexer((1, 2, 4), 9)
    b.set_lexer((1, 2, 3), 7)  # again: no second entry
    b.set_lexer((), 4)
    assert [b.lexer_of(s) for s in [(1, 2, 3), (1, 2, 4), (1, 2), (1, 2, 3, 4), (), (3, 2, 1)]] == [7, 9, -1, -1, 4, -1]
    w = b.add_walk(np.zeros(8, dtype=np.uint32), [])
    assert b.run(0, 0, w, np.zeros(8, dtype=np.uint32), 1e300) == []  # no groups: nothing missing


def test_mask_computer_is_freed_without_the_cycle_collector(llama3_vocab, monkeypatch):
    """The C recursion's state holds no reference back to its mask computer: a grammar's
    masks are freed when it is dropped (frozen by gc.freeze, a cycle would never be)."""
    import gc
    import weakref

    m = _matcher(llama3_vocab, monkeypatch)
    _walk(m, '{"name": "x"', llama3_vocab)
    assert m.compiled.masks._native is not None
    ref = weakref.ref(m.compiled.masks._native)
    gc.disable()
    try:
        del m
        assert ref() is None
    finally:
        gc.enable()


def test_parsers_that_filter_columns_scan_in_python(llama3_vocab, monkeypatch):
    """In python_scans mode (``FORCE_PYTHON_SCANS``; what the duplicate-key grammars got
    before the check moved into the compiled scan, test_native_keys.py) the C loop asks
    Python for every new scan and column lexer."""
    from sgl.constrain import boundary

    m = _matcher(llama3_vocab, monkeypatch)
    monkeypatch.setattr(boundary, "FORCE_PYTHON_SCANS", True)
    calls = []
    scan = type(m.compiled.parser).scan
    monkeypatch.setattr(m.compiled.parser, "scan", lambda col, lex: calls.append(col.uid) or scan(
        m.compiled.parser, col, lex))
    _walk(m, '{"name": "x"', llama3_vocab)
    assert m.compiled.masks._native is not None and m.compiled.masks._native._c is not None
    assert None not in m.compiled.parser.columns  # every column was made by EarleyParser.scan
    assert calls


@pytest.mark.parametrize("i", range(3))
def test_python_scans_mode_gives_the_same_masks(i, llama3_vocab, monkeypatch):
    """The python_scans mode (``FORCE_PYTHON_SCANS``) against the fallback."""
    import test_native_kernel as k

    from sgl.constrain import boundary

    if extension is None:
        pytest.skip("the C mask kernel is not built (no compiler at install)")
    monkeypatch.setattr(boundary, "FORCE_PYTHON_SCANS", True)
    k._check_identical(k._ir("json", k.SCHEMAS[i]), llama3_vocab, monkeypatch, seed=11 + i)


SUB_WALK_CASES = [
    ("json", SCHEMA),
    ("json", {"type": "array", "items": {"type": "object", "properties": {"k": {"enum": ["x", "y z"]},
              "v": {"type": ["number", "null"]}}}, "maxItems": 3}),
    # the text ends inside tokens (".\n"): sub-walks into the lexer of no lexemes
    ("lark", 'start: WORD ("," WORD)* "."\nWORD: /[a-z]+/\n'),
    ("lark", 'start: item+ ";"\nitem: NUM | NAME "=" NUM\nNUM: /[0-9]+/\nNAME: /[a-z_]+/\n'),  # (no
    # Llama-3 token reads a digit then ";": the empty lexer is met only by a root walk there)
]


@pytest.mark.parametrize("i", range(len(SUB_WALK_CASES)))
def test_sub_walks_made_in_c_give_the_fallback_masks(i, llama3_vocab, monkeypatch):
    """The sub-walks the C recursion groups, walks and registers by itself: every mask of a
    random walk equals the pure-Python fallback's and the native path's with the sub-walks
    made in Python (``mask.C_SUB_WALKS`` off), and Python made none of them."""
    import test_native_kernel as k

    from sgl.constrain import boundary, mask

    if extension is None:
        pytest.skip("the C mask kernel is not built (no compiler at install)")
    from sgl.constrain.lark_grammar import lark_grammar

    kind, spec = SUB_WALK_CASES[i]
    ir = lark_grammar(spec) if kind == "lark" else k._ir(kind, spec)
    eos = set(llama3_vocab.eos_token_ids)
    fills: list[str] = []
    fill = boundary.NativeBoundaries._fill
    monkeypatch.setattr(boundary.NativeBoundaries, "_fill", lambda self, item, *a: (fills.append(item[0]), fill(
        self, item, *a)))
    m = k._fresh(ir, llama3_vocab, True, monkeypatch)
    tokens, c_masks = k._random_walk(m, 5 + i, 24, eos)
    native = m.compiled.masks._native
    walks, made = native._c.counts()
    assert made > 0 and "walk" not in fills and "accepts" not in fills, (made, fills)
    if i == 2:  # the empty lexer (after the last lexeme) was met, in C
        assert any(not lx.order for lx in native._lexers)
    monkeypatch.setattr(mask, "C_SUB_WALKS", False)
    py_walks = k._fresh(ir, llama3_vocab, True, monkeypatch)
    _replay(py_walks, tokens, c_masks)
    assert py_walks.compiled.masks._native._c.counts()[1] == 0  # the switch really made them in Python
    _replay(k._fresh(ir, llama3_vocab, False, monkeypatch), tokens, c_masks)  # (SGL_NATIVE=0 from here)


def _replay(m: Matcher, tokens: list[int], masks: list[np.ndarray]) -> None:
    for step, want in enumerate(masks):
        got = m.allowed_words()
        diff = np.nonzero(np.unpackbits((got ^ want).view(np.uint8), bitorder="little"))[0]
        assert not diff.size, f"step {step}: masks differ on tokens {diff[:5].tolist()}"
        if step < len(tokens):
            assert m.advance(tokens[step])


def test_python_makes_the_sub_walks_of_c_groups_it_is_asked_for(llama3_vocab, monkeypatch):
    """A lexer the C side has no product of (``boundary.c_lexer``: here every lexer of
    several lexemes; in use, a lexer past its state budget or of the other kind): the
    sub-walks into it of groups made in C are reported and made by Python from the
    group's trie nodes (``group_nodes``); the masks stay the fallback's."""
    import test_native_kernel as k

    from sgl.constrain import boundary

    if extension is None:
        pytest.skip("the C mask kernel is not built (no compiler at install)")
    monkeypatch.setattr(boundary, "c_lexer", lambda lex: hasattr(lex.core, "product") and len(lex.order) == 1)
    fills: list[tuple] = []
    fill = boundary.NativeBoundaries._fill
    monkeypatch.setattr(boundary.NativeBoundaries, "_fill", lambda self, item, *a: (fills.append(item), fill(
        self, item, *a)))
    ir = k._ir("json", SCHEMA)
    m = k._fresh(ir, llama3_vocab, True, monkeypatch)
    tokens, masks = k._random_walk(m, 3, 24, set(llama3_vocab.eos_token_ids))
    native = m.compiled.masks._native

    def grouped_in_c(w: int) -> bool:  # made in C, or registered with its nodes (add_walk_nodes)
        res = native._walks.get(w)
        return res is None or res.groups is None

    assert native._c.counts()[1] > 0 and any(i[0] == "walk" and grouped_in_c(i[1]) for i in fills)
    _replay(k._fresh(ir, llama3_vocab, False, monkeypatch), tokens, masks)
