"""Tokens that cross from a value into the next key, through the boundary recursion's
sub-walks into columns the duplicate-key check filtered (a key position without its
used keys, a value's end without a dead ``,``).

A crafted vocabulary (Llama-3 has no token that reads past the ``"`` of a key after a
``,``): the used keys (complete, or the only keys alive at the token's end) and a dead
``,`` are refused and the free keys allowed, on the C path and the pure-Python fallback
alike, with equal masks; and Llama-3's masks along texts and random walks that favour
``,`` and ``"`` equal the fallback's. (Written for h6-keylex's filtered sub-walks, which
were measured slower and not kept: docs/constraint_kernel.md, "h6-keylex".)

Since h7-filt these columns are walked in filtered lexers made in the C recursion
(``boundary.FILTERED_LEXERS``: the product of the column's unfiltered set seen through
the kept lexemes, no Python lexer per set of used keys). The last tests compare, token by
token, the C path with them (their sub-walks made in C, or by Python in the kept set's
own lexer: mode 2, the path of a product over its state budget), without them (mode 0)
and the fallback.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sgl.constrain import Matcher, boundary, lexer
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.json_schema import json_schema_grammar
from sgl.constrain.native import native_enabled
from sgl.constrain.vocab import Vocabulary

INT = {"type": "integer"}
SMALL = {"type": "object", "properties": {"a": INT, "b": INT, "ab": INT}, "additionalProperties": False}
WIDE_NAMES = ("alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa")
WIDE = {"type": "object", "properties": {k: INT for k in ("a", "b", "ab", *WIDE_NAMES)}, "additionalProperties": False}
NESTED = {"type": "array", "items": {"type": "object", "properties": {
    "a": INT, "b": {"type": "object", "properties": {"a": INT, "c": {"type": "string"}}, "additionalProperties": False},
    "s": {"type": "string"}}, "patternProperties": {"^x": INT}, "additionalProperties": False}}
# tokens that end a value and go on into the next key: the key columns' sub-walks
CROSSING = [b',"a"', b',"a', b',"a":', b', "a"', b',"b', b',"b":', b',"ab', b',"ab"', b', "ab":', b'1,"a', b'1,"b"',
            b',"', b', "', b',', b', ', b'1,', b'}', b' }', b'1}', b'"}', b'","a', b'","b"', b'",', b'","']
EOS = 0


def _vocab() -> Vocabulary:
    singles = [bytes([b]) for b in range(0x20, 0x7F)]
    pieces = [p for p in CROSSING if p not in singles]
    return Vocabulary([None, *singles, *pieces, b'{"a', b'{"', b'": ', b'":', b'"a":'], (EOS,), frozenset({EOS}))


def _native_or_skip():
    if not native_enabled():
        pytest.skip("the C boundary recursion")


def _compiled(schema, vocab, monkeypatch, mode: str) -> CompiledGrammar:
    """mode: "native" (the C kernel and recursion) or "python" (the pure-Python fallback)."""
    monkeypatch.setenv("SGL_NATIVE", "0" if mode == "python" else "1")
    lexer.clear_shared_cores()
    return CompiledGrammar(json_schema_grammar(schema, track_keys=True), vocab)


def _allowed(cg: CompiledGrammar, vocab: Vocabulary, text: str) -> tuple[np.ndarray, set[bytes]]:
    m = Matcher(cg)
    assert all(m.advance(1 + b - 0x20) for b in text.encode())  # the one-byte tokens
    words = np.asarray(m.allowed_words()).copy()
    ids = {i for i in range(vocab.n_vocab) if words[i >> 5] >> (i & 31) & 1}
    return words, {vocab.token_bytes[i] for i in ids if vocab.token_bytes[i] is not None}


CASES = [
    # (schema, text, must be allowed, must not be allowed)
    (SMALL, '{"a": 1', {b',"b', b',"b":', b',"ab', b',"ab"', b', "ab":', b'1,"b"', b'1,"a', b',"', b',', b'}', b'1}'},
     {b',"a"', b',"a":', b', "a"'}),  # a used: "a" complete is refused, "a as a prefix of "ab" not
    (SMALL, '{"a": 1, "ab": 2', {b',"b', b',"b":', b'1,"b"', b',"', b', "', b'}'},
     {b',"a"', b',"a":', b',"a', b',"ab', b',"ab"', b', "ab":', b'1,"a'}),  # "a, "ab: only used keys alive
    (SMALL, '{"a": 1, "ab": 2, "b": 3', {b'}', b'1}', b' }'},
     {b',', b', ', b',"', b', "', b'1,', b',"b', b',"a'}),  # every key used: the `,` is dead
    (WIDE, '{"a": 1, "b": 2', {b',"ab', b',"ab"', b',"', b'}'}, {b',"a"', b',"b":', b'1,"b"', b', "a"'}),
    (NESTED, '[{"b": {"a": 1, "c": "x', {b'"}'}, {b'","', b'","a', b'",'}),  # inner keys all used: `,` dead
    (NESTED, '[{"b": {"c": "x', {b'","a', b'","', b'"}', b'",'}, {b'","b"'}),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_used_keys_and_dead_commas_stay_out_of_sub_walks(case, monkeypatch):
    """Tokens that cross from a value into the next key: a used key (complete, or the only
    key alive at the token's end) and a dead ``,`` are refused, the free keys allowed, on
    the C path and the fallback alike."""
    _native_or_skip()
    schema, text, yes, no = CASES[case]
    vocab = _vocab()
    got = {}
    for mode in ("native", "python"):
        words, allowed = _allowed(_compiled(schema, vocab, monkeypatch, mode), vocab, text)
        assert yes <= allowed, (mode, yes - allowed)
        assert not no & allowed, (mode, no & allowed)
        got[mode] = words
    assert np.array_equal(got["native"], got["python"])


def _masks(cg: CompiledGrammar, tokens: list[int]) -> list[np.ndarray]:
    m, out = Matcher(cg), []
    for t in tokens:
        out.append(np.asarray(m.allowed_words()).copy())
        assert m.advance(t)
    out.append(np.asarray(m.allowed_words()).copy())
    return out


def _random_walk(cg: CompiledGrammar, vocab, seed: int, steps: int = 60) -> list[int]:
    """Allowed tokens, preferring those with a `,` or `"` (they cross into keys)."""
    rng, ids, m = random.Random(seed), [], Matcher(cg)
    eos = set(vocab.eos_token_ids)
    for _ in range(steps):
        words = np.asarray(m.allowed_words())
        allowed = [i for i in np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little")).tolist()
                   if i < vocab.n_vocab and i not in eos]
        if not allowed:
            break
        crossing = [i for i in allowed if vocab.token_bytes[i] and (b"," in vocab.token_bytes[i] or b'"' in vocab.token_bytes[i])]
        t = rng.choice(crossing if crossing and rng.random() < 0.7 else allowed)
        ids.append(t)
        assert m.advance(t)
    return ids


SCHEMAS = [SMALL, WIDE, NESTED]


@pytest.mark.parametrize("k", range(len(SCHEMAS)))
def test_masks_equal_the_fallback(k, llama3_vocab, monkeypatch):
    """Llama-3 masks along valid texts and along random walks that favour `,` and `"`:
    the C path's are the pure-Python fallback's."""
    _native_or_skip()
    schema = SCHEMAS[k]
    texts = {0: ['{"a": 1, "ab": 2, "b": 3}', '{"b": 1, "a": 2}'],
             1: [json.dumps({n: i for i, n in enumerate(("a", "b", "ab", *WIDE_NAMES))})],
             2: ['[{"b": {"a": 1, "c": "x"}, "a": 2, "s": "y", "x1": 3}, {"s": "", "a": 1}]']}[k]
    runs = [llama3_vocab.encode(t) for t in texts]
    runs += [_random_walk(_compiled(schema, llama3_vocab, monkeypatch, "native"), llama3_vocab, seed) for seed in range(3)]
    for tokens in runs:
        want = _masks(_compiled(schema, llama3_vocab, monkeypatch, "python"), tokens)
        got = _masks(_compiled(schema, llama3_vocab, monkeypatch, "native"), tokens)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert np.array_equal(a, b), f"step {i}"

def _instances(monkeypatch) -> list:
    """The ``NativeBoundaries`` made from now on."""
    made: list = []
    init = boundary.NativeBoundaries.__init__

    def keep(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(boundary.NativeBoundaries, "__init__", keep)
    return made


@pytest.mark.parametrize("case", range(len(CASES)))
def test_filtered_lexers_refuse_used_keys_and_dead_commas(case, monkeypatch):
    _native_or_skip()
    schema, text, yes, no = CASES[case]
    vocab = _vocab()
    made = _instances(monkeypatch)
    got = {}
    for mode in (1, 2, 0):
        monkeypatch.setattr(boundary, "FILTERED_LEXERS", mode)
        del made[:]
        words, allowed = _allowed(_compiled(schema, vocab, monkeypatch, "native"), vocab, text)
        assert yes <= allowed, (mode, yes - allowed)
        assert not no & allowed, (mode, no & allowed)
        assert len(made) == 1
        n = made[0].filtered_lexers()
        assert (n > 0) == (mode > 0), (mode, n)  # every case crosses into a filtered column
        got[mode] = words
    words, allowed = _allowed(_compiled(schema, vocab, monkeypatch, "python"), vocab, text)
    for mode, w in got.items():
        assert np.array_equal(w, words), mode


@pytest.mark.parametrize("k", range(len(SCHEMAS)))
def test_sub_walks_python_makes_into_filtered_lexers(k, llama3_vocab, monkeypatch):
    """Mode 2: every sub-walk into a filtered lexer is reported and made by Python in the
    kept set's own lexer (its groups are that lexer's states); Llama-3 masks along random
    walks equal the fallback's and the default mode's."""
    _native_or_skip()
    schema = SCHEMAS[k]
    made = _instances(monkeypatch)
    text = ['{"a": 1, "ab": 2, "b": 3}', '{"b": 1, "alpha": 2, "a": 3, "ab": 4}',
            '[{"b": {"a": 1, "c": "x"}, "a": 2, "s": "y", "x1": 3}, {"s": "", "a": 1}]'][k]
    runs = [llama3_vocab.encode(text)]
    runs += [_random_walk(_compiled(schema, llama3_vocab, monkeypatch, "native"), llama3_vocab, seed)
             for seed in range(2)]
    _masks(_compiled(schema, llama3_vocab, monkeypatch, "native"), runs[0])
    assert sum(b.filtered_lexers() for b in made) > 0
    for tokens in runs:
        want = _masks(_compiled(schema, llama3_vocab, monkeypatch, "python"), tokens)
        monkeypatch.setenv("SGL_NATIVE", "1")
        monkeypatch.setattr(boundary, "FILTERED_LEXERS", 2)
        got = _masks(_compiled(schema, llama3_vocab, monkeypatch, "native"), tokens)
        monkeypatch.setattr(boundary, "FILTERED_LEXERS", 1)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert np.array_equal(a, b), f"step {i}"


def test_no_python_lexer_per_set_of_used_keys(llama3_vocab, monkeypatch):
    """Along an object of many keys, each key position has its own set of used keys: with
    filtered lexers the recursion registers no Python lexer for them (one for the
    unfiltered set), without them one per set."""
    _native_or_skip()
    text = '{"alpha": 1, "beta": 2, "gamma": 3, "delta": 4, "eps": 5, "zeta": 6}'
    tokens = llama3_vocab.encode(text)
    made = _instances(monkeypatch)
    lexers, masks, filtered = {}, {}, {}
    for mode in (1, 0):
        monkeypatch.setattr(boundary, "FILTERED_LEXERS", mode)
        del made[:]
        masks[mode] = _masks(_compiled(WIDE, llama3_vocab, monkeypatch, "native"), tokens)
        lexers[mode] = len(made[0].lexers())
        filtered[mode] = made[0].filtered_lexers()
    assert filtered[0] == 0 and filtered[1] >= 3, filtered
    assert lexers[1] + 3 <= lexers[0], lexers
    for a, b in zip(masks[1], masks[0], strict=True):
        assert np.array_equal(a, b)
