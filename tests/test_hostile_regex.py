"""Regexes whose minimal DFA is over the state budget (issue 14: ``(a|b)*a(a|b){15}``,
``[\\s\\S]*a[\\s\\S]{20}``, ``[a-z]{0,50}[a-y]{0,50}[b-z]{0,50}``) compile as a grammar of
one-character lexemes (``counters.char_grammar``); the language and the masks are the
ones of the one-lexeme DFA."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from sgl.constrain import (
    CompileBudget,
    CompileBudgetExceeded,
    ConstraintError,
    Matcher,
    allocate_bitmask,
    compile_regex,
)
from sgl.constrain.compiled import CompiledGrammar
from sgl.constrain.counters import char_grammar
from sgl.constrain.regex import parse_regex, regex_grammar

PATTERNS = [r"(a|b)*a(a|b){3}", r"[a-z]{0,3}[a-y]{0,2}[b-z]{1,3}", r"x(ab|a)*b?", r"(é|e)+\d{2,4}|日本",
            r"[^a]*a.{2}", r"(?:foo|fo|f)*o", r"a{0,5}?b*", r"", r"(a|)(b|)c{0,0}", r"(a?)*b", r"(a*|b){2,}c?",
            r"(?:(?:ab){0,3}|c)+"]
ALPHABET = ["a", "b", "c", "e", "é", "f", "o", "x", "z", "1", "2", "日", "本", "\n"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_char_grammar_matches_like_re(pattern):
    g = CompiledGrammar(char_grammar(parse_regex(pattern), pattern))
    rng = random.Random(pattern)
    texts = {"".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 8))) for _ in range(600)}
    texts |= {"aaab", "abab", "ab", "xab", "xaab", "é12", "ee123", "日本", "baaa", "fooo", "c", "aaaaab"}
    matched = 0
    for text in sorted(texts):
        want = re.fullmatch(pattern, text) is not None
        assert g.accepts_text(text) is want, text
        matched += want
    assert matched > 0


def _mask(m: Matcher, out: np.ndarray, n_vocab: int) -> np.ndarray:
    m.fill_bitmask(out)
    return np.unpackbits(out[0].view(np.uint8), bitorder="little")[:n_vocab].copy()


@pytest.mark.parametrize("pattern", [r"(a|b)*a(a|b){3}", r"[a-z]{0,3}[a-y]{0,2}[b-z]{1,3}", r"(é|e)+\d{2,4}"])
def test_char_grammar_masks_equal_the_lexeme_dfa_masks(pattern, llama3_vocab):
    n = llama3_vocab.n_vocab
    one = Matcher(CompiledGrammar(regex_grammar(pattern), llama3_vocab))
    chars = Matcher(CompiledGrammar(char_grammar(parse_regex(pattern), pattern), llama3_vocab))
    out = allocate_bitmask(1, n)
    eos = set(llama3_vocab.eos_token_ids)
    rng = np.random.default_rng(1)
    for _ in range(30):
        want = _mask(one, out, n)
        assert (_mask(chars, out, n) == want).all()
        free = [t for t in np.flatnonzero(want).tolist() if t not in eos]
        if not free:
            break
        t = int(rng.choice(free))
        assert one.advance(t) and chars.advance(t)


@pytest.mark.parametrize("pattern, yes, no", [
    (r"(a|b)*a(a|b){15}", ["a" * 16, "b" * 9 + "a" + "b" * 15], ["b" * 16, "a" * 15]),
    (r"[\s\S]*a[\s\S]{20}", ["a" * 21, "日a" + "é" * 20], ["b" * 21, "a" * 20]),
    (r"[a-z]{0,50}[a-y]{0,50}[b-z]{0,50}", ["", "z" * 100, "a" * 100 + "b" * 50], ["a" * 151, "A"]),
])
def test_regexes_over_the_dfa_budget_compile_as_character_grammars(pattern, yes, no):
    g = compile_regex(pattern, budget=CompileBudget(seconds=600))
    assert len(g.lexeme_names) > 1  # not one lexeme
    for text in yes:
        assert g.accepts_text(text), text
    for text in no:
        assert not g.accepts_text(text), text


def test_a_regex_over_every_budget_is_still_refused():
    # the character grammar is over the rules budget too: the DFA's refusal is the answer
    with pytest.raises(CompileBudgetExceeded, match="dfa_states"):
        compile_regex(r"(a|b)*a(a|b){15}", budget=CompileBudget(seconds=600, dfa_states=100, rules=3))


def test_a_word_list_over_its_trie_budget_is_refused_not_spelled_out():
    words = [f"w{i}x" for i in range(300)]
    with pytest.raises(CompileBudgetExceeded, match="choice_states"):
        compile_regex("|".join(words), budget=CompileBudget(choice_states=50))
    big = parse_regex("|".join(f"{w}[0-9]" for w in [f"v{i}" for i in range(5000)]))
    assert char_grammar(big) is None  # over MAX_CHAR_GRAMMAR_NODES


@pytest.mark.parametrize("pattern, want", [
    ("a{0,4294967295}", (0, 4294967295)),
    ("a{4294967296}", (4294967296, 4294967296)),
    ("a{,4294967296}", (0, 4294967296)),
    ("a{99999999999999999999,}", (99999999999999999999, None)),
])
def test_counts_past_sres_limit_are_exact(pattern, want):
    node = parse_regex(pattern)
    assert (node.min, node.max) == want


def test_big_counts_leave_classes_escapes_and_other_numbers_alone():
    node = parse_regex(r"[{0,4294967295}]\{4294967296}4294967294x{5,4294967295}")
    rep = node.items[-1]
    assert (rep.min, rep.max) == (5, 4294967295)  # the stand-in was not a number written in it
    assert node.items[0].ranges == ((44, 44), (48, 48), (50, 50), (52, 55), (57, 57), (123, 123), (125, 125))
    g = compile_regex("x{0,4294967295}y")
    assert g.accepts_text("x" * 5000 + "y") and g.accepts_text("y") and not g.accepts_text("xx")
    with pytest.raises(ConstraintError, match="min repeat greater than max"):
        parse_regex("a{4294967296,5}")
