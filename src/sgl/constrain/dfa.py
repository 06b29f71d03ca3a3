"""A deterministic automaton over bytes: the compiled form of one regex/lexeme."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEAD = -1


@dataclass
class ByteDFA:
    """``table[state, byte]`` is the next state or ``DEAD`` (-1); state 0 is the start.

    ``table`` is int32 of shape ``(n_states, 256)``; ``accepting`` is bool of shape
    ``(n_states,)``. DFAs produced by ``automaton.to_dfa`` are minimal and have no
    dead states (every state can still reach an accepting state).
    """

    table: np.ndarray
    accepting: np.ndarray

    @property
    def n_states(self) -> int:
        return int(self.table.shape[0])

    def matches(self, data: bytes) -> bool:
        s = 0
        for b in data:
            s = int(self.table[s, b])
            if s == DEAD:
                return False
        return bool(self.accepting[s])
