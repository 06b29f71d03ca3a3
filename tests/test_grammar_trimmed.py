"""Grammar.mark_trimmed / is_trimmed: later compile steps skip re-pruning only while
the rules are the ones prune vouched for, and the parser tables come out the same."""

from __future__ import annotations

from sgl.constrain.earley import build_tables
from sgl.constrain.grammar import Grammar, Rule, Terminal, prune


def _grammar() -> Grammar:
    rules = [Rule("s", ("a", "x")), Rule("s", ("dead",)), Rule("dead", ("dead", "a")), Rule("x", ("b",)),
             Rule("unused", ("a",))]
    terms = {"a": Terminal("a", "a", True), "b": Terminal("b", "b", True)}
    return Grammar("s", rules, terms)


def test_prune_marks_and_changes_void_the_mark():
    g = _grammar()
    assert not g.is_trimmed()
    p = prune(g)
    assert p.is_trimmed()
    assert {r.lhs for r in p.rules} == {"s", "x"}
    p.rules.append(Rule("s", ("dead2",)))
    assert not p.is_trimmed()


def test_tables_of_a_trimmed_grammar_are_the_same():
    p = prune(_grammar())
    ids = {n: i for i, n in enumerate(p.terminals)}
    fast = build_tables(p, ids, frozenset())
    slow_g = Grammar(p.start, list(p.rules), dict(p.terminals))  # same rules, no mark
    assert not slow_g.is_trimmed()
    slow = build_tables(slow_g, ids, frozenset())
    assert (fast.lhs, fast.rhs, fast.nullable) == (slow.lhs, slow.rhs, slow.nullable)


def _reference_prune(g: Grammar, dead: frozenset) -> list[Rule] | None:
    """What prune keeps, spelled with the analyses (productive symbols in the order
    ``analysis.productive`` finds them, then reachability), or None if the start is dead."""
    from sgl.constrain import analysis

    pairs = analysis.pairs(g.rules)
    live = g.terminals.keys() - dead
    found = analysis.productive(pairs, live)
    if g.start not in found:
        return None
    alive = set(found) | live
    kept = [i for i, (lhs, rhs) in enumerate(pairs) if lhs in alive and alive.issuperset(rhs)]
    reach = analysis.reachable([pairs[i] for i in kept], g.start)
    return [g.rules[i] for sym in found if sym in reach for i in kept if pairs[i][0] == sym]


def test_prune_matches_the_analyses_on_random_grammars():
    """prune's one-pass worklist (it groups the rules and finds the productive symbols
    together) keeps the same rules in the same bottom-up order as the analyses."""
    import random

    from sgl.constrain.errors import ConstraintError

    rng = random.Random(7)
    for _ in range(300):
        nts = [f"n{i}" for i in range(rng.randint(1, 8))]
        terms = {t: Terminal(t, t, True) for t in ("a", "b", "c")}
        rules = [Rule(rng.choice(nts), tuple(rng.choice(nts + list(terms) + ["undefined"]) for _ in range(rng.randint(0, 3))))
                 for _ in range(rng.randint(1, 14))]
        rules = [r for r in rules if "undefined" not in r.rhs or rng.random() < 0.3]
        g = Grammar("n0", rules, terms)
        dead = frozenset(rng.sample(sorted(terms), rng.randint(0, 2)))
        want = _reference_prune(g, dead)
        try:
            got = prune(g, dead).rules
        except ConstraintError:
            got = None
        assert got == want, (rules, dead)
