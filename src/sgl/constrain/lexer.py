"""The lexer: one DFA per set of lexemes the parser allows next, built once and cached.

A ``LexerDFA`` runs all allowed lexemes in parallel (the product of their DFAs).
Lexing is greedy: a lexeme ends when the next byte cannot extend it, and a state where
several lexemes accept hands all of them to the parser. Every lexeme DFA is given a
start state without incoming edges, so state 0 of a ``LexerDFA`` always means "no
byte of the current lexeme read yet".
"""

from __future__ import annotations

import numpy as np

from .dfa import DEAD, ByteDFA
from .errors import CompileBudgetExceeded

MAX_LEXER_STATES = 200_000


def with_fresh_start(dfa: ByteDFA) -> ByteDFA:
    """An equivalent DFA whose start state has no incoming edges and never accepts ε.

    A lexeme must be non-empty (an empty one would never advance the lexer); the
    frontend's grammar keeps ε through an optional rule instead (see ``compiled``).
    """
    table, acc = dfa.table, dfa.accepting
    if not (table == 0).any() and not acc[0]:
        return dfa
    shifted = np.where(table >= 0, table + 1, DEAD).astype(np.int32)
    new_table = np.vstack([shifted[0:1], shifted])
    new_acc = np.concatenate([[False], acc])
    return ByteDFA(new_table, new_acc)


class LexerDFA:
    """The product DFA of a set of lexeme DFAs.

    ``table[state, byte]`` -> state or -1; ``accepts[state]`` is the frozenset of lexeme
    ids complete in that state (empty if none). ``rows`` is the same table as Python lists,
    for the per-byte path where numpy scalar access would be slow.
    """

    def __init__(self, lexemes: frozenset[int], dfas: list[ByteDFA]):
        self.lexemes = lexemes
        order = sorted(lexemes)
        start = tuple((lex, 0) for lex in order)
        index: dict[tuple, int] = {start: 0}
        states = [start]
        rows: list[np.ndarray] = []
        i = 0
        while i < len(states):
            comp = states[i]
            i += 1
            if not comp:
                rows.append(np.full(256, DEAD, dtype=np.int32))
                continue
            nxt = np.stack([dfas[lex].table[s] for lex, s in comp])  # (k, 256)
            cols, inverse = np.unique(nxt, axis=1, return_inverse=True)
            targets = np.empty(cols.shape[1], dtype=np.int32)
            for j in range(cols.shape[1]):
                key = tuple((lex, int(s)) for (lex, _), s in zip(comp, cols[:, j]) if s >= 0)
                if not key:
                    targets[j] = DEAD
                    continue
                k = index.get(key)
                if k is None:
                    k = index[key] = len(states)
                    states.append(key)
                    if len(states) > MAX_LEXER_STATES:
                        raise CompileBudgetExceeded(
                            f"lexer for {len(lexemes)} lexemes exceeds {MAX_LEXER_STATES} states"
                        )
                targets[j] = k
            rows.append(targets[inverse.reshape(-1)])
        self.table = np.stack(rows).astype(np.int32)
        self.accepts = [
            frozenset(lex for lex, s in comp if dfas[lex].accepting[s]) for comp in states
        ]
        self.accepting = np.array([bool(a) for a in self.accepts])
        self.rows = self.table.tolist()
        self.n_states = len(states)
        self.walk_cache: dict[int, object] = {}  # state -> token walk result (see mask.py)


class Lexer:
    """Builds and caches one ``LexerDFA`` per set of allowed lexemes."""

    def __init__(self, dfas: list[ByteDFA]):
        self.dfas = [with_fresh_start(d) for d in dfas]
        self._cache: dict[frozenset[int], LexerDFA] = {}

    def for_lexemes(self, lexemes: frozenset[int]) -> LexerDFA:
        lex = self._cache.get(lexemes)
        if lex is None:
            lex = self._cache[lexemes] = LexerDFA(lexemes, self.dfas)
        return lex
