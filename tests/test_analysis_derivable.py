"""``analysis.derivable`` against a naive fixpoint, on random grammars with repeated
symbols, empty rules and unproductive cycles, for set and callable ``ground``."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgl.constrain import analysis

_NTS = [f"N{i}" for i in range(6)]
_TS = ["a", "b"]
_rules = st.lists(
    st.tuples(st.sampled_from(_NTS), st.lists(st.sampled_from(_NTS + _TS), max_size=4).map(tuple)),
    max_size=14,
)


def _fixpoint(rules, ground: set) -> set:
    """Nonterminals deriving a string of ``ground`` symbols: iterate to the fixpoint."""
    known: set = set()
    while True:
        more = {lhs for lhs, rhs in rules if all(s in ground or s in known for s in rhs)}
        if more <= known:
            return known
        known |= more


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(_rules, st.sampled_from(["terminals", "nothing"]), st.booleans())
def test_derivable_equals_fixpoint_bottom_up(rules, which, as_callable) -> None:
    ground = set(_TS) if which == "terminals" else set()
    found = analysis.derivable(rules, ground.__contains__ if as_callable else frozenset(ground))
    assert len(found) == len(set(found))
    assert set(found) == _fixpoint(rules, ground)
    # bottom-up: each symbol has a rule whose symbols were all found before it
    for k, sym in enumerate(found):
        before = set(found[:k]) | ground
        assert any(lhs == sym and all(s in before for s in rhs) for lhs, rhs in rules)
