"""automata.compiler.words_dfa on small word sets (built in plain Python) against the numpy
construction: same minimal DFA size, same language."""

from __future__ import annotations

import random

from sgl.constrain.automata import compiler as A


def _numpy_trie(words):
    old = A.SMALL_TRIE_BYTES
    A.SMALL_TRIE_BYTES = -1
    try:
        return A.words_dfa(words)
    finally:
        A.SMALL_TRIE_BYTES = old


def test_small_word_sets_give_the_same_minimal_dfa():
    rng = random.Random(5)
    for _ in range(200):
        words = [bytes(rng.choice(b"ab\x00\xff\xc3\x22") for _ in range(rng.randint(0, 6)))
                 for _ in range(rng.randint(1, 12))]
        small = A.words_dfa(words)
        big = _numpy_trie(words)
        assert small.n_states == big.n_states, words
        probes = set(words) | {w + b"a" for w in words} | {w[:-1] for w in words} | {b"", b"zz"}
        for w in probes:
            assert small.matches(w) == (w in set(words)) == big.matches(w), (words, w)


def test_edge_sets():
    assert A.words_dfa([]).n_states == 1
    eps = A.words_dfa([b""])
    assert eps.n_states == 1 and eps.matches(b"") and not eps.matches(b"a")
