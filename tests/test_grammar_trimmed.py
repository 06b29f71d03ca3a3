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
    assert (fast.lhs, fast.rhs, fast.nullable, fast.nonterminals) == (slow.lhs, slow.rhs, slow.nullable, slow.nonterminals)
