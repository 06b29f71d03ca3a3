"""Minimisation's block partition (``dfa.equivalence_blocks``): the vectorised Moore rounds, the
Hopcroft worklist they hand over to, and any mix of the two give the same blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgl.constrain.automata import dfa


def _canonical(blocks) -> list[int]:
    """Block ids renumbered by first occurrence (partitions compare equal as lists)."""
    seen: dict[int, int] = {}
    return [seen.setdefault(b, len(seen)) for b in np.asarray(blocks).tolist()]


def _oracle(table: np.ndarray, accepting: np.ndarray) -> list[int]:
    """Moore's refinement with exact row sorting, run to its fixpoint."""
    part = accepting.astype(np.int64)
    count = len(np.unique(part))
    while True:
        succ = np.where(table >= 0, part[table.clip(0)], -1)
        _, part = np.unique(np.column_stack([part, succ]), axis=0, return_inverse=True)
        part = part.reshape(-1)
        if len(np.unique(part)) == count:
            return _canonical(part)
        count = len(np.unique(part))


@st.composite
def _trim_dfas(draw) -> tuple[np.ndarray, np.ndarray]:
    """A partial DFA whose every state reaches acceptance (label 0 walks a chain to
    the last state, which accepts), so no state is equivalent to a missing edge."""
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, 6))
    cells = draw(st.lists(st.integers(-1, n - 1), min_size=n * k, max_size=n * k))
    table = np.array(cells, dtype=np.int64).reshape(n, k)
    table[:-1, 0] = np.arange(1, n)
    accepting = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    accepting[-1] = True
    return table, accepting


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(_trim_dfas(), st.sampled_from([0, 1, 2, 5, dfa.MOORE_ROUNDS]))
def test_blocks_equal_moore_fixpoint_whatever_the_handover(case, rounds) -> None:
    table, accepting = case
    saved = dfa.MOORE_ROUNDS
    dfa.MOORE_ROUNDS = rounds
    try:
        got = dfa.equivalence_blocks(table, accepting)
    finally:
        dfa.MOORE_ROUNDS = saved
    assert _canonical(got) == _oracle(table, accepting)


@pytest.mark.parametrize("n", [200, 5000])
def test_long_chain_goes_past_the_moore_rounds(n: int) -> None:
    """A chain whose states differ only by their distance to the end needs ``n``
    rounds: the worklist finishes it, and every state stays its own block."""
    table = np.full((n, 2), -1, dtype=np.int64)
    table[:-1, 0] = np.arange(1, n)
    accepting = np.zeros(n, dtype=bool)
    accepting[-1] = True
    assert not dfa.moore_blocks(table, accepting, dfa.MOORE_ROUNDS)[1]
    assert len(set(np.asarray(dfa.equivalence_blocks(table, accepting)).tolist())) == n


def test_equal_rows_falls_back_to_exact_sorting_on_wide_rows() -> None:
    """Rows wider than the hash weights are grouped by exact sorting."""
    rows = np.zeros((3, len(dfa.HASH_WEIGHTS) + 1), dtype=np.int64)
    rows[1, -1] = 1
    first, inv = dfa.equal_rows(rows)
    assert len(first) == 2 and inv[0] == inv[2] != inv[1]
