"""Compile a ``regex_ast`` node into a minimal byte-level DFA.

The construction is compositional, because JSON-Schema lexemes are built from a
few pieces used over and over (one JSON string character, repeated; the same tail
after every branch of "any key but these"):

- Leaves (code-point and byte sets) become small acyclic DFAs over UTF-8 bytes
  (the utf8-ranges construction, surrogates excluded). All leaves share one
  automaton whose states are interned, so "two more continuation bytes" is one
  state however many character classes lead there.
- The item of a ``Repeat`` is compiled on its own into a minimal DFA (memoised
  by value, across calls too). When it is chainable (one accepting state with
  no way on, none back to the start: one JSON character, say), ``X{m,n}`` is a
  counter chain of copies of it, built with numpy: no subset construction.
- A ``Seq`` glues the DFAs of its items end to start when that stays
  deterministic (an item's accepting states cannot move on the bytes the next
  item starts with). Literal strings are built directly.
- Everything else (alternatives, sequences that cannot be glued, counters over
  other items) is determinised over *terms*: (automaton, state, continuation),
  an automaton being the shared leaves or a chain, the continuation the
  hash-consed list of tree nodes still to match. Equal tails are one
  continuation, so they are explored once, not once per branch.
- Results are minimised unless minimal by design (leaves, literals, chains of
  finite items, some glues; each place says why). Merging states with equal
  rows until none are left is exact for acyclic DFAs; others go through
  Hopcroft's algorithm.

Budgets make hostile patterns fail fast with ``CompileBudgetExceeded``: the
pattern's size (measured in Thompson-NFA states+edges, as earlier versions
did), the states any one construction step builds, and the total work of the
subset constructions (sizes of the state sets and closures built).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from functools import cached_property

import numpy as np

from .dfa import ByteDFA
from .errors import CompileBudgetExceeded, check_deadline
from .regex_ast import Alt, Bytes, Chars, Node, Repeat, Seq

# Pattern size we are willing to compile, in Thompson-NFA states+edges.
DEFAULT_MAX_NFA = 400_000
# Total size of all state sets and closures built by subset constructions: a
# proxy for time that catches huge epsilon closures even with few DFA states.
DEFAULT_MAX_WORK = 5_000_000
# States of the trie of one alternation of literal strings (choices, enums): one per
# byte not shared as a prefix with another string.
DEFAULT_MAX_TRIE_STATES = 1_500_000

_SURROGATES = (0xD800, 0xDFFF)


def to_dfa(
    node: Node,
    max_states: int = 50_000,
    *,
    max_nfa: int = DEFAULT_MAX_NFA,
    max_work: int = DEFAULT_MAX_WORK,
    max_trie_states: int = DEFAULT_MAX_TRIE_STATES,
) -> ByteDFA:
    """Compile ``node`` into a minimal ``ByteDFA`` with no dead states (start = 0).

    ``Chars`` match the UTF-8 encoding of their code points (surrogates never
    match); ``Bytes`` match raw bytes. Raises ``CompileBudgetExceeded`` when the
    pattern is larger than ``max_nfa`` (Thompson-NFA states+edges), when a
    construction step would build more than ``max_states`` DFA states, or when
    the subset constructions' total work exceeds ``max_work``. Thread-safe;
    compiled Repeat items and leaves are cached across calls (results are not:
    the caller owns that).
    """
    return _Compiler(max_states, max_nfa, max_work, max_trie_states=max_trie_states).dfa(node).to_byte_dfa()


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


def _empty_language() -> _Dfa:
    return _Dfa(np.full((1, 1), -1), [False], _ALL_BYTES, minimal=True, finite=True)


def _epsilon() -> _Dfa:
    return _Dfa(np.full((1, 1), -1), [True], _ALL_BYTES, minimal=True, finite=True)


def _edge_dfa(edges: list[list[tuple[int, int, int]]], accepting: list[bool], **flags) -> _Dfa:
    """A DFA from per-state byte-range edges ``(lo, hi, target)``, start 0."""
    flat = [(s, lo, hi, t) for s, out in enumerate(edges) for lo, hi, t in out]
    src, lo, hi, dst = np.array(flat, dtype=np.int64).reshape(-1, 4).T
    bounds = np.unique(np.concatenate([_ALL_BYTES, lo, hi + 1]))
    c0, c1 = np.searchsorted(bounds, lo), np.searchsorted(bounds, hi + 1)
    # one table cell per (edge, class it covers)
    width = c1 - c0
    first = np.repeat(c0 - (np.cumsum(width) - width), width)
    table = np.full((len(edges), len(bounds) - 1), -1, dtype=np.int32)
    table[np.repeat(src, width), first + np.arange(width.sum())] = np.repeat(dst, width)
    return _Dfa(table, accepting, bounds, **flags)


def _common_bounds(*dfas: _Dfa) -> np.ndarray:
    if all(
        len(d.bounds) == len(dfas[0].bounds) and (d.bounds == dfas[0].bounds).all() for d in dfas
    ):
        return dfas[0].bounds
    return np.unique(np.concatenate([d.bounds for d in dfas]))


class _Leaves:
    """One acyclic automaton holding every leaf (code-point or byte set) compiled.

    Each leaf is a trie of its UTF-8 sequences whose sub-tries are interned by
    their edges, across leaves too; state 0 is the accepting end. Interning
    bottom-up makes each leaf's part a minimal DFA, and lets the subset
    construction see that ``[^a]`` and ``[^b]`` are in the same place after the
    first byte of a multi-byte character. Shared by all calls (leaves repeat a
    lot across lexemes): states are only ever appended, under a lock.
    """

    def __init__(self) -> None:
        self.edges: list[tuple[tuple[int, int, int], ...]] = [()]
        self.ids: dict[tuple, int] = {(): 0}
        self.starts: dict = {}  # (type, ranges) -> start state, -1 for an empty set
        self.info: dict[int, tuple[int, frozenset[int]]] = {}  # start -> (cost, cuts)
        self.dfas: dict[int, _Dfa] = {}
        self.lock = threading.Lock()

    def start(self, node: Chars | Bytes) -> int:
        key = (type(node), node.ranges)
        got = self.starts.get(key)
        if got is None:
            with self.lock:
                got = self.starts[key] = self._build(node)
        return got

    def _build(self, node: Chars | Bytes) -> int:
        if not node.ranges:
            return -1
        if isinstance(node, Bytes):
            return self._intern([(lo, hi, 0) for lo, hi in node.ranges])
        trie: dict = {}
        for lo, hi in node.ranges:
            for seq in utf8_sequences(lo, hi):
                at = trie
                for r in seq:
                    at = at.setdefault(r, {})
        return self._intern_trie(trie) if trie else -1

    def _intern_trie(self, trie: dict) -> int:
        return self._intern([(lo, hi, self._intern_trie(sub)) for (lo, hi), sub in trie.items()])

    def _intern(self, raw: list[tuple[int, int, int]]) -> int:
        merged: list[tuple[int, int, int]] = []
        for lo, hi, t in sorted(raw):  # adjacent ranges into the same state are one edge
            if merged and merged[-1][2] == t and merged[-1][1] + 1 == lo:
                merged[-1] = (merged[-1][0], hi, t)
            else:
                merged.append((lo, hi, t))
        key = tuple(merged)
        got = self.ids.get(key)
        if got is None:
            got = self.ids[key] = len(self.edges)
            self.edges.append(key)
        return got

    def reachable(self, start: int) -> list[int]:
        """States reachable from ``start``, in BFS order, the accepting end excluded."""
        order = [start]
        seen = {start, 0}
        for s in order:
            for _, _, t in self.edges[s]:
                if t not in seen:
                    seen.add(t)
                    order.append(t)
        return order

    def _info(self, start: int) -> tuple[int, frozenset[int]]:
        got = self.info.get(start)
        if got is None:
            states = self.reachable(start)
            edges = [e for s in states for e in self.edges[s]]
            cuts = frozenset(x for lo, hi, _ in edges for x in (lo, hi + 1))
            got = self.info[start] = (len(states) + 1 + len(edges), cuts)
        return got

    def cost(self, start: int) -> int:
        """States + edges of the leaf from ``start`` (the Thompson-NFA measure)."""
        return self._info(start)[0]

    def cuts(self, start: int) -> frozenset[int]:
        """Where the byte ranges of the leaf from ``start`` begin and end."""
        return self._info(start)[1]

    def dfa(self, start: int) -> _Dfa:
        """The leaf from ``start`` on its own."""
        got = self.dfas.get(start)
        if got is None:
            order = self.reachable(start) + [0]  # the accepting end last
            new = {s: i for i, s in enumerate(order)}
            edges = [[(lo, hi, new[t]) for lo, hi, t in self.edges[s]] for s in order]
            accepting = [False] * (len(order) - 1) + [True]
            got = self.dfas[start] = _edge_dfa(edges, accepting, minimal=True, finite=True)
        return got


# Leaves are shared by all calls until there are this many leaf states; then a
# fresh automaton starts (calls under way keep the one they started with).
_MAX_SHARED_LEAVES = 200_000
_shared_leaves = _Leaves()


def _leaves() -> _Leaves:
    global _shared_leaves
    if len(_shared_leaves.edges) > _MAX_SHARED_LEAVES:
        _shared_leaves = _Leaves()
    return _shared_leaves


def _literal_dfa(data: bytes) -> _Dfa:
    """The chain of one string's bytes (minimal: one word)."""
    b = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    bounds = np.unique(np.concatenate([_ALL_BYTES, b, b + 1]))
    n = len(b)
    table = np.full((n + 1, len(bounds) - 1), -1, dtype=np.int32)
    table[np.arange(n), np.searchsorted(bounds, b)] = np.arange(1, n + 1)
    accepting = np.zeros(n + 1, dtype=bool)
    accepting[n] = True
    return _Dfa(table, accepting, bounds, minimal=True, finite=True)


def _chain(x: _Dfa, lo: int, hi: int | None, max_states: int) -> _Dfa:
    """``X{lo,hi}`` for a chainable X: copies of X, each one's accepting state
    being the next one's start (a last copy loops to itself when ``hi`` is None).

    Deterministic since the accepting state of X has no way on; the start of a
    copy is accepting when enough copies are done, and only reached then. Minimal when X
    is minimal and finite and ``hi`` is bounded: states of different copies
    differ in the longest string they accept; two states of one copy accept
    prefix-free residuals of X followed by the same finite language, and such
    concatenations differ (take a longest string in the symmetric difference).
    """
    f = x.sink
    inner = x.n - 1  # states per copy: all but the accepting one
    copies = hi if hi is not None else lo + 1  # X{lo,} = X^lo, then a looping copy
    n = copies * inner + (1 if hi is not None else 0)
    if n > max_states:
        raise _too_many_states(max_states)
    keep = np.delete(np.arange(x.n), f)
    renum = np.full(x.n + 1, -1, dtype=np.int64)  # index -1 (dead) stays -1
    renum[keep] = np.arange(inner)
    renum[f] = -2  # a move into f goes to the next copy's start
    base = renum[x.table[keep]]
    offsets = (np.arange(copies) * inner)[:, None, None]
    nxt = np.broadcast_to(offsets + inner, (copies, 1, 1)).copy()
    if hi is None:
        nxt[-1] = offsets[-1]  # the last copy starts over
    table = np.where(base == -2, nxt, np.where(base >= 0, base + offsets, -1))
    table = table.reshape(copies * inner, -1)
    accepting = np.zeros(n, dtype=bool)
    accepting[np.arange(lo, copies) * inner] = True
    if hi is not None:
        table = np.vstack([table, np.full((1, table.shape[1]), -1)])
        accepting[-1] = True
    bounded = hi is not None
    return _Dfa(
        table,
        accepting,
        x.bounds,
        minimal=bounded and x.finite and x.minimal,
        finite=bounded and x.finite,
    )


def _glue(a: _Dfa, b: _Dfa) -> _Dfa | None:
    """``a`` then ``b`` as one DFA, or None when that needs a subset construction.

    ``b``'s start moves are added to ``a``'s accepting states, which is
    deterministic when those states cannot move on the same bytes; accepting
    states with no way on at all simply become ``b``'s start.
    """
    if a.is_epsilon:
        return b
    if b.is_epsilon:
        return a
    bounds = _common_bounds(a, b)
    ta, tb = a.on_classes(bounds), b.on_classes(bounds)
    b_first = tb[0] >= 0
    a_moves = ta >= 0
    if (a_moves[a.accepting] & b_first).any():
        return None
    ends = a.accepting & ~a_moves.any(axis=1)  # become b's start
    n_a = int((~ends).sum())
    # b's start is needed as a state of its own if a's ends become it or if b loops back to it
    keep_b_start = bool(ends.any()) or bool((tb == 0).any())
    b_ids = np.arange(b.n) + n_a - (0 if keep_b_start else 1)
    if not keep_b_start:
        b_ids[0] = -1
    a_ids = np.full(a.n, -1, dtype=np.int64)
    a_ids[~ends] = np.arange(n_a)
    a_ids[ends] = b_ids[0]
    ta_new = np.where(a_moves, a_ids[ta], -1)[~ends]
    acc_rows = a.accepting[~ends]
    ta_new[np.ix_(acc_rows, b_first)] = b_ids[tb[0][b_first]]
    tb_new = np.where(tb >= 0, b_ids[tb], -1)
    if not keep_b_start:
        tb_new = tb_new[1:]
    table = np.vstack([ta_new, tb_new])
    accepting = np.concatenate([acc_rows & b.accepting[0], b.accepting[0 if keep_b_start else 1 :]])
    finite = a.finite and b.finite
    # minimal by design: cancelling one word on the right is exact, and a word on
    # the left of a finite language adds states that accept longer strings
    minimal = a.minimal and b.minimal and (b.is_word or (a.is_word and b.finite))
    return _Dfa(
        table, accepting, bounds, minimal=minimal, finite=finite, acyclic_top=a.finite and b.minimal
    )


def _too_many_states(max_states: int) -> CompileBudgetExceeded:
    return CompileBudgetExceeded(
        f"regex needs more than {max_states} DFA states; "
        "simplify it (e.g. bound fewer repetitions after a wildcard) (budget: dfa_states)"
    )


def _repeat_cost(item_cost: int, lo: int, hi: int | None) -> int:
    copies = lo + (1 if hi is None else max(hi - lo, 0))
    return 4 + copies * (item_cost + 3)


# ---------------------------------------------------------------------------
# The compiler

_ATOM, _SEQ, _ALT, _REP = range(4)
_LEAVES = 0  # automaton 0 of every IR: the shared leaves
_END = 0  # the empty continuation
_FINAL = 0  # the term "the whole pattern has matched"


class _Compiler:
    """One ``to_dfa`` call: budgets, shared leaves, memoised sub-results."""

    def __init__(
        self, max_states: int, max_nfa: int, max_work: int, *, fast: bool = True,
        max_trie_states: int = DEFAULT_MAX_TRIE_STATES,
    ):
        self.max_states = max_states
        self.max_nfa = max_nfa
        self.max_work = max_work
        self.fast = fast  # False: no chains or glue, for tests of the general path
        self.max_trie_states = max_trie_states
        self.work = 0
        self.leaves = _leaves()
        self.memo: dict[int, tuple[_Dfa, int]] = {}  # id(node) -> (minimal DFA, cost)
        self.chains: dict = {}  # (id(item DFA), lo, hi) -> chain
        self.keep: list = []  # nodes memoised by id() stay alive

    def dfa(self, node: Node) -> _Dfa:
        return self.minimal(node)[0]

    def minimal(self, node: Node) -> tuple[_Dfa, int]:
        """The minimal DFA of ``node`` and the pattern's size estimate."""
        got = self.memo.get(id(node))
        if got is None:
            d, cost = self.build(node)
            if not d.minimal:
                d = _minimize(d, by_shape=self.fast)
            got = self.memo[id(node)] = (d, cost)
            self.keep.append(node)
        return got

    def item(self, node: Node) -> tuple[_Dfa, int]:
        """Like ``minimal``, memoised by value, across calls too: frontends repeat
        the same items (a JSON string character, a digit) over and over."""
        got = self.memo.get(id(node))
        if got is not None:
            return got
        got = _ITEMS.get(node) if self.fast else None
        if got is None:
            got = self.minimal(node)
            if self.fast:  # the general path (tests) builds everything itself
                _ITEMS.put(node, got)
        else:
            self.memo[id(node)] = got
            self.keep.append(node)
        d, cost = got
        self.check_cost(cost)
        if d.n > self.max_states:
            raise _too_many_states(self.max_states)
        return got

    def build(self, node: Node) -> tuple[_Dfa, int]:
        """A DFA of ``node`` (maybe not minimal) and the pattern's size estimate."""
        if isinstance(node, Chars | Bytes):
            start = self.leaves.start(node)
            if start < 0:
                return _empty_language(), 2
            return self.leaves.dfa(start), self.leaves.cost(start)
        if self.fast:
            if isinstance(node, LiteralAlt) or (isinstance(node, Alt) and len(node.items) > 8):
                words = _alternative_words(node)
                if words is not None:
                    return self.trie(words)
            data = _literal_bytes(node)
            if data is not None:
                cost = 3 + 2 * len(data) + 2 * len(node.items)  # Seq of one-character leaves
                self.check_cost(cost)
                return _literal_dfa(data), cost
            if isinstance(node, Seq):
                got = self.glued(node)
                if got is not None:
                    return got
            if isinstance(node, Repeat):
                x, item_cost = self.item(node.item)
                if x.chainable and (node.max is None or node.max >= max(node.min, 1)):
                    cost = _repeat_cost(item_cost, node.min, node.max)
                    self.check_cost(cost)
                    return self.chain(x, node.min, node.max), cost
        ir = _Ir(self)
        root = ir.node(node)
        table, accepting = _Determinizer(ir, self).run(root)
        d = _Dfa(table, accepting, ir.bounds, minimal=False, finite=ir.finite)
        return d, ir.cost[root]

    def trie(self, words: list[bytes]) -> tuple[_Dfa, int]:
        """Alternatives that are all literal strings (choices, enums): a trie, minimised
        bottom-up. Linear in their total size, where the general path is quadratic."""
        d = _trie_dfa(words, self.max_trie_states)
        return d, d.n

    def glued(self, node: Seq) -> tuple[_Dfa, int] | None:
        """The items' minimal DFAs glued end to start, or None if one glue is impossible."""
        parts = [self.minimal(it) for it in node.items]
        cost = 3 + sum(c + 1 for _, c in parts)
        self.check_cost(cost)
        out = _epsilon()
        for d, _ in parts:
            if d.is_empty:
                return d, cost
            out = _glue(out, d)
            if out is None:
                return None
            if out.n > self.max_states:
                raise _too_many_states(self.max_states)
            if not out.minimal:
                out = _minimize(out)
        return out, cost

    def chain(self, x: _Dfa, lo: int, hi: int | None) -> _Dfa:
        key = (id(x), lo, hi)
        got = self.chains.get(key)
        if got is None:
            got = self.chains[key] = _chain(x, lo, hi, self.max_states)
        return got

    def check_cost(self, cost: int) -> None:
        if cost > self.max_nfa:
            raise CompileBudgetExceeded(
                f"regex is too large to compile: its automaton would need about {cost} "
                f"NFA states+edges (budget {self.max_nfa}); reduce repetition counts"
            )

    def add_work(self, amount: int) -> None:
        self.work += amount
        if self.work > self.max_work:
            raise CompileBudgetExceeded(
                f"regex is too expensive to determinize (work budget {self.max_work} exceeded)"
            )


class _ItemCache:
    """Compiled Repeat items shared by all calls: a thread-safe LRU map bounded by
    the bytes of the DFA tables it holds (compiled DFAs are never modified)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.data: OrderedDict = OrderedDict()  # node -> (DFA, cost)
        self.lock = threading.Lock()

    def get(self, node: Node):
        with self.lock:
            got = self.data.get(node)
            if got is not None:
                self.data.move_to_end(node)
            return got

    def put(self, node: Node, value: tuple[_Dfa, int]) -> None:
        size = value[0].table.nbytes
        if size > self.max_bytes // 8:
            return  # one huge item would flush everything else
        with self.lock:
            if node in self.data:
                return
            self.data[node] = value
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (old, _) = self.data.popitem(last=False)
                self.bytes -= old.table.nbytes


_ITEMS = _ItemCache(64 << 20)


class LiteralAlt(Alt):
    """An alternation of literal strings (choices, enums), made from the strings.

    It hashes and compares by its strings and builds its ``items`` only if someone
    asks: 100,000 choices as nodes would cost seconds to build and to hash, and
    ``to_dfa`` compiles it straight from the strings, as a trie.
    """

    def __init__(self, words: tuple[str, ...]):  # noqa: D107 (the dataclass init is bypassed)
        object.__setattr__(self, "words", tuple(dict.fromkeys(words)))
        object.__setattr__(self, "_hash", hash(("LiteralAlt", self.words)))

    @property
    def items(self) -> tuple[Node, ...]:  # type: ignore[override]
        got = self.__dict__.get("_items")
        if got is None:
            got = tuple(Seq(tuple(Chars(((ord(c), ord(c)),)) for c in w)) if len(w) != 1
                        else Chars(((ord(w), ord(w)),)) for w in self.words)
            object.__setattr__(self, "_items", got)
        return got

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if isinstance(other, LiteralAlt):
            return self.words == other.words
        return isinstance(other, Alt) and self.items == other.items

    def __repr__(self) -> str:
        return f"LiteralAlt({len(self.words)} strings)"


def _alternative_words(node: Alt) -> list[bytes] | None:
    """The UTF-8 strings of an Alt whose items are all literal strings, else None."""
    if isinstance(node, LiteralAlt):
        # a word with a lone surrogate has no UTF-8 form: it matches nothing
        return [w.encode("utf-8") for w in node.words if not _has_surrogate(w)]
    words = []
    for it in node.items:
        if isinstance(it, Chars) and len(it.ranges) == 1 and it.ranges[0][0] == it.ranges[0][1]:
            cp = it.ranges[0][0]
            if _SURROGATES[0] <= cp <= _SURROGATES[1]:
                return None
            words.append(chr(cp).encode("utf-8"))
            continue
        data = b"" if isinstance(it, Seq) and not it.items else _literal_bytes(it)
        if data is None:
            return None
        words.append(data)
    return words


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _trie_dfa(words: list[bytes], max_states: int = DEFAULT_MAX_TRIE_STATES) -> _Dfa:
    """The minimal DFA of a finite set of strings: a trie, then states with the same
    right language merged height by height (children are always merged first).

    Raises ``CompileBudgetExceeded`` when the trie needs more than ``max_states``
    states (one per byte not shared as a prefix with another string)."""
    words = sorted(set(words))
    src: list[int] = []
    dst: list[int] = []
    lab = bytearray()
    final = [False]
    path, prev = [0], b""
    for w in words:
        k, m = 0, min(len(w), len(prev))
        while k < m and w[k] == prev[k]:
            k += 1
        del path[k + 1:]
        if len(final) + len(w) - k > max_states:
            raise CompileBudgetExceeded(
                f"the {len(words)} alternative strings need a trie of more than {max_states} "
                "states (budget: choice_states)"
            )
        for b in w[k:]:
            n = len(final)
            src.append(path[-1])
            dst.append(n)
            lab.append(b)
            final.append(False)
            path.append(n)
        final[path[-1]] = True
        prev = w
    n = len(final)
    height = [0] * n
    for s, d in zip(reversed(src), reversed(dst), strict=True):  # children have larger ids
        if height[d] + 1 > height[s]:
            height[s] = height[d] + 1
    labels = np.frombuffer(bytes(lab), dtype=np.uint8).astype(np.int64)
    bounds = np.unique(np.concatenate([_ALL_BYTES, labels, labels + 1]))
    table = np.full((n, len(bounds) - 1), -1, dtype=np.int64)
    table[np.asarray(src, dtype=np.int64), np.searchsorted(bounds, labels)] = np.asarray(dst, dtype=np.int64)
    accepting = np.asarray(final, dtype=bool)
    heights = np.asarray(height)
    canon = np.full(n, -1, dtype=np.int64)
    out_rows, out_acc = [], []
    for level in np.unique(heights):  # canonical ids, level by level from the leaves up
        nodes = np.flatnonzero(heights == level)
        rows = table[nodes]
        rows = np.where(rows >= 0, canon[rows.clip(0)], -1)
        first, inv = _unique_rows(np.column_stack([accepting[nodes], rows]))
        canon[nodes] = len(out_acc) + inv.reshape(-1)
        out_rows.append(rows[first])
        out_acc.extend(accepting[nodes[first]])
    table = np.concatenate(out_rows)
    acc = np.asarray(out_acc, dtype=bool)
    start = int(canon[0])  # the root has the greatest height: it is the last state
    perm = np.arange(len(acc))
    perm[[0, start]] = perm[[start, 0]]
    table = np.where(table >= 0, perm[table.clip(0)], -1)[perm]
    return _merge_equal_columns(_Dfa(table, acc[perm], bounds, minimal=True, finite=True))


def _unique_rows(sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of each distinct row's first copy, row -> its distinct row) by a random
    linear hash, checked; exact sorting if two rows ever collide."""
    if sig.shape[1] <= len(_HASH_WEIGHTS):
        _, first, inv = np.unique(sig @ _HASH_WEIGHTS[: sig.shape[1]], return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if (sig == sig[first[inv]]).all():
            return first, inv
    _, first, inv = np.unique(sig, axis=0, return_index=True, return_inverse=True)
    return first, inv.reshape(-1)


def _literal_bytes(node: Node) -> bytes | None:
    """The UTF-8 bytes of a Seq of single code points (a literal string), else None."""
    if not isinstance(node, Seq) or not node.items:
        return None
    cps = []
    for it in node.items:
        if not isinstance(it, Chars) or len(it.ranges) != 1 or it.ranges[0][0] != it.ranges[0][1]:
            return None
        cp = it.ranges[0][0]
        if _SURROGATES[0] <= cp <= _SURROGATES[1]:
            return None
        cps.append(cp)
    return "".join(map(chr, cps)).encode("utf-8")


_NOTHING_ARG = ()


class _Ir:
    """The tree above the automata, hash-consed: equal subtrees get one node id.

    Node kinds: ATOM (arg = (automaton, start state)), SEQ / ALT (arg = child
    ids), REP (arg = (item node id, lo, hi)). Automaton 0 is the shared leaves,
    the others compiled Repeat items and chains. An empty SEQ matches "", an
    empty ALT nothing; no other node contains the latter, so every node matches
    something and the subset construction builds no dead states. Continuations
    are interned (node, rest) pairs, 0 being the empty one.
    """

    def __init__(self, compiler: _Compiler):
        self.c = compiler
        self.kind: list[int] = []
        self.arg: list = []
        self.cost: list[int] = []
        self.ids: dict = {}
        self.by_obj: dict[int, int] = {}
        self.keep: list = []
        self.automata: list = [compiler.leaves]
        self.automaton_ids: dict[int, int] = {}  # id(_Dfa) -> index
        self.leaf_starts: set[int] = set()
        self.leaf_ids: dict = {}  # (type, ranges) -> node id
        self.finite = True  # no unbounded counter and every automaton acyclic
        self.head: list[int] = [-1]
        self.tail: list[int] = [-1]
        self.conts: dict[tuple[int, int], int] = {}
        self.nothing = self.intern(_ALT, _NOTHING_ARG, 3)

    def intern(self, kind: int, arg, cost: int) -> int:
        key = (kind, arg)
        got = self.ids.get(key)
        if got is None:
            self.c.check_cost(cost)
            got = self.ids[key] = len(self.kind)
            self.kind.append(kind)
            self.arg.append(arg)
            self.cost.append(cost)
        return got

    def automaton(self, d: _Dfa, cost: int) -> int:
        """An ATOM node for a compiled DFA."""
        idx = self.automaton_ids.get(id(d))
        if idx is None:
            idx = self.automaton_ids[id(d)] = len(self.automata)
            self.automata.append(d)
            self.finite &= d.finite
        return self.intern(_ATOM, (idx, 0), cost)

    def node(self, node: Node) -> int:
        got = self.by_obj.get(id(node))
        if got is None:
            got = self.by_obj[id(node)] = self._node(node)
            self.keep.append(node)
        return got

    def _node(self, node: Node) -> int:
        # this walk visits every distinct node object, so it is written for speed
        t = type(node)
        if t is Chars or t is Bytes:
            key = (t, node.ranges)
            got = self.leaf_ids.get(key)
            if got is None:
                got = self.leaf_ids[key] = self.leaf(node)
            return got
        if t is Seq or t is Alt:
            kind = _SEQ if t is Seq else _ALT
            kids: list[int] = []
            by_obj, kinds, nothing = self.by_obj, self.kind, self.nothing
            for it in node.items:
                k = by_obj.get(id(it))
                if k is None:
                    k = self.node(it)
                if k == nothing:
                    if kind == _SEQ:
                        return nothing
                    continue
                if kinds[k] == kind:  # flatten: (ab)c = abc, (a|b)|c = a|b|c
                    kids.extend(self.arg[k])
                else:
                    kids.append(k)
            if kind == _ALT:
                kids = sorted(set(kids))  # the order and repeats of branches do not matter
                if not kids:
                    return nothing
            if len(kids) == 1:
                return kids[0]
            cost = 3 + len(kids) + sum(map(self.cost.__getitem__, kids))
            return self.intern(kind, tuple(kids), cost)
        if t is Repeat:
            return self.repeat(node)
        raise TypeError(f"not a regex_ast node: {node!r}")

    def leaf(self, node: Chars | Bytes) -> int:
        start = self.c.leaves.start(node)
        if start < 0:
            return self.nothing
        self.leaf_starts.add(start)
        return self.intern(_ATOM, (_LEAVES, start), self.c.leaves.cost(start))

    def repeat(self, node: Repeat) -> int:
        lo, hi = node.min, node.max
        if hi is not None and hi < lo:
            return self.nothing
        x, item_cost = self.c.item(node.item)
        cost = _repeat_cost(item_cost, lo, hi)
        self.c.check_cost(cost)
        if hi == 0 or x.is_epsilon or (x.is_empty and lo == 0):
            return self.intern(_SEQ, (), 3)  # matches only ""
        if x.is_empty:
            return self.nothing
        if self.c.fast and x.chainable:
            return self.automaton(self.c.chain(x, lo, hi), cost)
        _check_epsilon_chain(x, lo, hi, self.c.max_work)
        if hi is None:
            self.finite = False
        # the item stays a tree here, not its DFA: the union of the item's
        # positions in several copies is coarser than the tuple of its DFA states
        return self.intern(_REP, (self.node(node.item), lo, hi), cost)

    def rep(self, item: int, lo: int, hi: int | None) -> int:
        """The REP node of a counter after one more item (no size check: it shrinks)."""
        key = (_REP, (item, lo, hi))
        got = self.ids.get(key)
        if got is None:
            got = self.ids[key] = len(self.kind)
            self.kind.append(_REP)
            self.arg.append((item, lo, hi))
            self.cost.append(0)
        return got

    def cons(self, node: int, rest: int) -> int:
        key = (node, rest)
        got = self.conts.get(key)
        if got is None:
            got = self.conts[key] = len(self.head)
            self.head.append(node)
            self.tail.append(rest)
        return got

    @cached_property
    def bounds(self) -> np.ndarray:
        """Byte classes that split no automaton's classes (once the IR is complete)."""
        cuts = {0, 256}.union(*(self.c.leaves.cuts(s) for s in self.leaf_starts))
        for a in self.automata[1:]:
            cuts.update(a.bounds.tolist())
        return np.array(sorted(cuts))


def _check_epsilon_chain(x: _Dfa, lo: int, hi: int | None, max_work: int) -> None:
    """``(x?){n}`` makes closures of about n continuations in each of n states."""
    n = hi if hi is not None else lo
    if x.accepting[0] and n * n > max_work:
        raise CompileBudgetExceeded(
            f"regex is too expensive to determinize (work budget {max_work} exceeded): "
            f"{n} repetitions of an optional item"
        )


class _Determinizer:
    """Subset construction over terms (automaton, state, continuation).

    A term is where one thread of the match stands: inside an automaton, with a
    continuation still to match after it. ``first(k)`` is the set of terms that
    entering continuation ``k`` leads to (with FINAL if k can match ""); moving a
    term on a byte class stays in its automaton, and when that accepts, also
    enters the term's continuation.

    Sets of terms are interned as ids. A term's moves are one numpy row (the id
    of the set it leads to, per byte class); a DFA state's row is the union of
    its terms' rows, computed per distinct pair of ids rather than per class.
    """

    def __init__(self, ir: _Ir, compiler: _Compiler):
        self.ir = ir
        self.c = compiler
        self.bounds = ir.bounds
        self.k = len(self.bounds) - 1
        self.tables = [None] + [a.on_classes(self.bounds) for a in ir.automata[1:]]
        self.leaves = compiler.leaves
        self.segments: dict[int, list[tuple[int, int, int]]] = {}  # leaf state -> class ranges
        self.has_out: list = [None]  # per automaton, per state (leaves: state != 0)
        self.acc: list = [None]  # per automaton, per state (leaves: state == 0)
        for a in ir.automata[1:]:
            self.has_out.append((a.table >= 0).any(axis=1).tolist())
            self.acc.append(a.accepting.tolist())
        self.terms: dict[tuple[int, int, int], int] = {}
        self.term_args: list[tuple[int, int, int]] = [(-1, -1, -1)]  # 0 = FINAL
        self.term_rows: list = [None]
        self.firsts: dict[int, frozenset[int]] = {}
        self.arrivals: dict[tuple[int, int, int], int] = {}
        self.sets: list[frozenset[int]] = []  # interned sets of terms
        self.set_ids: dict[frozenset[int], int] = {}
        self.unions: dict[tuple[int, ...], int] = {}

    def set_id(self, terms: frozenset[int]) -> int:
        got = self.set_ids.get(terms)
        if got is None:
            got = self.set_ids[terms] = len(self.sets)
            self.sets.append(terms)
            self.c.add_work(len(terms))
        return got

    def term(self, automaton: int, state: int, cont: int) -> int:
        key = (automaton, state, cont)
        got = self.terms.get(key)
        if got is None:
            got = self.terms[key] = len(self.term_args)
            self.term_args.append(key)
            self.term_rows.append(None)
        return got

    def first(self, cont: int) -> frozenset[int]:
        """Terms reached by entering ``cont`` (its epsilon closure)."""
        got = self.firsts.get(cont)
        if got is not None:
            return got
        ir = self.ir
        out: set[int] = set()
        seen = {cont}
        stack = [cont]
        while stack:
            k = stack.pop()
            if k == _END:
                out.add(_FINAL)
                continue
            node, rest = ir.head[k], ir.tail[k]
            kind, arg = ir.kind[node], ir.arg[node]
            nxt: list[int] = []
            if kind == _ATOM:
                automaton, start = arg
                if automaton == _LEAVES:  # a leaf's start is never its end
                    out.add(self.term(_LEAVES, start, rest))
                else:
                    if self.has_out[automaton][start]:
                        out.add(self.term(automaton, start, rest))
                    if self.acc[automaton][start]:
                        nxt.append(rest)
            elif kind == _SEQ:
                for child in reversed(arg):
                    rest = ir.cons(child, rest)
                nxt.append(rest)
            elif kind == _ALT:
                nxt += [ir.cons(child, rest) for child in arg]
            else:  # REP: one more item then the smaller counter, or stop here
                item, lo, hi = arg
                if hi is None or hi > 1:
                    again = (
                        node
                        if (hi is None and lo == 0)
                        else ir.rep(item, max(lo - 1, 0), None if hi is None else hi - 1)
                    )
                    nxt.append(ir.cons(item, ir.cons(again, rest)))
                else:
                    nxt.append(ir.cons(item, rest))
                if lo == 0:
                    nxt.append(rest)
            for k2 in nxt:
                if k2 not in seen:
                    seen.add(k2)
                    done = self.firsts.get(k2)
                    if done is None:
                        stack.append(k2)
                    else:  # a closure already complete: no need to walk it again
                        out |= done
        self.c.add_work(len(seen))
        got = self.firsts[cont] = frozenset(out)
        return got

    def arrive(self, automaton: int, state: int, cont: int) -> int:
        """The set of terms after moving into ``state``: stay inside, leave if it accepts."""
        key = (automaton, state, cont)
        got = self.arrivals.get(key)
        if got is None:
            if automaton == _LEAVES:  # leaf states have a way on, except the end
                inside = self.first(cont) if state == 0 else {self.term(_LEAVES, state, cont)}
            else:
                inside = (
                    {self.term(automaton, state, cont)} if self.has_out[automaton][state] else set()
                )
                if self.acc[automaton][state]:
                    inside |= self.first(cont)
            got = self.arrivals[key] = self.set_id(frozenset(inside))
        return got

    def leaf_segments(self, state: int) -> list[tuple[int, int, int]]:
        """A leaf state's edges as (first class, last class + 1, next state)."""
        got = self.segments.get(state)
        if got is None:
            edges = self.leaves.edges[state]
            cuts = np.searchsorted(self.bounds, [(lo, hi + 1) for lo, hi, _ in edges]).tolist()
            got = self.segments[state] = [
                (c0, c1, nxt) for (c0, c1), (_, _, nxt) in zip(cuts, edges, strict=True)
            ]
        return got

    def term_row(self, t: int) -> np.ndarray:
        """Per byte class, the id of the set of terms that ``t`` moves to (-1: none)."""
        got = self.term_rows[t]
        if got is not None:
            return got
        automaton, state, cont = self.term_args[t]
        if automaton == _LEAVES:
            got = np.full(self.k, -1, dtype=np.int64)
            for c0, c1, nxt in self.leaf_segments(state):
                got[c0:c1] = self.arrive(automaton, nxt, cont)
        else:
            row = self.tables[automaton][state]
            targets = np.unique(row[row >= 0]).tolist()
            lut = np.full(len(self.acc[automaton]) + 1, -1, dtype=np.int64)  # lut[-1] = -1
            lut[targets] = [self.arrive(automaton, nxt, cont) for nxt in targets]
            got = lut[row]
        self.term_rows[t] = got
        return got

    def union_rows(self, rows: list[np.ndarray]) -> np.ndarray:
        """Per class, the id of the union of the sets the terms' ``rows`` lead to.

        Terms mostly move on different bytes: only the few classes where several
        of them move need a union, computed once per distinct combination.
        """
        if len(rows) == 1:
            return rows[0]
        stack = np.array(rows)
        out = stack.max(axis=0)  # right wherever at most one term moves
        multi = np.flatnonzero((stack >= 0).sum(axis=0) > 1)
        if len(multi):
            done: dict[tuple[int, ...], int] = {}  # classes often share a column
            ids = []
            for col in map(tuple, stack[:, multi].T.tolist()):
                got = done.get(col)
                if got is None:
                    got = done[col] = self.union(tuple(sorted({x for x in col if x >= 0})))
                ids.append(got)
            out[multi] = ids
        return out

    def union(self, ids: tuple[int, ...]) -> int:
        got = self.unions.get(ids)
        if got is None:
            got = self.unions[ids] = self.set_id(frozenset().union(*(self.sets[i] for i in ids)))
        return got

    def run(self, root: int) -> tuple[np.ndarray, np.ndarray]:
        """The DFA: rows over our byte classes, and which states accept."""
        start = self.set_id(self.first(self.ir.cons(root, _END)))
        # set id -> DFA state: -2 not yet a state; the last entry (-1) is where
        # the row entry -1 ("no move") looks
        state_of = np.full(65, -2, dtype=np.int64)
        state_of[-1] = -1
        state_of[start] = 0
        queue = [start]  # DFA state -> set id
        rows: list[np.ndarray] = []
        max_states = self.c.max_states
        none = np.full(self.k, -1, dtype=np.int64)
        for n_done, cur in enumerate(queue):
            if n_done & 255 == 0:
                check_deadline("building a lexeme's automaton")
            live = [self.term_row(t) for t in self.sets[cur] if t != _FINAL]
            if not live:
                rows.append(none)
                continue
            ids = self.union_rows(live)
            if len(self.sets) >= len(state_of):  # room for every interned set
                grown = np.full(2 * len(self.sets) + 1, -2, dtype=np.int64)
                grown[: len(state_of) - 1] = state_of[:-1]
                grown[-1] = -1
                state_of = grown
            row = state_of[ids]
            if (row == -2).any():
                for s in np.unique(ids[row == -2]).tolist():
                    state_of[s] = len(queue)
                    queue.append(s)
                if len(queue) > max_states:
                    raise _too_many_states(max_states)
                row = state_of[ids]
            rows.append(row)
        accepting = np.array([_FINAL in self.sets[s] for s in queue], dtype=bool)
        return np.array(rows), accepting


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
    while True:
        merged = _merge_equal_rows(table, accepting, start)
        if merged is None:
            break
        table, accepting, start = merged
        if not merge_only:
            break
    if not merge_only and len(accepting) > 1:
        block_of = np.array(_hopcroft(table, accepting))
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


_HASH_WEIGHTS = np.random.default_rng(0).integers(1, 2**62, size=4096, dtype=np.int64)


def _merge_equal_rows(table: np.ndarray, accepting: np.ndarray, start: int):
    """One round of merging states with equal acceptance and rows, or None if all differ.

    Returns the merged (table, accepting, start). Rows are grouped by a random
    linear hash, then checked against their group's first row; a collision
    (never seen, but possible) falls back to exact sorting.
    """
    n = len(accepting)
    sig = np.column_stack([accepting, table])
    weights = _HASH_WEIGHTS[: sig.shape[1]] if sig.shape[1] <= 4096 else None
    if weights is not None:
        _, first, inv = np.unique(sig @ weights, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if len(first) == n:
            return None
        if not (sig == sig[first[inv]]).all():
            weights = None
    if weights is None:
        _, first, inv = np.unique(sig, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        if len(first) == n:
            return None
    rows = table[first]
    return np.where(rows >= 0, inv[rows.clip(0)], -1), accepting[first], int(inv[start])


def _hopcroft(table: np.ndarray, accepting: np.ndarray) -> list[int]:
    """Block id of every state of a trim DFA (equivalent states share one).

    Runs on the partial transition function, with no sink state: Hopcroft's
    refinement started from both initial blocks, as partial DFAs require. This
    avoids iterating over the many transitions into the sink.
    """
    n, k = table.shape
    # classes that behave identically in every state are one label
    table = np.unique(table, axis=1)
    k = table.shape[1]
    flat = table.ravel()
    has = flat >= 0
    target = flat[has]
    source = np.repeat(np.arange(n), k)[has]
    label = np.tile(np.arange(k), n)[has]
    order = np.argsort(target, kind="stable")
    first_in = np.searchsorted(target[order], np.arange(n + 1)).tolist()
    in_src = source[order].tolist()
    in_lbl = label[order].tolist()

    acc = set(np.flatnonzero(accepting).tolist())
    rej = set(range(n)) - acc
    blocks: list[set[int]] = [b for b in (acc, rej) if b]
    block_of = [0] * n
    for b, members in enumerate(blocks):
        for q in members:
            block_of[q] = b
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
    bounds = np.append(d.bounds[:-1][keep], 256)
    return _Dfa(t[:, keep], d.accepting, bounds, minimal=d.minimal, finite=d.finite)
