"""Walks of "other keys" lexemes (``json_keys.KeyNotIn``) from their trie states, made as
the shared walk of the any-string body less the token subtrees where the key dies
(``mask.KEY_BODY_WALKS``): the same walks and masks as walking each lexeme, and no token
that completes an excluded key leaks through the shared walk."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sgl.constrain import Matcher, lexer, mask
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.json_keys import KeyNotIn
from sgl.constrain.json_schema import json_schema_grammar
from sgl.constrain.native import native_enabled

INT = {"type": "integer"}


def _native_or_skip():
    if not native_enabled():
        pytest.skip("the C kernel is not built")


def _compiled(schema, vocab, monkeypatch, shared: bool) -> CompiledGrammar:
    monkeypatch.setattr(mask, "KEY_BODY_WALKS", shared)
    lexer.clear_shared_cores()
    return CompiledGrammar(json_schema_grammar(schema, track_keys=True), vocab)


def _dense(mc, words) -> np.ndarray:
    out = np.zeros(mc.tokens.n_words, dtype=np.uint32)
    mask.or_into(out, words)
    return out


def _walk(mc, lex, state: int):
    res = mc.full_walk(lex, state)
    trip = sorted(zip(res.boundary_ids.tolist(), res.boundary_pos.tolist(),
                      res.boundary_state.tolist(), strict=True))
    return _dense(mc, res.inside), trip, None if res.starts_next is None else _dense(mc, res.starts_next)


def _key_lexers(cg: CompiledGrammar):
    """(lexer, KeyNotIn table) of each "other keys" lexeme of ``cg``, alone."""
    out = []
    for i, dfa in enumerate(cg.lexer.dfas):
        if getattr(dfa, "string_body", None) is not None:
            out.append((cg.lexer.for_lexemes(frozenset((i,))), dfa))
    return out


def _random_names(rng: random.Random) -> list[str]:
    alphabet = "abnme_x"
    return sorted({"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 8))})


@pytest.mark.parametrize("seed", range(6))
def test_shared_key_walks_are_each_lexemes_own(seed, llama3_vocab, monkeypatch):
    """From every state of the lexeme, the walk with sharing is the walk without it."""
    _native_or_skip()
    rng = random.Random(seed)
    names = _random_names(rng) + ["name", "names", "id", "type"][: seed % 5]
    schema = {"type": "object", "properties": {k: INT for k in names}, "additionalProperties": INT}
    other = {**schema, "properties": {k + "e": INT for k in names}}
    results = []
    for shared in (False, True):
        if shared:  # walks kept from another object's lexeme first (shared across cores)
            cg = _compiled(other, llama3_vocab, monkeypatch, shared)
            cg.masks.tokens.key_body_walks.clear()
            (lex, dfa), = _key_lexers(cg)
            for q in range(1, dfa.n_states):
                if not dfa.accepting[q]:
                    cg.masks.full_walk(lex, lex.core.state_of_local(q))
            assert cg.masks.tokens.key_body_walks
        cg = _compiled(schema, llama3_vocab, monkeypatch, shared)
        (lex, dfa), = _key_lexers(cg)
        walks = []
        for q in range(1, dfa.n_states):
            if not dfa.accepting[q]:
                walks.append(_walk(cg.masks, lex, lex.core.state_of_local(q)))
        results.append(walks)
    assert cg.masks.tokens.key_body_walks  # the shared walk was used
    for q, (a, b) in enumerate(zip(*results, strict=True)):
        assert np.array_equal(a[0], b[0]), f"inside, state {q}"
        assert a[1] == b[1], f"boundaries, state {q}"
        assert (a[2] is None) == (b[2] is None)


def test_token_completing_an_excluded_key_does_not_leak(llama3_vocab, monkeypatch):
    """Inside a used declared key, the closing quote (the tokens `"`, `":`) completes it
    again: the shared body walk reads them, the key's walk must not."""
    _native_or_skip()
    schema = {"type": "object", "properties": {"name": INT, "names": INT, "id": INT}, "additionalProperties": INT}
    quote, quote_colon = llama3_vocab.encode('"')[0], llama3_vocab.encode('":')[0]
    prefix = '{"name": 1, "id": 2, "name'
    for shared in (True, False):
        cg = _compiled(schema, llama3_vocab, monkeypatch, shared)
        m = Matcher(cg)
        for t in llama3_vocab.encode(prefix):
            assert m.advance(t)
        words = m.allowed_words()
        for t in (quote, quote_colon):
            assert not (int(words[t >> 5]) >> (t & 31)) & 1, (shared, t)
        s = llama3_vocab.encode("s")[0]
        assert (int(words[s >> 5]) >> (s & 31)) & 1  # "names" goes on
        # and the "other keys" walk itself from the trie state of "name"
        (lex, dfa), = _key_lexers(cg)
        q = 0
        for ch in b'"name':
            q = int(dfa.table[q, ch])
        inside, trip, _ = _walk(cg.masks, lex, lex.core.state_of_local(q))
        for t in (quote, quote_colon):
            assert not (int(inside[t >> 5]) >> (t & 31)) & 1, (shared, t)
        assert not any(pos == 1 for _node, pos, _st in trip)  # nothing ends the key at the quote


def test_masks_along_texts_equal_with_and_without_sharing(llama3_vocab, monkeypatch):
    _native_or_skip()
    schema = {"type": "array", "items": {"type": "object", "properties": {
        "name": INT, "names": INT, "id": INT, "ab": INT, "type": {"type": "string"}},
        "additionalProperties": INT}}
    texts = ['[{"name": 1, "nam": 2, "namesake": 3, "i": 4, "type": "x", "zz": 5}, {"id": 1, "\\u0062": 2, "a\\u0063": 3}]',
             '[{"nam\\u0065s": 1, "name\\"": 2, "": 3}]']
    for text in texts:
        tokens = llama3_vocab.encode(text)
        got = []
        for shared in (False, True):
            cg = _compiled(schema, llama3_vocab, monkeypatch, shared)
            m, out = Matcher(cg), []
            for t in tokens:  # (up to the first token the grammar refuses, if any)
                out.append(m.allowed_words().copy())
                if not m.advance(t):
                    break
            got.append(out)
        for i, (a, b) in enumerate(zip(*got, strict=True)):
            assert np.array_equal(a, b), f"step {i} of {text!r}"


def test_key_tables_carry_the_body_states():
    """Every one-byte table numbers the body and end alike (the walk is shared by them)."""
    bodies = {KeyNotIn(names, 300).direct_byte_dfa().string_body
              for names in (("a",), ("ab", "b"), ("name", "names", "id"), ("x_y",))}
    assert len(bodies) <= 2  # (one per pruning of the bottom)
