"""The duplicate-key check in the compiled scan (``_native.Earley.set_keys``, the twin of
``EarleyParser._track_keys``).

With the check in C, a native column's ``allowed``/``wide`` come from the compiled scan
(container stack, used keys, the ``,`` look-ahead) and the C boundary recursion scans by
itself on these grammars. Here: every column along texts (valid, with repeats, nested,
wide objects) is the Python parser's, column by column; repeats are refused and used
keys dropped; masks of wide objects (at the default threshold) equal the fallback's;
and the C recursion does not ask Python for scans.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sgl.constrain import Matcher, earley, lexer
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.json_schema import json_schema_grammar
from sgl.constrain.native import native_enabled

INT = {"type": "integer"}
WIDE_NAMES = ("alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa")
SCHEMAS = [
    # small object, no other keys: after both keys the `,` is a dead end (the look-ahead)
    {"type": "object", "properties": {"a": INT, "b": INT}, "additionalProperties": False},
    # a wide object (>= WIDE_MIN_KEYS keys) with other keys allowed, nested in an array
    # and holding an object of its own (the container stack)
    {"type": "array", "items": {"type": "object", "properties": {
        **{k: INT for k in WIDE_NAMES},
        "sub": {"type": "object", "properties": {"alpha": INT, "x": {"type": "array", "items": INT}},
                "additionalProperties": False}}}},
    # pattern keys overlapping declared ones, a key with an escape
    {"type": "object", "properties": {k: INT for k in ("ab", "abc", "a\"b", *WIDE_NAMES)},
     "patternProperties": {"^a": INT}, "additionalProperties": False},
]
TEXTS = [
    ['{"a": 1, "b": 2}', '{"b": 1, "a": 2}', '{"a": 1, "a": 2}', '{"a": 1, "b": 2, "a": 3}', '{"a": 1,"b":2 ,'],
    ['[{"alpha": 1, "beta": 2, "sub": {"alpha": 1, "x": [1, 2]}, "alpha": 3}]',
     '[{"alpha": 1, "beta": 2, "sub": {"alpha": 1, "x": [1, 2]}, "gamma": 3}, {"alpha": 1, "zz": {}, "yy": 1}]',
     '[{"sub": {"alpha": 1, "alpha": 2}}]',
     '[' + ", ".join('{' + ", ".join(f'"{k}": {i}' for i, k in enumerate(WIDE_NAMES)) + '}' for _ in range(2)) + ']'],
    ['{"abc": 1, "ab": 2, "az": 3, "a\\"b": 4, "iota": 5, "az": 6}', '{"abc": 1, "abc": 2}',
     '{"ab": 1, "a\\"b": 2, "a\\"b": 3}'],
]


def _compiled(schema, native: bool, monkeypatch, vocab=None) -> CompiledGrammar:
    monkeypatch.setenv("SGL_NATIVE", "1" if native else "0")
    lexer.clear_shared_cores()
    return CompiledGrammar(json_schema_grammar(schema, track_keys=True), vocab)


def _columns(cg: CompiledGrammar, text: str) -> list:
    """(allowed, wide, accepting) of the column after every prefix of ``text`` that reads
    (None past the first that does not)."""
    out, data = [], text.encode()
    for i in range(len(data) + 1):
        got = cg.advance_bytes((cg.initial, 0), data[:i])
        if got is None:
            out.append(None)
            break
        col = got[0]
        out.append((sorted(col.allowed), None if col.wide is None else sorted(col.wide), col.accepting))
    return out


def _native_or_skip():
    if not native_enabled():
        pytest.skip("the C kernel is not built")


@pytest.mark.parametrize("k", range(len(SCHEMAS)))
def test_compiled_key_check_gives_the_python_columns(k, monkeypatch):
    _native_or_skip()
    native, python = (_compiled(SCHEMAS[k], n, monkeypatch) for n in (True, False))
    assert native.parser.native is not None and python.parser.native is None
    assert native.lexeme_names == python.lexeme_names  # the same ids on both sides
    for text in TEXTS[k]:
        assert _columns(native, text) == _columns(python, text), text
        assert native.accepts_text(text) == python.accepts_text(text), text


def _valid(text: str) -> bool:
    try:
        return isinstance(json.loads(text, object_pairs_hook=_no_repeats), (dict, list))
    except ValueError:
        return False


# declared keys are tracked; keys read by the pattern or any-other-key lexemes are not (one
# lexeme reads them all), so repeats of those stay allowed, on both sides alike
DECLARED = {"a", "b", "ab", "abc", 'a"b', "sub", "x", *WIDE_NAMES}


def _no_repeats(pairs):
    keys = [k for k, _v in pairs if k in DECLARED]
    if len(keys) != len(set(keys)):
        raise ValueError("repeated key")
    return dict(pairs)


@pytest.mark.parametrize("native", [True, False])
def test_repeats_refused_used_keys_dropped(native, monkeypatch):
    if native:
        _native_or_skip()
    for k, texts in enumerate(TEXTS):
        cg = _compiled(SCHEMAS[k], native, monkeypatch)
        for text in texts:
            assert cg.accepts_text(text) == _valid(text), text
    cg = _compiled(SCHEMAS[0], native, monkeypatch)
    comma = cg.parser.t.unique_keys.comma
    after_a, _s = cg.advance_bytes((cg.initial, 0), b'{"a": 1, "')
    after_ab, _s = cg.advance_bytes((cg.initial, 0), b'{"a": 1, "b": 2')
    used = cg.lexeme_ids(cg.advance_bytes((cg.initial, 0), b'{"a"'))
    assert used and not used & after_a.allowed  # "a" is not allowed at the next key
    assert comma and not comma & after_ab.allowed  # both keys used: no `,` (the look-ahead)
    assert cg.advance_bytes((cg.initial, 0), b'{"a": 1, "b": 2,') is None
    if native:  # the compiled state of the check, as the Python one says
        keys = cg.parser.native.keys_of(after_a.uid)
        assert keys is not None and keys[0] and keys[2] and set(keys[1]) == used


def _masks(cg: CompiledGrammar, tokens: list[int]) -> list[np.ndarray]:
    m, out = Matcher(cg), []
    for t in tokens:
        out.append(m.allowed_words().copy())
        assert m.advance(t)
    out.append(m.allowed_words().copy())
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_wide_objects_masks_equal_the_fallback(k, llama3_vocab, monkeypatch):
    """Wide objects at the default threshold (``WIDE_MIN_KEYS``): the C path's masks are
    the pure-Python parser's and kernel's, along a valid text."""
    _native_or_skip()
    assert len(WIDE_NAMES) >= earley.WIDE_MIN_KEYS
    text = next(t for t in TEXTS[k] if _valid(t))
    tokens = llama3_vocab.encode(text)
    want = _masks(_compiled(SCHEMAS[k], False, monkeypatch, llama3_vocab), tokens)
    cg = _compiled(SCHEMAS[k], True, monkeypatch, llama3_vocab)
    got = _masks(cg, tokens)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert np.array_equal(a, b), f"step {i}"
    assert any(c is not None and c.wide is not None for c in cg.parser.columns)


def test_c_recursion_scans_tracking_grammars_itself(llama3_vocab, monkeypatch):
    """With the check in C, the boundary recursion makes its own scans (no python_scans
    round trips): columns it made have no Python object, and no scan is reported."""
    _native_or_skip()
    cg = _compiled(SCHEMAS[1], True, monkeypatch, llama3_vocab)
    assert cg.parser.t.unique_keys is not None
    m = Matcher(cg)
    for t in llama3_vocab.encode(TEXTS[1][0])[:12]:
        m.allowed_words()
        assert m.advance(t)
    native = cg.masks._native
    assert native is not None
    fills, fill = [], native._fill
    monkeypatch.setattr(native, "_fill", lambda item, *a: (fills.append(item[0]), fill(item, *a)))
    assert None in cg.parser.columns  # columns the C recursion scanned by itself
    m2 = Matcher(cg)
    for t in llama3_vocab.encode(TEXTS[1][1])[:20]:
        m2.allowed_words()
        m2.advance(t)
    assert "scan" not in fills and "column" not in fills


def test_set_keys_refuses_bad_registrations(monkeypatch):
    """Bad lexeme ids and a late registration are errors, not reads out of bounds or
    columns tracked from half a text."""
    _native_or_skip()
    cg = _compiled(SCHEMAS[0], True, monkeypatch)
    c = cg.parser.native
    with pytest.raises(ValueError, match="bad lexeme id"):
        c.set_keys([-1], [], [], [], [], [], [], 8)
    with pytest.raises(ValueError, match="bad lexeme id"):
        c.set_keys([], [], [], [], [], [1 << 30], [], 8)
    assert cg.advance_bytes((cg.initial, 0), b'{"a": 1, "') is not None
    with pytest.raises(ValueError, match="scanned already"):
        c.set_keys([], [], [], [], [], [], [], 8)
    with pytest.raises(IndexError):
        c.keys_of(10**6)
