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
    ``walk_cache`` keeps, per (token table, state), the walk of the whole vocabulary (see ``mask.py``).
    """

    def __init__(self, dfas: list[ByteDFA]):
        # All component DFAs live in one table of "global" states (component offset +
        # state); a product state is the vector of its components' global states, and
        # its identity is that vector read as a mixed-radix number (0 digit = dead).
        k = len(dfas)
        sizes = np.array([d.n_states for d in dfas], dtype=np.int64)
        offsets = (np.cumsum(sizes) - sizes).astype(np.int64)
        dead_row = int(sizes.sum())
        big = np.full((dead_row + 1, 256), dead_row, dtype=np.int64)
        for d, off in zip(dfas, offsets, strict=True):
            big[off : off + d.n_states] = np.where(d.table >= 0, d.table + off, dead_row)
        acc_global = np.concatenate([d.accepting for d in dfas] + [np.array([False])])
        owner = np.concatenate([np.full(d.n_states, j) for j, d in enumerate(dfas)] + [np.array([-1])])
        local_plus1 = np.zeros(dead_row + 1, dtype=np.int64)  # global state -> local + 1 (dead -> 0)
        local_plus1[:dead_row] = np.arange(dead_row) - np.repeat(offsets, sizes) + 1
        # A product state's key: its components read as a mixed-radix number when that fits
        # in 62 bits (exact); otherwise a 64-bit hash, checked for collisions, with the
        # component bytes as the exact identity.
        radix = sizes + 1
        exact = float(np.prod(radix.astype(float))) < 2.0**62
        if exact:
            mult = (np.cumprod(radix) // radix).astype(np.int64)
        else:
            mult = np.random.default_rng(0).integers(1, 2**62, size=k, dtype=np.int64) | 1

        def identity(key: int, comp: np.ndarray):
            return key if exact else comp.tobytes()

        # breadth-first over the product, one whole frontier per numpy pass
        start = offsets.copy()
        with np.errstate(over="ignore"):  # hashed keys wrap around on purpose
            start_key = int((local_plus1[start] * mult).sum())
        index = {identity(start_key, start): 0}
        comps = [start]
        rows: list[np.ndarray] = []
        frontier = [0]
        while frontier:
            comp_mat = np.stack([comps[f] for f in frontier], axis=1)  # (k, F)
            nxt = big[comp_mat]  # (k, F, 256) global states
            live = local_plus1[nxt]
            with np.errstate(over="ignore"):
                keys = (live * mult[:, None, None]).sum(axis=0)  # (F, 256)
            uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            if not exact:
                flat = nxt.reshape(k, -1)
                if not (flat[:, first[inverse.reshape(-1)]] == flat).all():
                    raise CompileBudgetExceeded(f"lexer for {k} lexemes: state hash collision")
            targets = np.empty(uniq.size, dtype=np.int32)
            new_frontier = []
            for j, (key, flat_at) in enumerate(zip(uniq.tolist(), first.tolist(), strict=True)):
                f, b = divmod(flat_at, 256)
                if not live[:, f, b].any():
                    targets[j] = DEAD
                    continue
                comp = nxt[:, f, b]
                ident = identity(key, comp)
                t = index.get(ident)
                if t is None:
                    t = index[ident] = len(comps)
                    comps.append(comp)
                    new_frontier.append(t)
                    if len(comps) > MAX_LEXER_STATES:
                        raise CompileBudgetExceeded(
                            f"lexer for {k} lexemes exceeds {MAX_LEXER_STATES} states"
                        )
                targets[j] = t
            rows.extend(targets[inverse.reshape(len(frontier), 256)])
            frontier = new_frontier
        self.table = np.stack(rows).astype(np.int32)
        self.accepts = [tuple(int(owner[g]) for g in comp if acc_global[g]) for comp in comps]
        self.accepting = np.array([bool(a) for a in self.accepts])
        self.flat_table = self.table.astype(np.int64).ravel()
        self.rows = self.table.tolist()
        self.n_states = len(comps)
        self.walk_cache: dict = {}
        self.key: tuple = ()


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
    core.key = key
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
