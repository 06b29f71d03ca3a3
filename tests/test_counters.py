"""Issue 14: large counted repetitions are counted by grammar rules over chunk lexemes
(``constrain/counters.py``), not unrolled into a DFA; languages and masks stay exact."""

from __future__ import annotations

import re

import numpy as np
import pytest

from sgl.constrain import CompileBudget, Matcher, allocate_bitmask, compile_grammar, compile_regex
from sgl.constrain.counters import CHUNK, LARGE_COUNT


def _lengths(lo: int, hi: int | None) -> list[int]:
    """Lengths around the bounds and the chunk edges."""
    edges = {0, 1, lo - 1, lo, lo + 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, LARGE_COUNT + 1}
    if hi is not None:
        edges |= {hi - 1, hi, hi + 1, hi - hi % CHUNK, hi - hi % CHUNK + 1}
    return sorted(n for n in edges if n >= 0)


@pytest.mark.parametrize("lo, hi", [(100_000, 100_000), (0, 1_000_000), (3_000, 3_001), (2_500, None),
                                    (0, LARGE_COUNT + 1), (0, 12 * CHUNK), (CHUNK + 7, 9 * CHUNK + 5)])
def test_counted_repetition_language_is_exact(lo, hi):
    pattern = f"a{{{lo},{'' if hi is None else hi}}}"
    g = compile_regex(pattern)
    assert len(g.lexeme_names) > 1  # split, not one unrolled DFA
    for n in _lengths(lo, hi):
        assert g.accepts_text("a" * n) is (n >= lo and (hi is None or n <= hi)), n


@pytest.mark.parametrize("pattern, texts", [
    (r"x\d{5000}y", ["x" + "1" * 5000 + "y", "x" + "1" * 4999 + "y", "x" + "1" * 5001 + "y", "x" + "1" * 5000]),
    (r".{10000}", ["é" * 10000, "é" * 9999, "a" * 9999 + "\n", "日" * 10000, "é" * 10001]),
    (r"ab[a-z]{3000}\d", ["ab" + "q" * 3000 + "1", "ab" + "q" * 2999 + "1"]),
    (r"(?:ab){3000}", ["ab" * 3000, "ab" * 2999, "ab" * 3000 + "a"]),
])
def test_counted_repetitions_in_sequences_match_like_re(pattern, texts):
    g = compile_regex(pattern)
    for text in texts:
        assert g.accepts_text(text) is bool(re.fullmatch(pattern, text)), (len(text), text[:5])


def test_an_unsafe_boundary_is_not_split():
    # [a-z]+ could eat the counted letters: splitting would change the language
    # the unrolled DFA takes seconds of CPU; the budget is wide so a loaded machine passes
    g = compile_regex("[a-z]+a{0,3000}", budget=CompileBudget(seconds=600))
    assert len(g.lexeme_names) == 1
    assert g.accepts_text("b" + "a" * 5000)


def test_gbnf_large_repetition_compiles_and_is_exact():
    g = compile_grammar('root ::= "a"{0,100000}', syntax="gbnf")
    assert [g.accepts_text("a" * n) for n in (0, 5, 100_000, 100_001)] == [True, True, True, False]
    g = compile_grammar('root ::= "x" [0-9]{5000} "y"', syntax="gbnf")
    assert g.accepts_text("x" + "7" * 5000 + "y") and not g.accepts_text("x" + "7" * 4999 + "y")


def _mask_ids(m: Matcher, out: np.ndarray, n_vocab: int) -> set[int]:
    m.fill_bitmask(out)
    bits = np.unpackbits(out[0].view(np.uint8), bitorder="little")[:n_vocab]
    return set(np.nonzero(bits)[0].tolist())


def test_masks_are_exact_across_chunks_and_at_the_bounds(llama3_vocab):
    """Every mask from the start to past the upper bound of x[ab]{n,m}y equals the set
    of tokens that keep the text a prefix of a match (and EOS exactly at a match)."""
    lo, hi = LARGE_COUNT + 3, LARGE_COUNT + CHUNK + 40
    pattern = f"x[ab]{{{lo},{hi}}}y"
    prefix = re.compile(f"x[ab]{{0,{hi}}}|x[ab]{{{lo},{hi}}}y?|")
    vocab, n_vocab = llama3_vocab, llama3_vocab.n_vocab
    eos = set(vocab.eos_token_ids)
    alphabet = set(b"xaby")
    cands = [t for t, b in enumerate(vocab.token_bytes) if t < n_vocab and b and set(b) <= alphabet]
    m = Matcher(compile_regex(pattern, vocab))
    out = allocate_bitmask(1, n_vocab)
    text = b""
    rng = np.random.default_rng(0)
    checked = 0
    while True:
        allowed = _mask_ids(m, out, n_vocab)
        want = {t for t in cands if prefix.fullmatch((text + vocab.token_bytes[t]).decode())}
        if re.fullmatch(pattern, text.decode()):
            want |= eos & set(range(n_vocab))
        assert allowed == want, (len(text), sorted(allowed ^ want)[:5])
        checked += 1
        body = [t for t in allowed if t not in eos and b"y" not in vocab.token_bytes[t]]
        if not body:
            break
        # long tokens to get through the chunks, short ones near the bounds
        near = abs(len(text) - lo) < 20 or abs(len(text) - hi) < 20
        pick = min(body, key=lambda t: len(vocab.token_bytes[t])) if near else int(rng.choice(body))
        assert m.advance(pick)
        text += vocab.token_bytes[pick]
    assert len(text) == hi + 1 and checked > 100


def test_not_split_when_another_lexeme_may_start_the_same_way():
    # "abc" may be lexed where the count starts: chunks would end where the whole
    # repetition would not, so the terminal stays whole (and exact)
    g = compile_grammar('root ::= [a-z]{3000} | "abc" "d"', syntax="gbnf")
    assert not any("#L" in n for n in g.lexeme_names)
    assert g.accepts_text("q" * 3000) and g.accepts_text("abcd") and not g.accepts_text("q" * 2999)


# ---------------------------------------------------------------------------
# The one binary-counting construction (CountedRepeat), shared with JSON Schema:
# every count in range has exactly one derivation, every other count none


def _derivations(rules, start: str, lengths: dict[str, range], n_max: int) -> np.ndarray:
    """Derivations of ``start`` per text length 0..n_max (capped at 2), for a grammar
    whose terminals have the lengths ``lengths`` (a unary view of the language)."""
    ways = {t: np.isin(np.arange(n_max + 1), list(r)).astype(np.int64) for t, r in lengths.items()}
    lhs = {r.lhs for r in rules}
    ways.update({a: np.zeros(n_max + 1, np.int64) for a in lhs})
    for _ in range(4 * n_max + 10):
        new = {a: np.zeros(n_max + 1, np.int64) for a in lhs}
        for r in rules:
            acc = np.zeros(n_max + 1, np.int64)
            acc[0] = 1
            for s in r.rhs:
                acc = np.minimum(np.convolve(acc, ways[s])[: n_max + 1], 2)
            new[r.lhs] = np.minimum(new[r.lhs] + acc, 2)
        if all((new[a] == ways[a]).all() for a in lhs):
            return ways[start]
        ways.update(new)
    raise AssertionError("no fixpoint")


@pytest.mark.parametrize("lo, hi", [(0, 0), (0, 1), (1, 1), (0, 7), (3, 8), (5, 5), (6, 37), (16, 16), (9, None), (0, None), (31, 64)])
@pytest.mark.parametrize("unit", [("a",), ("a", "a")])
def test_counted_repeat_has_one_derivation_per_count_in_range(lo, hi, unit):
    from sgl.constrain.counters import CountedRepeat
    from sgl.constrain.grammar import Rule

    rules: list[Rule] = []
    rep = CountedRepeat(lambda lhs, rhs: rules.append(Rule(lhs, tuple(rhs))), "r", unit)
    rules.append(Rule("S", rep.between(lo, hi)))
    got = _derivations(rules, "S", {"a": range(1, 2)}, 80)
    w = len(unit)
    want = [int(n % w == 0 and n // w >= lo and (hi is None or n // w <= hi)) for n in range(81)]
    assert got.tolist() == want


@pytest.mark.parametrize("lo, hi", [(0, 3 * CHUNK), (CHUNK, CHUNK), (2 * CHUNK + 5, None), (7, 4 * CHUNK + 3),
                                    (CHUNK - 1, 2 * CHUNK + 1), (3 * CHUNK, 5 * CHUNK - 1)])
def test_chunk_lowering_derives_each_length_once(lo, hi):
    from sgl.constrain.counters import lower_counter
    from sgl.constrain.regex_ast import Chars, Repeat

    rules, terminals = [], {}
    sym = lower_counter("T", Repeat(Chars(((97, 97),)), lo, hi), rules, terminals)
    n_max = 6 * CHUNK
    lengths = {n: range(t.pattern.min, min(t.pattern.max or n_max, n_max) + 1) for n, t in terminals.items()}
    got = _derivations(rules, sym, lengths, n_max)
    want = [int(n >= lo and (hi is None or n <= hi)) for n in range(n_max + 1)]
    assert got.tolist() == want
