"""What the lexer keeps for the process (h11-rss): lexers read a token's bytes in one
call (``run``) instead of keeping a Python list per row, and a lexeme's preparation
lives no longer than its DFA."""

from __future__ import annotations

import gc
import random
import weakref

import numpy as np
import pytest

from sgl.constrain import Matcher, Vocabulary, compile_json_schema, lexer
from sgl.constrain.automata.compiler import to_dfa
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.json_schema import json_schema_grammar
from sgl.constrain.native import native_enabled
from sgl.constrain.regex import parse_regex

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
                   "n": {"type": "number", "minimum": 0}},
    "required": ["name"],
}
TEXT = b'{"name": "x\\u00e9y", "tags": ["a", "b"], "n": 1.5, "other": null}'


def _python_run(core, state: int, data: bytes, start: int) -> tuple[int, int]:
    """``run`` spelled with rows: the reference."""
    i = start
    while i < len(data) and core.row(state)[data[i]] >= 0:
        state, i = core.row(state)[data[i]], i + 1
    return i, state


@pytest.mark.parametrize("native", [False, True])
def test_run_reads_as_far_as_rows_do(native):
    if native and not native_enabled():
        pytest.skip("native kernel not built")
    dfas = CompiledGrammar(json_schema_grammar(SCHEMA, track_keys=True)).lexer.dfas
    core = lexer.NativeLexerCore(dfas) if native else lexer.LexerCore(dfas)
    rng = random.Random(0)
    alphabet = sorted(set(TEXT)) + [0xC3, 0xA9, 0xFF]
    states = [0]
    for _ in range(300):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        state, start = rng.choice(states), rng.randint(0, 2)
        got = core.run(state, data, start)
        assert got == _python_run(core, state, data, start)
        states.append(got[1])
    # numpy byte arrays are read like bytes (key_masks reads token bytes that way)
    arr = np.frombuffer(b'"name"', dtype=np.uint8)
    assert core.run(0, arr, 0) == core.run(0, b'"name"', 0)


def test_walk_and_advance_bytes_match_one_byte_at_a_time():
    g = CompiledGrammar(json_schema_grammar(SCHEMA, track_keys=True))
    state = (g.initial, 0)
    for k in range(len(TEXT)):
        state = g.advance_bytes(state, TEXT[k:k + 1])
        assert state is not None
        whole = g.advance_bytes((g.initial, 0), TEXT[:k + 1])
        assert whole is not None and whole[0] is state[0] and whole[1] == state[1]
    assert g.can_end(*state) and g.accepts_text(TEXT)
    # as the byte-by-byte loop before ``run`` found them (the same on main's c3cd12a)
    assert [i for i, _ in g.walk(TEXT).lexeme_ends] == [1, 7, 9, 19, 21, 27, 29, 30, 33, 35, 38, 39, 41, 44, 46,
                                                         49, 51, 58, 60, 64]
    bad = TEXT.replace(b'"tags"', b'"tags" "')
    w = g.walk(bad)
    assert (w.consumed, w.lexeme_start, [i for i, _ in w.lexeme_ends]) == (28, 27, [1, 7, 9, 19, 21, 27])
    assert g.advance_bytes((g.initial, 0), bad) is None


def test_a_lexeme_dfa_lives_no_longer_than_its_users():
    """Preparing a lexeme (fresh start, content key) keeps nothing alive: once no lexer,
    grammar or cache holds the DFA, it is freed (a process-wide table of preparations
    used to hold the last 4,096 DFAs, whatever the compile cache had dropped)."""
    dfa = to_dfa(parse_regex("[a-z]{3,9}q"))
    ref = weakref.ref(dfa)
    lex = lexer.Lexer([dfa])
    assert lex.keys and lex.dfas[0].n_states >= dfa.n_states
    del dfa, lex
    lexer.clear_shared_cores()
    gc.collect()
    assert ref() is None


def test_matcher_masks_after_the_change_still_follow_text():
    vocab = Vocabulary([b"{", b'"name"', b":", b'"x"', b"}", b" ", b"ab", None], (7,), (7,))
    m = Matcher(compile_json_schema({"type": "object", "properties": {"name": {"type": "string"}}}, vocab))
    for t in (0, 1, 2, 3, 4):
        assert m.is_allowed(t) and m.advance(t)
    assert m.is_accepting()


def test_shared_cores_stay_under_their_byte_bound(monkeypatch):
    """The shared lexer cores are bounded in bytes, not only in number: a server that
    compiles new schemas all day keeps at most ``MAX_SHARED_CORE_BYTES`` of them (weighed
    as they come), least recently used out first."""
    lexer.clear_shared_cores()
    dfas = [to_dfa(parse_regex(f"k{i:03d}[a-z]{{2,{3 + i % 7}}}")) for i in range(128)]
    one = lexer.core_nbytes(lexer.Lexer(dfas[:1]).for_lexemes(frozenset({0})).core)
    assert one > 0
    monkeypatch.setattr(lexer, "MAX_SHARED_CORE_BYTES", 10 * one)
    lexer.clear_shared_cores()
    last = None
    for d in dfas:
        last = lexer.Lexer([d]).for_lexemes(frozenset({0})).core
    cores = lexer.shared_cores()
    assert lexer.shared_cores_nbytes() <= 10 * one and 1 <= len(cores) <= 12
    assert cores[-1] is last  # the newest stays
    monkeypatch.setattr(lexer, "MAX_SHARED_CORE_BYTES", 1 << 40)
    lexer.clear_shared_cores()
    for d in dfas:
        lexer.Lexer([d]).for_lexemes(frozenset({0}))
    assert len(lexer.shared_cores()) == len(dfas)  # (the count bound is far)
    lexer.clear_shared_cores()
