"""Deterministic automata over bytes: ``ByteDFA`` (the compiled form of one regex or
lexeme, 256 columns), the class-compressed DFAs the regex compiler builds (``_Dfa``),
UTF-8 lowering of code-point ranges, and minimisation (the one minimiser of byte DFAs)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..errors import CompileBudgetExceeded

DEAD = -1

_SURROGATES = (0xD800, 0xDFFF)


@dataclass
class ByteDFA:
    """``table[state, byte]`` is the next state or ``DEAD`` (-1); state 0 is the start.

    ``table`` is int32 of shape ``(n_states, 256)``; ``accepting`` is bool of shape
    ``(n_states,)``. DFAs produced by ``compiler.to_dfa`` are minimal and have no
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


# ---------------------------------------------------------------------------
# UTF-8 lowering


def utf8_sequences(lo: int, hi: int) -> list[tuple[tuple[int, int], ...]]:
    """Split the code-point range ``[lo, hi]`` into UTF-8 byte-range sequences.

    Each sequence is a tuple of inclusive byte ranges, one per encoded byte;
    the union of the sequences' byte strings is exactly the UTF-8 encoding of
    the range minus the surrogates. Sequences come out in ascending order.
    """
    out: list[tuple[tuple[int, int], ...]] = []
    stack: list[tuple[int, int]] = []
    # Surrogates have no UTF-8 encoding: cut them out first.
    if lo <= _SURROGATES[1] and hi >= _SURROGATES[0]:
        if hi > _SURROGATES[1]:
            stack.append((_SURROGATES[1] + 1, hi))
        if lo < _SURROGATES[0]:
            stack.append((lo, _SURROGATES[0] - 1))
    else:
        stack.append((lo, hi))
    while stack:
        s, e = stack.pop()
        while s <= e:
            # 1) never let one range span two encoded lengths
            cut = next((m for m in (0x7F, 0x7FF, 0xFFFF) if s <= m < e), None)
            if cut is not None:
                stack.append((cut + 1, e))
                e = cut
                continue
            if e <= 0x7F:
                out.append(((s, e),))
                break
            # 2) align to continuation-byte boundaries so that every byte
            #    position becomes an independent range
            for i in (1, 2, 3):
                m = (1 << (6 * i)) - 1
                if (s & ~m) != (e & ~m):
                    if s & m:
                        stack.append(((s | m) + 1, e))
                        e = s | m
                        break
                    if (e & m) != m:
                        stack.append((e & ~m, e))
                        e = (e & ~m) - 1
                        break
            else:
                sb = chr(s).encode("utf-8")
                eb = chr(e).encode("utf-8")
                out.append(tuple(zip(sb, eb, strict=True)))
                break
    return out


# ---------------------------------------------------------------------------
# DFAs over byte classes


class _Dfa:
    """A trim DFA over contiguous byte classes; state 0 is the start.

    ``table[s, c]`` is the next state on class ``c`` (bytes ``bounds[c]`` to
    ``bounds[c+1]-1``) or -1. Every state is reachable and can reach acceptance,
    except in the empty language: one rejecting state. ``minimal`` says the
    construction guarantees minimality; ``finite`` that there is no cycle.
    """

    def __init__(self, table, accepting, bounds, *, minimal: bool, finite: bool, acyclic_top=False):
        self.table = np.asarray(table, dtype=np.int32)
        self.accepting = np.asarray(accepting, dtype=bool)
        self.bounds = np.asarray(bounds)
        self.minimal = minimal
        self.finite = finite
        # an acyclic part on top of a minimal part that it does not change
        # (a glued finite prefix): merging equal rows minimises it exactly
        self.acyclic_top = finite or acyclic_top

    @property
    def n(self) -> int:
        return len(self.accepting)

    @property
    def is_empty(self) -> bool:
        return self.n == 1 and not self.accepting[0] and self.table.max() < 0

    @property
    def is_epsilon(self) -> bool:
        return self.n == 1 and self.accepting[0] and self.table.max() < 0

    @cached_property
    def sink(self) -> int:
        """The accepting state if the language is prefix-free and not {""}, else -1.

        That is the shape a counter chain needs: one accepting state, no way on.
        """
        acc = np.flatnonzero(self.accepting)
        if len(acc) != 1 or acc[0] == 0 or (self.table[acc[0]] >= 0).any():
            return -1
        return int(acc[0])

    @cached_property
    def chainable(self) -> bool:
        """Prefix-free (see ``sink``) with no way back to the start: a counter chain
        marks the starts of its copies as accepting, which must not leak into
        moves that come back to the start from inside X."""
        return self.sink > 0 and not (self.table == 0).any()

    @cached_property
    def is_word(self) -> bool:
        """Does the DFA accept exactly one string?"""
        live = self.table >= 0
        widths = np.diff(self.bounds)
        one_byte = (live.sum(axis=1) == 1) & (live & (widths == 1)).any(axis=1)
        return bool(
            self.accepting.sum() == 1 and self.sink >= 0 and (one_byte | self.accepting).all()
        )

    def on_classes(self, bounds: np.ndarray) -> np.ndarray:
        """The table over a finer partition ``bounds`` (each class inside one of ours)."""
        if len(bounds) == len(self.bounds):
            return self.table
        col = np.searchsorted(self.bounds, bounds[:-1], side="right") - 1
        return self.table[:, col]

    def to_byte_dfa(self) -> ByteDFA:
        of_byte = np.repeat(np.arange(len(self.bounds) - 1), np.diff(self.bounds))
        return ByteDFA(np.ascontiguousarray(self.table[:, of_byte]), self.accepting.copy())


_ALL_BYTES = np.array([0, 256])


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct values of a 1-D array, sorted: ``np.unique`` without its extras.

    ``np.unique``'s plain path asks ``np.ma`` whether the array is masked, which imports
    ``numpy.ma`` (~15 ms) inside the first compile of a process; the byte-class bounds
    of every lexeme go through here, so that import would be charged to a compile.
    """
    out = np.sort(values)
    if len(out) > 1:
        keep = np.empty(len(out), dtype=bool)
        keep[0] = True
        np.not_equal(out[1:], out[:-1], out=keep[1:])
        out = out[keep]
    return out


def _one_state(accepting: bool) -> _Dfa:
    """The empty language (``accepting`` False) or the empty string's."""
    return _Dfa(np.full((1, 1), -1), [accepting], _ALL_BYTES, minimal=True, finite=True)


def _edge_dfa(edges: list[list[tuple[int, int, int]]], accepting: list[bool], **flags) -> _Dfa:
    """A DFA from per-state byte-range edges ``(lo, hi, target)``, start 0."""
    flat = [(s, lo, hi, t) for s, out in enumerate(edges) for lo, hi, t in out]
    src, lo, hi, dst = np.array(flat, dtype=np.int64).reshape(-1, 4).T
    bounds = sorted_unique(np.concatenate([_ALL_BYTES, lo, hi + 1]))
    c0, c1 = np.searchsorted(bounds, lo), np.searchsorted(bounds, hi + 1)
    # one table cell per (edge, class it covers)
    width = c1 - c0
    first = np.repeat(c0 - (np.cumsum(width) - width), width)
    table = np.full((len(edges), len(bounds) - 1), -1, dtype=np.int32)
    table[np.repeat(src, width), first + np.arange(width.sum())] = np.repeat(dst, width)
    return _Dfa(table, accepting, bounds, **flags)


def _common_bounds(a: _Dfa, b: _Dfa) -> np.ndarray:
    if len(a.bounds) == len(b.bounds) and (a.bounds == b.bounds).all():
        return a.bounds
    return sorted_unique(np.concatenate([a.bounds, b.bounds]))


def _too_many_states(max_states: int) -> CompileBudgetExceeded:
    return CompileBudgetExceeded(
        f"regex needs more than {max_states} DFA states; "
        "simplify it (e.g. bound fewer repetitions after a wildcard) (budget: dfa_states)", budget="dfa_states"
    )


# ---------------------------------------------------------------------------
# Minimisation


def _minimize(d: _Dfa, *, by_shape: bool = True) -> _Dfa:
    """The minimal DFA of a trim ``d``, states renumbered with the start first.

    Merging states with equal acceptance and rows, until none are left, is exact
    for an acyclic DFA: an equivalent pair of least height would have equal
    rows. The same holds for an acyclic part on top of a minimal part. Other
    cyclic DFAs get one such round (it is cheap, and shrinks them), then
    Hopcroft's algorithm (all DFAs do when ``by_shape`` is False, for tests).
    """
    merge_only = d.acyclic_top and by_shape
    table, accepting, start = d.table.astype(np.int64), d.accepting, 0
    while True:  # a round of merging states with equal acceptance and rows
        first, inv = equal_rows(np.column_stack([accepting, table]))
        if len(first) == len(accepting):
            break
        rows, accepting, start = table[first], accepting[first], int(inv[start])
        table = np.where(rows >= 0, inv[rows.clip(0)], -1)
        if not merge_only:
            break
    if not merge_only and len(accepting) > 1:
        block_of = np.array(equivalence_blocks(table, accepting))
        reps = np.unique(block_of, return_index=True)[1]
        table = np.where(table >= 0, block_of[table.clip(0)], -1)[reps]
        accepting = accepting[reps]
        start = int(block_of[start])
    if start != 0:  # swap the start into place
        perm = np.arange(len(accepting))
        perm[[0, start]] = perm[[start, 0]]
        table = np.where(table >= 0, perm[table.clip(0)], -1)[perm]
        accepting = accepting[perm]
    return _merge_equal_columns(_Dfa(table, accepting, d.bounds, minimal=True, finite=d.finite))


# weights of the random linear row hash of `equal_rows` (seeded: every run groups alike)
HASH_WEIGHTS = np.random.default_rng(0).integers(1, 2**62, size=4096, dtype=np.int64)


def equal_rows(sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inv)``: the first row of each distinct row of ``sig``, and each row's
    group, numbered in the order of the groups' hash (or rows).

    Rows are grouped by a random linear hash, then checked against their group's first
    row; a collision (never seen, but possible) falls back to exact sorting.
    """
    if sig.shape[1] <= len(HASH_WEIGHTS):
        _, first, inv = np.unique(sig @ HASH_WEIGHTS[: sig.shape[1]], return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if len(first) == len(sig) or (sig == sig[first[inv]]).all():  # distinct hashes: distinct rows
            return first, inv
    _, first, inv = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    return first, inv.reshape(-1)


MOORE_ROUNDS = 48  # vectorised refinement rounds before Hopcroft's worklist takes over


def equivalence_blocks(table: np.ndarray, accepting: np.ndarray) -> np.ndarray:
    """Block id of every state of a trim DFA (equivalent states share one).

    Runs on the partial transition function, with no sink state (a trim DFA has no
    state equivalent to a missing transition). First up to ``MOORE_ROUNDS`` rounds of
    Moore's refinement in numpy: each splits blocks by the blocks their rows lead to,
    and most lexeme DFAs are stable within a few dozen rounds. A DFA that needs more
    (long chains: each round only tells apart one more state) goes on from the
    partition reached with Hopcroft's worklist, whose result is the same coarsest
    stable refinement.
    """
    # classes that behave identically in every state are one label
    table = table[:, np.sort(equal_rows(table.T)[0])]
    block, stable = moore_blocks(table, accepting, MOORE_ROUNDS)
    if stable:
        return block
    return np.array(_hopcroft_from(table, block.tolist()))


def moore_blocks(table: np.ndarray, accepting: np.ndarray, rounds: int) -> tuple[np.ndarray, bool]:
    """Block ids after at most ``rounds`` refinements, and whether they are stable.

    Every round refines the last (a state's own block is part of its signature), so an
    unchanged block count means an unchanged partition: the coarsest stable one.
    """
    _, block = np.unique(accepting, return_inverse=True)
    block = block.reshape(-1).astype(np.int64)
    count = int(block.max()) + 1
    for _ in range(rounds):
        succ = np.where(table >= 0, block[table.clip(0)], -1)
        _, block = equal_rows(np.column_stack([block, succ]))
        new_count = int(block.max()) + 1
        if new_count == count:
            return block, True
        count = new_count
    return block, False


def _hopcroft_from(table: np.ndarray, block0: list[int]) -> list[int]:
    """Hopcroft's refinement of the partition ``block0`` (ids ``0..m-1``), all of its
    blocks in the worklist; started from accepting/rejecting, the minimal DFA's blocks."""
    n, k = table.shape
    flat = table.ravel()
    has = flat >= 0
    target = flat[has]
    source = np.repeat(np.arange(n), k)[has]
    label = np.tile(np.arange(k), n)[has]
    order = np.argsort(target, kind="stable")
    first_in = np.searchsorted(target[order], np.arange(n + 1)).tolist()
    in_src = source[order].tolist()
    in_lbl = label[order].tolist()

    blocks: list[set[int]] = [set() for _ in range(max(block0) + 1)]
    for q, b in enumerate(block0):
        blocks[b].add(q)
    block_of = list(block0)
    work = set(range(len(blocks)))
    while work:
        by_label: defaultdict[int, list[int]] = defaultdict(list)
        for q in blocks[work.pop()]:
            for j in range(first_in[q], first_in[q + 1]):
                by_label[in_lbl[j]].append(in_src[j])
        for preimage in by_label.values():
            touched: defaultdict[int, list[int]] = defaultdict(list)
            for p in preimage:
                touched[block_of[p]].append(p)
            for b, inside in touched.items():
                members = blocks[b]
                if len(inside) == len(members):
                    continue
                moved = set(inside)
                members -= moved
                nb = len(blocks)
                blocks.append(moved)
                for p in moved:
                    block_of[p] = nb
                if b in work:
                    work.add(nb)
                else:
                    work.add(nb if len(moved) <= len(members) else b)
    return block_of


def _merge_equal_columns(d: _Dfa) -> _Dfa:
    """Adjacent classes that every state treats alike become one class."""
    t = d.table
    if t.shape[1] < 2:
        return d
    keep = np.ones(t.shape[1], dtype=bool)
    keep[1:] = (t[:, 1:] != t[:, :-1]).any(axis=0)
    if keep.all():
        return d
    bounds = np.append(d.bounds[:-1][keep], d.bounds[-1])  # 256, or past the code points
    return _Dfa(t[:, keep], d.accepting, bounds, minimal=d.minimal, finite=d.finite)
