"""Counted repetition in the grammar with O(log n) rules: ``unit{lo,hi}`` for large counts.

``minItems: 100000`` or ``maxLength: 10**9`` cannot be unrolled into states (one per
count) nor compiled into one lexeme's automaton. Counting in binary can: ``X_k`` derives
exactly ``2**k`` units (``X_k -> X_{k-1} X_{k-1}``), so exactly ``a`` units is the
sequence of the ``X_k`` of ``a``'s one bits, and "at most ``m``" chooses, block by block
from the largest, whether each block is there. Each count has exactly one derivation
(the grammar is unambiguous) and the language is exact: no count outside ``[lo, hi]``.
An Earley parser keeps O(log² n) items per column for it.
"""

from __future__ import annotations

from ..grammar import GrammarBuilder


class CountedRepeat:
    """Builds the nonterminals for one unit (a tuple of grammar symbols)."""

    def __init__(self, b: GrammarBuilder, prefix: str, unit: tuple[str, ...]):
        self.b, self.prefix, self.unit = b, prefix, unit
        self._blocks: list[str] = []
        self._below: dict[int, str] = {}
        self._at_most: dict[int, str] = {}
        self._star: str | None = None

    def block(self, k: int) -> str:
        """``X_k``: exactly ``2**k`` units."""
        while len(self._blocks) <= k:
            j = len(self._blocks)
            name = f"{self.prefix}@X{j}"
            self.b.rule(name, self.unit if j == 0 else (self._blocks[j - 1], self._blocks[j - 1]))
            self._blocks.append(name)
        return self._blocks[k]

    def exactly(self, a: int) -> tuple[str, ...]:
        """Symbols deriving exactly ``a`` units (largest block first)."""
        return tuple(self.block(k) for k in range(a.bit_length() - 1, -1, -1) if a >> k & 1)

    def below(self, k: int) -> str:
        """``L_k``: 0 to ``2**k - 1`` units (``L_k -> L_{k-1} | X_{k-1} L_{k-1}``)."""
        got = self._below.get(k)
        if got is None:
            got = self._below[k] = f"{self.prefix}@L{k}"
            if k == 0:
                self.b.rule(got, ())
            else:
                inner = self.below(k - 1)
                self.b.rule(got, (inner,))
                self.b.rule(got, (self.block(k - 1), inner))
        return got

    def at_most(self, m: int) -> str:
        """0 to ``m`` units: fewer than the top block, or the top block and at most the rest."""
        got = self._at_most.get(m)
        if got is None:
            got = self._at_most[m] = f"{self.prefix}@M{m}"
            if m == 0:
                self.b.rule(got, ())
            else:
                k = m.bit_length() - 1
                self.b.rule(got, (self.below(k),))
                self.b.rule(got, (self.block(k), self.at_most(m - (1 << k))))
        return got

    def star(self) -> str:
        """Any number of units, left-recursive (linear for an Earley parser)."""
        if self._star is None:
            name = self._star = f"{self.prefix}@R"
            self.b.rule(name, ())
            self.b.rule(name, (name, *self.unit))
        return self._star

    def between(self, lo: int, hi: int | None) -> tuple[str, ...]:
        """Symbols deriving ``lo`` to ``hi`` units (``hi`` None: no upper bound)."""
        tail = self.star() if hi is None else self.at_most(hi - lo)
        return self.exactly(lo) + (tail,)
