"""The lexer: one DFA per set of lexemes the parser allows next, built once and cached.

A ``LexerDFA`` runs all allowed lexemes in parallel (the product of their DFAs).
Lexing is greedy: a lexeme ends when the next byte cannot extend it, and a state where
several lexemes accept hands all of them to the parser. Every lexeme DFA is given a
start state without incoming edges, so state 0 of a ``LexerDFA`` always means "no
byte of the current lexeme read yet".
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

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


def dfa_key(dfa: ByteDFA) -> bytes:
    """A content hash of a DFA: equal DFAs share lexers (and their token walks) across grammars."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(dfa.table).tobytes())
    h.update(np.ascontiguousarray(dfa.accepting).tobytes())
    return h.digest()


class LexerCore:
    """The product DFA of an ordered tuple of lexeme DFAs; shared by content.

    ``table[state, byte]`` -> state or -1; ``accepts[state]`` holds the *positions* (in
    the tuple) of the lexemes complete in that state. ``rows`` is the table as Python
    lists for the per-byte path, where numpy scalar access would be slow.
    ``walk_cache`` keeps, per state, the walk of the whole vocabulary (see ``mask.py``).
    """

    def __init__(self, dfas: list[ByteDFA]):
        start = tuple((i, 0) for i in range(len(dfas)))
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
            nxt = np.stack([dfas[k].table[s] for k, s in comp])  # (k, 256)
            cols, inverse = np.unique(nxt, axis=1, return_inverse=True)
            targets = np.empty(cols.shape[1], dtype=np.int32)
            for j in range(cols.shape[1]):
                key = tuple((k, int(s)) for (k, _), s in zip(comp, cols[:, j], strict=True) if s >= 0)
                if not key:
                    targets[j] = DEAD
                    continue
                t = index.get(key)
                if t is None:
                    t = index[key] = len(states)
                    states.append(key)
                    if len(states) > MAX_LEXER_STATES:
                        raise CompileBudgetExceeded(
                            f"lexer for {len(dfas)} lexemes exceeds {MAX_LEXER_STATES} states"
                        )
                targets[j] = t
            rows.append(targets[inverse.reshape(-1)])
        self.table = np.stack(rows).astype(np.int32)
        self.accepts = [tuple(k for k, s in comp if dfas[k].accepting[s]) for comp in states]
        self.accepting = np.array([bool(a) for a in self.accepts])
        self.rows = self.table.tolist()
        self.n_states = len(states)
        self.walk_cache: dict = {}


class LexerDFA:
    """A ``LexerCore`` seen from one grammar: ``accepts[state]`` are that grammar's lexeme ids."""

    def __init__(self, lexemes: frozenset[int], core: LexerCore, order: list[int]):
        self.lexemes = lexemes
        self.core = core
        self.table, self.rows, self.accepting = core.table, core.rows, core.accepting
        self.walk_cache = core.walk_cache
        self.accepts = [frozenset(order[k] for k in acc) for acc in core.accepts]


_cores: OrderedDict[tuple, LexerCore] = OrderedDict()
_cores_lock = threading.Lock()
MAX_SHARED_CORES = 4096


def _shared_core(key: tuple, dfas: list[ByteDFA]) -> LexerCore:
    with _cores_lock:
        core = _cores.get(key)
        if core is not None:
            _cores.move_to_end(key)
            return core
    core = LexerCore(dfas)
    with _cores_lock:
        _cores[key] = core
        while len(_cores) > MAX_SHARED_CORES:
            _cores.popitem(last=False)
    return core


class Lexer:
    """Builds and caches one ``LexerDFA`` per set of allowed lexemes."""

    def __init__(self, dfas: list[ByteDFA]):
        self.dfas = [with_fresh_start(d) for d in dfas]
        self.keys = [dfa_key(d) for d in self.dfas]
        self._cache: dict[frozenset[int], LexerDFA] = {}

    def for_lexemes(self, lexemes: frozenset[int]) -> LexerDFA:
        lex = self._cache.get(lexemes)
        if lex is None:
            order = sorted(lexemes, key=lambda i: (self.keys[i], i))
            key = tuple(self.keys[i] for i in order)
            core = _shared_core(key, [self.dfas[i] for i in order])
            lex = self._cache[lexemes] = LexerDFA(lexemes, core, order)
        return lex
