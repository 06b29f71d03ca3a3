"""Key positions lexed with the used keys too (``EarleySet.wide``, ``earley.WIDE_KEYS``),
masks inside keys composed from each key's own walk (``mask.KEY_PARTS``).

With the duplicate-key check, every set of used keys used to give its key positions a
lexer of their own (the allowed lexemes minus the used keys), and so fresh vocabulary
walks. Now a key position is lexed with every key of its object; scans refuse a used
key and masks drop the tokens that end where only used keys are alive. The masks must
be exactly those of the filtered lexers walking the product of the keys, with the
compiled kernel and the fallback, and repeated keys still refused.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sgl.constrain import Matcher, earley, lexer, mask
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.json_schema import json_schema_grammar
from sgl.constrain.native import native_enabled

INT = {"type": "integer"}
# keys sharing prefixes (a token may end inside several of them), an escape-worthy key,
# extra keys allowed (the any-other-key lexeme), pattern keys overlapping declared ones
SCHEMAS = [
    {"type": "object", "properties": {k: INT for k in ("name", "names", "nam", "id", "idx", "n\u00e9", "a\"b")},
     "additionalProperties": False},
    {"type": "object", "properties": {k: INT for k in ("name", "names", "kind", "k")}},
    {"type": "object", "properties": {k: INT for k in ("ab", "abc", "x")}, "patternProperties": {"^a": INT},
     "additionalProperties": False},
    {"type": "object", "properties": {"o": {"type": "object", "properties": {k: INT for k in ("p", "pq", "q")},
                                            "additionalProperties": False}, "p": INT, "pq": INT},
     "additionalProperties": False},
]
TEXTS = [
    '{"names": 1, "name": 2, "nam": 3, "n\\u00e9": 4, "idx": 5}',
    '{"kind": 1, "names": 2, "zz": 3, "name": 4}',
    '{"abc": 1, "ab": 2, "az": 3}',
    '{"pq": 1, "o": {"q": 1, "pq": 2, "p": 3}, "p": 2}',
]


def _matcher(schema, vocab, monkeypatch, native: bool, wide: bool) -> Matcher:
    monkeypatch.setenv("SGL_NATIVE", "1" if native else "0")
    monkeypatch.setattr(earley, "WIDE_KEYS", wide)
    monkeypatch.setattr(earley, "WIDE_MIN_KEYS", 0)  # every object, however small
    monkeypatch.setattr(mask, "KEY_PARTS", wide)
    lexer.clear_shared_cores()
    return Matcher(CompiledGrammar(json_schema_grammar(schema, track_keys=True), vocab))


def _masks(m: Matcher, tokens: list[int]) -> list[np.ndarray]:
    out = []
    for t in tokens:
        out.append(m.allowed_words().copy())
        assert m.advance(t)
    out.append(m.allowed_words().copy())
    return out


def _walk(m: Matcher, vocab, seed: int, steps: int = 40) -> list[int]:
    """A random walk that prefers tokens inside keys (where the used keys matter)."""
    rng, eos, ids = random.Random(seed), set(vocab.eos_token_ids), []
    for _ in range(steps):
        allowed = [t for t in np.nonzero(np.unpackbits(m.allowed_words().view(np.uint8), bitorder="little"))[0].tolist()
                   if t not in eos]
        if not allowed:
            break
        quoted = [t for t in allowed if b'"' in (vocab.token_bytes[t] or b"") or len(vocab.token_bytes[t] or b"") <= 2]
        t = rng.choice(quoted or allowed)
        assert m.advance(t)
        ids.append(t)
    return ids


def _same(got: list[np.ndarray], want: list[np.ndarray], vocab) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if not np.array_equal(a, b):
            diff = np.nonzero(np.unpackbits((a ^ b).view(np.uint8), bitorder="little"))[0][:5].tolist()
            pytest.fail(f"step {i}: masks differ on {[vocab.token_bytes[t] for t in diff]}")


@pytest.mark.parametrize("k", range(len(SCHEMAS)))
def test_wide_key_lexing_gives_the_filtered_masks(k, llama3_vocab, monkeypatch):
    schema, vocab = SCHEMAS[k], llama3_vocab
    natives = (True, False) if native_enabled() else (False,)
    paths = [vocab.encode(TEXTS[k])]
    paths += [_walk(_matcher(schema, vocab, monkeypatch, natives[0], True), vocab, seed) for seed in range(3)]
    for tokens in paths:
        want = _masks(_matcher(schema, vocab, monkeypatch, False, False), tokens)
        for native in natives:
            _same(_masks(_matcher(schema, vocab, monkeypatch, native, True), tokens), want, vocab)


def test_repeated_keys_refused_any_order_accepted(llama3_vocab, monkeypatch):
    m0 = _matcher(SCHEMAS[0], llama3_vocab, monkeypatch, native_enabled(), True)
    cg = m0.compiled
    for text in TEXTS[0], '{"idx": 5, "nam": 3, "a\\"b": 1, "names": 1, "name": 2, "id": 0}':
        json.loads(text)
        assert cg.accepts_text(text)
        m = Matcher(cg)
        assert all(m.advance(t) for t in llama3_vocab.encode(text)) and m.is_accepting()
    for text in ('{"name": 1, "names": 2, "name": 3}', '{"nam": 1, "id": 2, "nam": 3}', '{"a\\"b": 1, "a\\"b": 1}'):
        assert not cg.accepts_text(text)
        m = Matcher(cg)
        assert not (all(m.advance(t) for t in llama3_vocab.encode(text)) and m.is_accepting())


def test_one_lexer_for_every_set_of_used_keys(llama3_vocab, monkeypatch):
    m = _matcher(SCHEMAS[0], llama3_vocab, monkeypatch, native_enabled(), True)
    cg = m.compiled
    lexers = set()
    for prefix in ('{"name": 1, "', '{"id": 1, "', '{"idx": 1, "nam": 2, "'):  # inside the next key
        col, _s = cg.advance_bytes((cg.initial, 0), prefix.encode())
        assert col.wide is not None and col.allowed < col.wide
        lexers.add(id(cg.lexer.for_lexemes(col.lexing)))
    assert len(lexers) == 1


def test_key_walks_composed_once_per_used_keys(llama3_vocab, monkeypatch):
    """The walks a mask inside keys is the union of are composed once per (lexer, state,
    used keys) (``LexerDFA.key_walks``): the second object of an array, with the same keys
    in the same order, composes none, and its masks are still the filtered lexers'."""
    made = []

    class Counted(mask.KeyParts):
        def __init__(self, *a):
            made.append(1)
            super().__init__(*a)

    monkeypatch.setattr(mask, "KeyParts", Counted)
    schema = {"type": "array", "items": SCHEMAS[1]}
    one, two = '[{"names": 1, "kind": 2}]', '[{"names": 1, "kind": 2}, {"names": 3, "kind": 4}]'
    natives = (True, False) if native_enabled() else (False,)
    for native in natives:
        counts = []
        for text in one, two:
            tokens = llama3_vocab.encode(text)
            made.clear()
            got = _masks(_matcher(schema, llama3_vocab, monkeypatch, native, True), tokens)
            counts.append(len(made))
            _same(got, _masks(_matcher(schema, llama3_vocab, monkeypatch, False, False), tokens), llama3_vocab)
        assert counts[0] > 0 and counts[1] == counts[0], counts


def test_key_caches_are_bounded(llama3_vocab, monkeypatch):
    """``LexerDFA.key_walks`` and ``used_dead`` hold one entry per (state, used keys) met,
    which a wide object makes combinatorially many: past ``lexer.MAX_KEY_SETS`` each starts
    over, and the masks stay the filtered lexers'."""
    made: list = []

    class Recorded(lexer.LexerDFA):
        def __init__(self, *a):
            super().__init__(*a)
            made.append(self)

    monkeypatch.setattr(lexer, "LexerDFA", Recorded)
    monkeypatch.setattr(lexer, "MAX_KEY_SETS", 2)
    schema = {"type": "array", "items": SCHEMAS[1]}
    tokens = llama3_vocab.encode('[{"names": 1, "kind": 2}, {"kind": 3, "names": 4}, {"names": 5}]')
    natives = (True, False) if native_enabled() else (False,)
    for native in natives:
        made.clear()
        got = _masks(_matcher(schema, llama3_vocab, monkeypatch, native, True), tokens)
        assert max(len(lx.key_walks) for lx in made) == 2  # used, and bounded
        assert all(len(lx.key_walks) <= 2 and len(lx.used_dead) <= 2 for lx in made)
        _same(got, _masks(_matcher(schema, llama3_vocab, monkeypatch, False, False), tokens), llama3_vocab)
