"""One DFA minimiser (``dfa._minimize``) serves the byte automata and the code-point
automata of boolean string constraints (``derivatives.minimize``): the result keeps
the language, and no two of its states are equivalent."""

from __future__ import annotations

import random

import pytest

from sgl.constrain.automata import derivatives as D
from sgl.constrain.automata.ranges import positive_multiples
from sgl.constrain.regex import parse_regex

PATTERNS = [r"[a-z]+", r"(ab|a)*b", r"\d{2,5}", r"[^x]*x[^x]*", r"(a|b)*a(a|b){3}", r"foo|bar|baz",
            r"[a-c]{0,6}", r".*", r"x?y?z?", r"(?:[0-9]+\.)?[0-9]+", r"[\u00e9-\u00ff]+a"]
ALPHABET = "abcxyz019.\u00e9\u00ff-"


def _exprs():
    for p in PATTERNS:
        n = parse_regex(p)
        yield p, n
        yield f"not {p}", D.mk_not(n)
        for q in PATTERNS[:4]:
            yield f"{p} and not {q}", D.mk_and(n, D.mk_not(parse_regex(q)))
        yield f"{p} length 1-4", D.restrict_length(n, 1, 4)[0]


def _step(dfa: D.CharDFA, s: int, c: int) -> int:
    return next((t for cs, t in dfa.edges[s] if D.in_chars(cs, c)), -1)


def _accepts(dfa: D.CharDFA, text: str) -> bool:
    s = 0
    for ch in text:
        s = _step(dfa, s, ord(ch))
        if s < 0:
            return False
    return bool(dfa.accepting[s])


def _matches(e, text: str) -> bool:
    for ch in text:
        e = D.derivative(e, ord(ch))
    return D.nullable(e)


def _all_distinguishable(dfa: D.CharDFA) -> bool:
    """Every pair of states has a string that one accepts and the other does not
    (the missing transition is the dead state, -1)."""
    cuts = sorted({lo for es in dfa.edges for cs, _ in es for lo, hi in cs.ranges}
                  | {hi + 1 for es in dfa.edges for cs, _ in es for lo, hi in cs.ranges} | {0})
    n = len(dfa.edges)
    if n == 1 and not dfa.accepting[0] and not dfa.edges[0]:
        return True  # the empty language: one rejecting state, its canonical form

    def acc(s):
        return s >= 0 and dfa.accepting[s]

    # pairs distinguished by some string: a fixpoint backwards from acceptance differing
    dist = {(i, j) for i in range(-1, n) for j in range(-1, n) if acc(i) != acc(j)}
    changed = True
    while changed:
        changed = False
        for i in range(-1, n):
            for j in range(i + 1, n):
                if (i, j) in dist:
                    continue
                for c in cuts:
                    a = _step(dfa, i, c) if i >= 0 else -1
                    b = _step(dfa, j, c)
                    if (a, b) in dist or (b, a) in dist:
                        dist.add((i, j))
                        changed = True
                        break
    return all((i, j) in dist for i in range(-1, n) for j in range(i + 1, n))


@pytest.mark.parametrize("name, e", list(_exprs()), ids=[n for n, _ in _exprs()])
def test_minimized_derivative_dfa_keeps_the_language_and_is_minimal(name, e):
    m = D.minimize(D.expr_dfa(e))
    rng = random.Random(name)
    for _ in range(200):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 9)))
        assert _accepts(m, text) == _matches(e, text), text
    assert _all_distinguishable(m)
    assert len(D.minimize(m).edges) == len(m.edges)


def test_dead_states_are_dropped_before_minimising():
    # "t" states with no non-zero digit never accept: a DFA with dead states
    node = positive_multiples(3, 1)
    for text in ["3", "0.3", "1.2", "12", "0.30", "4", "0.0", "0.1"]:
        want = "." in text and int(text.replace(".", "")) % 3 == 0 and int(text.replace(".", "")) > 0 \
            or "." not in text and int(text) % 3 == 0 and int(text) > 0
        assert _matches(node, text) == want, text
    dead = D.CharDFA([[(D.Chars(((97, 97),)), 1), (D.Chars(((98, 98),)), 2)], [], [(D.Chars(((98, 98),)), 2)]],
                     [False, True, False])
    m = D.minimize(dead)
    assert len(m.edges) == 2 and _all_distinguishable(m)
    assert _accepts(m, "a") and not _accepts(m, "b") and not _accepts(m, "bb")
