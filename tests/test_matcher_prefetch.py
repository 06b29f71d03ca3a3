"""Matcher.prefetch (masks one token ahead, for a helper thread) and copy(history=False)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sgl.constrain import Matcher, Vocabulary, compile_json_schema, compile_regex

EOS = 12
PIECES = [b"a", b"b", b"c", b"x", b"y", b"z", b"w", b"ab", b"xy", b"yz", b"{", b"}"]


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary([*PIECES, None], (EOS,), frozenset({EOS}))


def mask_matches_tokens(m: Matcher) -> bool:
    """The cached mask says what accepts_token (one token at a time) says."""
    words = m.allowed_words()
    n = len(m.vocab.token_bytes)
    return all(bool((int(words[t >> 5]) >> (t & 31)) & 1) == m.accepts_token(t) for t in range(n))


def test_prefetch_caches_the_next_states_masks(vocab):
    # a pattern of its own: nothing of it is cached by another test
    compiled = compile_regex("(ab|c)+x(yz|w)c*", vocab)
    m = Matcher(compiled)
    path = [7, 2, 0, 1, 3, 9, 2]  # ab c a b x yz c
    total = 0
    for t in path:
        allowed = [i for i in range(len(PIECES)) if m.accepts_token(i)]
        missing = [i for i in allowed if not m.mask_ahead_is_cached(i)]
        made = m.prefetch(allowed + [EOS, 99, -1])  # EOS, unknown ids and refused ones are skipped
        assert made <= len(missing) and (made > 0) == bool(missing)  # tokens may share a state
        assert all(m.mask_ahead_is_cached(i) for i in [*allowed, EOS, 99, -1])
        assert made <= len(allowed)
        total += made
        assert m.prefetch(allowed) == 0  # all cached now
        for other in allowed:  # every state one token ahead has its mask
            probe = m.copy()
            assert probe.advance(other) and probe.mask_is_cached()
        assert m.advance(t) and m.mask_is_cached() and mask_matches_tokens(m)
    assert total > 0


def test_prefetch_changes_nothing_else(vocab):
    m = Matcher(compile_regex("(a|b)+c", vocab))
    m.advance(0)
    m.prefetch([1, 2, 3])
    assert m.num_tokens == 1 and not m.is_terminated() and m.accepts_token(1)


def test_prefetch_from_another_thread(vocab):
    compiled = compile_json_schema({"type": "object", "properties": {"q": {"type": "string"}}}, vocab)
    m = Matcher(compiled)
    out: list[int] = []
    th = threading.Thread(target=lambda: out.append(m.copy(history=False).prefetch(range(len(PIECES)))))
    th.start()
    th.join(30)
    assert out and m.advance(10) and m.mask_is_cached()


def test_copy_without_history(vocab):
    m = Matcher(compile_regex("a+b", vocab))
    for _ in range(5):
        m.advance(0)
    light = m.copy(history=False)
    assert light.num_tokens == 0 and light.accepts_token(1) and not light.accepts_token(3)
    with pytest.raises(ValueError):
        light.rollback(1)
    assert light.advance(1) and light.is_accepting()
    assert m.accepts_token(0)  # the original is untouched


def test_a_look_ahead_is_reused_only_for_its_token_and_state(vocab):
    """mask_ahead_is_cached remembers the state after the token; an advance by that token
    from that state reuses it, any other advance walks as usual: the same masks."""
    compiled = compile_regex("(ab|c)+x(yz|w)c*", vocab)
    peeked, plain = Matcher(compiled), Matcher(compiled)
    path = [7, 2, 0, 1, 3, 9, 2, EOS]
    for i, t in enumerate(path):
        peeked.mask_ahead_is_cached(path[i - 1] if i % 3 == 2 else t)  # sometimes another token
        peeked.mask_ahead_is_cached(4)  # refused: remembered as None, never reused for t
        if i % 2:
            peeked.mask_ahead_is_cached(t)
        assert peeked.advance(t) and plain.advance(t)
        assert np.array_equal(peeked.allowed_words(), plain.allowed_words())
        assert peeked.is_accepting() == plain.is_accepting()
    assert peeked.is_terminated() and not peeked.advance(2)
    peeked.rollback(2)
    plain.rollback(2)
    assert peeked.accepts_token(2) == plain.accepts_token(2) and peeked.accepts_token(3) == plain.accepts_token(3)
