"""Stolcke's probabilistic Earley parser against independent brute-force computations.

Two oracles, neither sharing code with the parser:
* ``inside``: sentence probabilities by an inside (CKY-like) computation over spans that
  iterates each span's values to their fixed point, so ε-rules and unit cycles need no
  special treatment;
* ``enumerate_prefix``: prefix probabilities by exploring leftmost derivations, most
  probable first. It returns the resolved mass of derivations whose first |w| terminals
  are w and the mass left unexplored; for a consistent grammar the true value lies in
  [resolved, resolved + unexplored], which the tests check with the bound kept tiny.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time

import numpy as np
import pytest

from sgl.constrain.errors import ConstraintError
from sgl.constrain.grammar import Grammar, Rule, Terminal
from sgl.constrain.stolcke import StolckeParser, probability_closure

Spec = list[tuple[str, str, float]]  # (lhs, space-separated rhs, weight)


def make_grammar(spec: Spec, start: str = "S", ignore: list[str] | None = None) -> Grammar:
    lhs = {a for a, _, _ in spec}
    rules = [Rule(a, tuple(rhs.split()), w) for a, rhs, w in spec]
    terms = {s for r in rules for s in r.rhs if s not in lhs} | set(ignore or [])
    return Grammar(start, rules, {t: Terminal(t, t, True) for t in terms}, ignore or [])


def normalized(spec: Spec) -> list[tuple[str, tuple[str, ...], float]]:
    total: dict[str, float] = {}
    for a, _, w in spec:
        total[a] = total.get(a, 0.0) + w
    return [(a, tuple(rhs.split()), w / total[a]) for a, rhs, w in spec if w > 0]


def _as_set(x: str | set[str]) -> set[str]:
    return {x} if isinstance(x, str) else set(x)


def inside(spec: Spec, w: list, start: str = "S") -> float:
    """P(start =>* w), summing over the readings of set-valued positions."""
    rules = normalized(spec)
    nts = {a for a, _, _ in rules}
    w = [_as_set(x) for x in w]
    n = len(w)
    beta: dict[tuple[str, int, int], float] = {}

    def seq(rhs: tuple[str, ...], i: int, j: int, cur: dict[str, float]) -> float:
        g = {i: 1.0}  # end position -> prob of the rhs prefix deriving w[i:end]
        for s in rhs:
            new: dict[int, float] = {}
            for m, pm in g.items():
                if s not in nts:
                    if m < j and s in w[m]:
                        new[m + 1] = new.get(m + 1, 0.0) + pm
                    continue
                for m2 in range(m, j + 1):
                    b = cur[s] if (m, m2) == (i, j) else beta[(s, m, m2)]
                    if b:
                        new[m2] = new.get(m2, 0.0) + pm * b
            g = new
        return g.get(j, 0.0)

    for length in range(n + 1):
        for i in range(n - length + 1):
            j = i + length
            cur = dict.fromkeys(nts, 0.0)
            for _ in range(100_000):
                new = dict.fromkeys(nts, 0.0)
                for a, rhs, p in rules:
                    new[a] += p * seq(rhs, i, j, cur)
                delta = max(abs(new[x] - cur[x]) for x in nts)
                cur = new
                if delta < 1e-17:
                    break
            for x in nts:
                beta[(x, i, j)] = cur[x]
    return beta[(start, 0, n)]


def _min_lengths(rules: list[tuple[str, tuple[str, ...], float]]) -> dict[str, float]:
    nts = {a for a, _, _ in rules}
    size: dict[str, float] = {a: math.inf for a in nts}
    changed = True
    while changed:
        changed = False
        for a, rhs, _ in rules:
            n = sum(size[s] if s in nts else 1 for s in rhs)
            if n < size[a]:
                size[a], changed = n, True
    return size | {s: 1 for _, rhs, _ in rules for s in rhs if s not in nts}


def enumerate_prefix(
    spec: Spec, w: list, start: str = "S", tol: float = 1e-10, budget: int = 400_000
):
    """(resolved, unexplored): mass of leftmost derivations whose sentence starts with w."""
    rules = normalized(spec)
    by_lhs: dict[str, list[tuple[tuple[str, ...], float]]] = {}
    for a, rhs, p in rules:
        by_lhs.setdefault(a, []).append((rhs, p))
    w = [_as_set(x) for x in w]
    min_len = _min_lengths(rules)
    pending: dict[tuple[int, tuple[str, ...]], float] = {}
    heap: list = []
    tie = itertools.count()
    resolved = 0.0

    def push(i: int, rest: tuple[str, ...], p: float) -> None:
        nonlocal resolved
        while rest and rest[0] not in by_lhs and i < len(w):
            if rest[0] not in w[i]:
                return  # mismatch: resolved, not counted
            i, rest = i + 1, rest[1:]
        if i == len(w):
            resolved += p
            return
        if not rest:
            return  # sentence shorter than w
        # Symbols after those that surely yield the rest of w cannot change the outcome,
        # and in a consistent grammar they derive something with probability 1: drop them.
        need, cut = len(w) - i, 0
        while cut < len(rest) and need > 0:
            need -= min_len[rest[cut]]
            cut += 1
        rest = rest[:cut]
        key = (i, rest)
        pending[key] = pending.get(key, 0.0) + p
        heapq.heappush(heap, (-pending[key], next(tie), key))

    push(0, (start,), 1.0)
    for step in range(budget):
        if not heap or (step % 1000 == 0 and sum(pending.values()) < tol):
            break
        negp, _, key = heapq.heappop(heap)
        if pending.get(key) != -negp:
            continue  # stale entry
        p = pending.pop(key)
        i, rest = key
        for rhs, q in by_lhs[rest[0]]:
            push(i, rhs + rest[1:], p * q)
    return resolved, sum(pending.values())


def check_sentence(
    parser: StolckeParser, spec: Spec, w: list, tol: float, start: str = "S"
) -> None:
    got = parser.sentence_logprob_of(w)
    want = inside(spec, w, start)
    if want == 0.0:
        assert got == -math.inf, (w, got)
    else:
        assert math.exp(got) == pytest.approx(want, rel=tol, abs=tol), (w, math.exp(got), want)


def check_prefix(parser: StolckeParser, spec: Spec, w: list, start: str = "S") -> None:
    got = parser.prefix_logprob_of(w)
    lo, gap = enumerate_prefix(spec, w, start)
    assert gap < 1e-8, f"enumeration did not converge for {w}: {gap}"
    p = 0.0 if got == -math.inf else math.exp(got)
    assert lo - 1e-9 <= p <= lo + gap + 1e-9, (w, p, lo, gap)


def check_mass_split(parser: StolckeParser, w: list, alphabet: list[str]) -> None:
    """Consistent grammar: P(w...) = P(w) + sum over t of P(w t...)."""

    def p(x: float) -> float:
        return 0.0 if x == -math.inf else math.exp(x)

    parts = p(parser.sentence_logprob_of(w))
    parts += sum(p(parser.prefix_logprob_of(w + [t])) for t in alphabet)
    assert parts == pytest.approx(p(parser.prefix_logprob_of(w)), rel=1e-9, abs=1e-12), w


def all_strings(alphabet: list[str], max_len: int):
    for n in range(max_len + 1):
        yield from (list(t) for t in itertools.product(alphabet, repeat=n))


def catalan_sentence(n: int, p: float = 0.3) -> float:
    return math.comb(2 * (n - 1), n - 1) / n * p ** (n - 1) * (1 - p) ** n


# -- classic grammars with closed forms ------------------------------------------------------

AMBIG: Spec = [("S", "S S", 0.3), ("S", "a", 0.7)]


def test_ambiguous_catalan_exact():
    parser = StolckeParser(make_grammar(AMBIG))
    for n in range(1, 13):
        w = ["a"] * n
        assert math.exp(parser.sentence_logprob_of(w)) == pytest.approx(
            catalan_sentence(n), rel=1e-9
        )
        # Proper and consistent (0.3 < 0.5): prefix = 1 - P(shorter sentences).
        prefix = 1.0 - sum(catalan_sentence(m) for m in range(1, n))
        assert math.exp(parser.prefix_logprob_of(w)) == pytest.approx(prefix, rel=1e-9)
    assert parser.sentence_logprob_of([]) == -math.inf
    assert parser.prefix_logprob_of([]) == 0.0
    assert parser.prefix_logprob_of(["b"]) == -math.inf


def test_ambiguous_long_input_no_underflow():
    parser = StolckeParser(make_grammar(AMBIG))
    n = 90
    want = (
        math.lgamma(2 * n - 1)
        - 2 * math.lgamma(n)
        - math.log(n)
        + (n - 1) * math.log(0.3)
        + n * math.log(0.7)
    )
    assert parser.sentence_logprob_of(["a"] * n) == pytest.approx(want, rel=1e-9)


EXPR: Spec = [
    ("E", "E + T", 1),
    ("E", "T", 2),
    ("T", "T * F", 1),
    ("T", "F", 2),
    ("F", "( E )", 1),
    ("F", "x", 3),
]


def test_left_recursive_expressions_against_oracles():
    parser = StolckeParser(make_grammar(EXPR, start="E"))
    cases = [
        "x",
        "x + x",
        "x * x + x",
        "( x )",
        "( x + x ) * x",
        "x + x * ( x )",
        "x x",
        "+ x",
        "( ( x ) )",
        "x * x * x",
    ]
    for text in cases:
        check_sentence(parser, EXPR, text.split(), 1e-9, start="E")
    for text in ["x", "x +", "( x", "x * ( x +", "( (", "x x", "+"]:
        check_prefix(parser, EXPR, text.split(), start="E")
        check_mass_split(parser, text.split(), ["x", "+", "*", "(", ")"])


def test_left_recursion_long_input_scaled():
    # E -> E + T | T (1:1), T -> x: "x + x ... + x" with k terms has probability 0.5^k and
    # prefix probability 0.5^(k-1); 0.5^3000 underflows a double without rescaling.
    spec: Spec = [("E", "E + T", 1), ("E", "T", 1), ("T", "x", 1)]
    parser = StolckeParser(make_grammar(spec, start="E"))
    k = 3000
    state = parser.start()
    for i in range(k):
        if i:
            state = parser.advance(state, "+")
        state = parser.advance(state, "x")
        assert state is not None
    assert parser.sentence_logprob(state) == pytest.approx(k * math.log(0.5), rel=1e-9)
    assert parser.prefix_logprob(state) == pytest.approx((k - 1) * math.log(0.5), rel=1e-9)


UNIT_CYCLE: Spec = [
    ("S", "A", 1),
    ("S", "S ; A", 1),
    ("A", "B", 2),
    ("A", "a", 1),
    ("B", "A", 1),
    ("B", "b", 1),
    ("B", "A B", 1),
]


def test_unit_production_cycle():
    parser = StolckeParser(make_grammar(UNIT_CYCLE))
    for w in all_strings(["a", "b"], 4):
        check_sentence(parser, UNIT_CYCLE, w, 1e-9)
    for w in [["a"], ["b"], ["a", ";"], ["b", "a"], ["a", "b", ";", "b"]]:
        check_sentence(parser, UNIT_CYCLE, w, 1e-9)
        check_prefix(parser, UNIT_CYCLE, w)
        check_mass_split(parser, w, ["a", "b", ";"])


def test_pure_unit_cycle_brief_example():
    # A -> B, B -> A | b: the only sentence is "b", reached through any number of cycles.
    spec: Spec = [("A", "B", 1), ("B", "A", 1), ("B", "b", 1)]
    parser = StolckeParser(make_grammar(spec, start="A"))
    assert parser.sentence_logprob_of(["b"]) == pytest.approx(0.0, abs=1e-12)
    assert parser.prefix_logprob_of(["b"]) == pytest.approx(0.0, abs=1e-12)
    assert parser.advance(parser.parse(["b"]), "b") is None


NULLABLE: Spec = [
    ("S", "N S N", 1),
    ("S", "t", 2),
    ("S", "A", 1),  # hidden left recursion through N
    ("N", "", 2),
    ("N", "n", 1),
    ("A", "A M", 1),
    ("A", "a", 2),  # A -> A M with M nullable: a unit loop after ε-removal
    ("M", "", 1),
    ("M", "m M", 1),
]


def test_nullable_rules():
    parser = StolckeParser(make_grammar(NULLABLE))
    for w in all_strings(["t", "n", "a", "m"], 3):
        check_sentence(parser, NULLABLE, w, 1e-8)
    for w in [["t"], ["n"], ["n", "t"], ["a", "m"], ["n", "a", "m", "n"], ["a"], ["m"]]:
        check_prefix(parser, NULLABLE, w)
    for w in [[], ["n"], ["a", "m"], ["n", "n", "t"]]:
        check_mass_split(parser, w, ["t", "n", "a", "m"])


def test_nullable_start_and_empty_sentence():
    # S -> a S | ε: P(a^n) = 0.4^n * 0.6, prefix(a^n) = 0.4^n.
    spec: Spec = [("S", "a S", 2), ("S", "", 3)]
    parser = StolckeParser(make_grammar(spec))
    assert parser.sentence_logprob_of([]) == pytest.approx(math.log(0.6), rel=1e-12)
    for n in range(1, 6):
        w = ["a"] * n
        assert parser.sentence_logprob_of(w) == pytest.approx(
            n * math.log(0.4) + math.log(0.6), rel=1e-12
        )
        assert parser.prefix_logprob_of(w) == pytest.approx(n * math.log(0.4), rel=1e-12)


def test_many_nullables_in_one_rule_is_binarized():
    spec: Spec = [("S", "X X X X X X X X t X", 1), ("X", "", 1), ("X", "x", 1)]
    parser = StolckeParser(make_grammar(spec))
    for w in [["t"], ["x", "t"], ["x", "x", "t", "x"], ["t", "x", "x"], ["x"] * 9 + ["t"]]:
        check_sentence(parser, spec, w, 1e-9)
    assert parser.sentence_logprob_of(["t"]) == pytest.approx(9 * math.log(0.5), rel=1e-12)


FINITE: Spec = [
    ("S", "A B", 2),
    ("S", "C", 1),
    ("S", "A C", 1),
    ("A", "a", 1),
    ("A", "a a", 1),
    ("A", "", 1),
    ("B", "b", 3),
    ("B", "a b", 1),
    ("C", "a b", 1),
    ("C", "B", 1),
]


def test_finite_ambiguous_language_exact():
    parser = StolckeParser(make_grammar(FINITE))
    total = 0.0
    sentences = {}
    for w in all_strings(["a", "b"], 5):
        want = inside(FINITE, w)
        sentences[tuple(w)] = want
        total += want
        check_sentence(parser, FINITE, w, 1e-12)
    assert total == pytest.approx(1.0, abs=1e-12)  # the language is finite: every sentence seen
    for w in all_strings(["a", "b"], 4):
        prefix = sum(p for s, p in sentences.items() if list(s[: len(w)]) == w)
        got = parser.prefix_logprob_of(w)
        assert (math.exp(got) if got > -math.inf else 0.0) == pytest.approx(prefix, abs=1e-12), w


def test_set_valued_positions_sum_over_readings():
    parser = StolckeParser(make_grammar(FINITE))
    both = [{"a", "b"}, "b"]
    want = inside(FINITE, ["a", "b"]) + inside(FINITE, ["b", "b"])
    assert math.exp(parser.sentence_logprob_of(both)) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(inside(FINITE, both), rel=1e-12)
    pre = math.exp(parser.prefix_logprob_of(["a", "a"])) + math.exp(
        parser.prefix_logprob_of(["b", "a"])
    )
    assert math.exp(parser.prefix_logprob_of([{"a", "b"}, "a"])) == pytest.approx(pre, rel=1e-12)
    # Unknown alternatives are simply no reading.
    assert parser.sentence_logprob_of([{"a", "zzz"}, "b"]) == parser.sentence_logprob_of(["a", "b"])
    # Ambiguous readings inside an ambiguous grammar.
    parser = StolckeParser(make_grammar(UNIT_CYCLE))
    w = [{"a", "b"}, ";", {"a", "b"}]
    check_sentence(parser, UNIT_CYCLE, w, 1e-9)
    check_prefix(parser, UNIT_CYCLE, w)


def test_states_are_persistent():
    parser = StolckeParser(make_grammar(EXPR, start="E"))
    s1 = parser.parse(["x", "+"])
    a = parser.advance(s1, "x")
    b = parser.advance(s1, "(")  # branch from the same state
    c = parser.advance(a, "*")
    assert parser.sentence_logprob(a) == parser.sentence_logprob_of(["x", "+", "x"])
    assert parser.prefix_logprob(b) == parser.prefix_logprob_of(["x", "+", "("])
    assert parser.prefix_logprob(c) == parser.prefix_logprob_of(["x", "+", "x", "*"])
    assert parser.advance(s1, "+") is None
    assert parser.sentence_logprob(s1) == -math.inf
    assert parser.next_terminals(s1) == {"x", "("}
    assert parser.next_terminals(a) == {"+", "*"}


def test_ignored_lexemes_are_skipped():
    parser = StolckeParser(make_grammar(EXPR, start="E", ignore=["WS"]))
    state = parser.parse(["x", "WS", "+", "WS", "x"])
    assert state is not None and state.pos == 3
    assert parser.sentence_logprob(state) == parser.sentence_logprob_of(["x", "+", "x"])


def test_zero_weights_and_useless_rules():
    # L is never productive (L -> L l only); it just loses mass, as for a direct parse.
    spec: Spec = [("S", "a", 1), ("S", "L", 1), ("S", "b", 0), ("L", "L l", 1)]
    parser = StolckeParser(make_grammar(spec))
    assert parser.sentence_logprob_of(["a"]) == pytest.approx(math.log(0.5))
    assert parser.sentence_logprob_of(["b"]) == -math.inf


def test_bad_weights_and_divergent_closures_raise():
    with pytest.raises(ConstraintError):
        StolckeParser(make_grammar([("S", "a", math.inf)]))
    with pytest.raises(ConstraintError, match="improper"):
        probability_closure([{0: 0.5, 1: 0.5}, {0: 1.0}], ["A", "B"], "left-corner")
    with pytest.raises(ConstraintError):
        probability_closure([{0: 1.0}], ["A"], "unit-production")
    rows = probability_closure([{0: 0.5, 1: 0.25}, {0: 0.5}, {}], ["A", "B", "C"], "left-corner")
    want = np.linalg.inv(np.eye(2) - np.array([[0.5, 0.25], [0.5, 0.0]]))
    assert rows[0][1] == pytest.approx(want[0, 1]) and rows[1][0] == pytest.approx(want[1, 0])
    assert rows[2] == {2: 1.0}


def random_spec(rng: random.Random) -> Spec:
    nts = ["S", "A", "B", "C"]
    syms = nts + ["a", "b"]
    spec: Spec = []
    for x in nts:
        spec.append((x, rng.choice(["a", "b"]), rng.uniform(1.5, 3)))  # keep it subcritical
        for _ in range(rng.randint(1, 3)):
            rhs = [rng.choice(syms) for _ in range(rng.choice([0, 1, 1, 2, 2, 3]))]
            spec.append((x, " ".join(rhs), rng.uniform(0.1, 1)))
    return spec


def test_random_grammars_against_oracles():
    rng = random.Random(1234)
    checked = 0
    deadline = time.monotonic() + 8
    for _ in range(25):
        spec = random_spec(rng)
        parser = StolckeParser(make_grammar(spec))
        for w in rng.sample(list(all_strings(["a", "b"], 3)), 6):
            check_sentence(parser, spec, w, 1e-8)
        for w in rng.sample(list(all_strings(["a", "b"], 2))[1:], 3):
            lo, gap = enumerate_prefix(spec, w, budget=20_000)
            if gap > 1e-8:
                continue  # slow to converge (near-critical): no rigorous bound
            p = parser.prefix_logprob_of(w)
            p = 0.0 if p == -math.inf else math.exp(p)
            assert lo - 1e-9 <= p <= lo + gap + 1e-9, (spec, w, p, lo, gap)
            checked += 1
        if time.monotonic() > deadline:
            break
    assert checked >= 20
