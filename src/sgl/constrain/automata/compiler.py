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
  continuation, so they are explored once, not once per branch
  (``determinize.py``).
- Results are minimised unless minimal by design (leaves, literals, chains of
  finite items, some glues; each place says why). Merging states with equal
  rows until none are left is exact for acyclic DFAs; others go through
  Hopcroft's algorithm (``dfa.py``, with the class-compressed DFAs and UTF-8 lowering).

Budgets make hostile patterns fail fast with ``CompileBudgetExceeded``: the
pattern's size (measured in Thompson-NFA states+edges, as earlier versions
did), the states any one construction step builds, and the total work of the
subset constructions (sizes of the state sets and closures built).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from ..errors import CompileBudgetExceeded
from ..regex_ast import Alt, Bytes, Chars, Node, Repeat, Seq, literal
from .determinize import _Determinizer, _Ir, _repeat_cost
from .dfa import (
    _ALL_BYTES,
    _SURROGATES,
    ByteDFA,
    _common_bounds,
    _Dfa,
    _edge_dfa,
    _merge_equal_columns,
    _minimize,
    _one_state,
    _too_many_states,
    equal_rows,
    sorted_unique,
    utf8_sequences,
)

# Pattern size we are willing to compile, in Thompson-NFA states+edges.
DEFAULT_MAX_NFA = 400_000
# Total size of all state sets and closures built by subset constructions: a
# proxy for time that catches huge epsilon closures even with few DFA states.
DEFAULT_MAX_WORK = 5_000_000
# States of the trie of one alternation of literal strings (choices, enums): one per
# byte not shared as a prefix with another string.
DEFAULT_MAX_TRIE_STATES = 1_500_000

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
    direct = getattr(node, "direct_byte_dfa", None)  # a node that builds its own (json_keys, json_counted, automata.numbers)
    if direct is not None:
        got = direct(max_states)
        if got is not None:
            return got
        node = node.regex  # a number lexeme the position automaton does not take
    compiler = _Compiler(max_states, max_nfa, max_work, max_trie_states=max_trie_states)
    return compiler.minimal(node)[0].to_byte_dfa()


def general_dfa(node: Node, max_states: int = 50_000, *, fast: bool = True) -> ByteDFA:
    """``to_dfa`` by the construction itself, for tests of its shortcuts.

    A node's own ``direct_byte_dfa`` is not used; with ``fast=False`` neither are the
    literal and counter chains, the gluing of sequences nor the cross-call cache
    (Hopcroft minimises every step). Default budgets otherwise.
    """
    compiler = _Compiler(max_states, DEFAULT_MAX_NFA, DEFAULT_MAX_WORK, fast=fast)
    return compiler.minimal(node)[0].to_byte_dfa()


def words_dfa(words: list[bytes], max_states: int = DEFAULT_MAX_TRIE_STATES) -> ByteDFA:
    """The minimal ``ByteDFA`` of a finite set of byte strings (see ``_trie_dfa``).

    Small sets (``SMALL_TRIE_BYTES`` bytes in all) take the plain-Python construction,
    larger ones numpy's; both give the same automaton.
    """
    return _trie_dfa(words, max_states).to_byte_dfa()


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


def literal_dfa(data: bytes) -> ByteDFA:
    """The minimal ``ByteDFA`` of exactly ``data`` (a chain), built directly: literal
    lexemes are the most common kind, thousands to a grammar."""
    n = len(data)
    table = np.full((n + 1, 256), -1, dtype=np.int32)
    table[np.arange(n), np.frombuffer(data, dtype=np.uint8)] = np.arange(1, n + 1, dtype=np.int32)
    accepting = np.zeros(n + 1, dtype=bool)
    accepting[n] = True
    dfa = ByteDFA(table, accepting)
    if n:
        # a chain is its own fresh-start form (nothing enters state 0, which does not
        # accept), and its content is its bytes: the lexer takes this key instead of
        # scanning and hashing the table (most new lexemes of a median schema are keys)
        dfa.content_key = hashlib.sha256(b"literal\0" + data).digest()[:16]
    return dfa


def _literal_dfa(data: bytes) -> _Dfa:
    """The chain of one string's bytes (minimal: one word)."""
    b = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
    bounds = sorted_unique(np.concatenate([_ALL_BYTES, b, b + 1]))
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


def _optional(x: _Dfa, max_states: int) -> _Dfa:
    """``X?`` for a minimal X: its start made accepting, on a copy of the start when
    some move comes back to it (those must not accept ""). Not minimal in general
    (the new start may equal another state)."""
    if x.accepting[0]:
        return x
    back = bool((x.table == 0).any())
    if x.n + back > max_states:
        raise _too_many_states(max_states)
    accepting = x.accepting.copy()
    if not back:
        accepting[0] = True
        return _Dfa(x.table, accepting, x.bounds, minimal=False, finite=x.finite)
    table = np.vstack([x.table[:1], x.table])
    table = np.where(table >= 0, table + 1, -1)
    return _Dfa(table, np.concatenate([[True], accepting]), x.bounds, minimal=False, finite=x.finite)


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


# ---------------------------------------------------------------------------
# The compiler



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
                return _one_state(False), 2
            return self.leaves.dfa(start), self.leaves.cost(start)
        if self.fast:
            if isinstance(node, LiteralAlt) or (isinstance(node, Alt) and len(node.items) > 8):
                words = _alternative_words(node)
                if words is not None:  # a trie: linear in their size, the general path quadratic
                    d = _trie_dfa(words, self.max_trie_states)
                    return d, d.n
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
                if node.max == 1:
                    # X? (or X{1}) from X's minimal DFA: determinising X's tree again
                    # cost ~10 us per state (8,751 states for one date-time lexeme)
                    cost = _repeat_cost(item_cost, node.min, node.max)
                    self.check_cost(cost)
                    return (x if node.min == 1 else _optional(x, self.max_states)), cost
        ir = _Ir(self)
        root = ir.node(node)
        table, accepting = _Determinizer(ir, self).run(root)
        d = _Dfa(table, accepting, ir.bounds, minimal=False, finite=ir.finite)
        return d, ir.cost[root]

    def glued(self, node: Seq) -> tuple[_Dfa, int] | None:
        """The items' minimal DFAs glued end to start, or None if one glue is impossible."""
        parts = [self.minimal(it) if type(it) is Chars else self.item(it) for it in node.items]
        cost = 3 + sum(c + 1 for _, c in parts)
        self.check_cost(cost)
        for d, _ in parts:
            if d.is_empty:
                return d, cost
        out = _one_state(True)
        for d in self._glue_pieces(node.items, parts):
            out = _glue(out, d)
            if out is None:
                return None
            if out.n > self.max_states:
                raise _too_many_states(self.max_states)
            if not out.minimal:
                out = _minimize(out)
        return out, cost

    @staticmethod
    def _glue_pieces(items: tuple[Node, ...], parts: list[tuple[_Dfa, int]]) -> list[_Dfa]:
        """The DFAs to glue for ``items``: each run of two or more single code points
        as one literal chain (a constant string with a ``/``, which JSON may also spell
        ``\\/``, is a Seq of characters and small Alts: gluing it one character at a
        time cost ~80 us a character, 3.6 ms for a 44-character Kubernetes constant)."""
        pieces: list[_Dfa] = []
        run: list[int] = []  # code points of the current run
        single: list[_Dfa] = []  # the DFA of a run of one, used as it is

        def flush() -> None:
            if len(run) > 1:
                pieces.append(_literal_dfa("".join(map(chr, run)).encode("utf-8")))
            else:
                pieces.extend(single)
            run.clear()
            single.clear()

        for it, (d, _) in zip(items, parts, strict=True):
            cp = _single_code_point(it)
            if cp is not None:
                run.append(cp)
                if len(run) == 1:
                    single.append(d)
                continue
            flush()
            pieces.append(d)
        flush()
        return pieces

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
            got = tuple(map(literal, self.words))
            object.__setattr__(self, "_items", got)
        return got

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if isinstance(other, LiteralAlt):
            return self.words == other.words
        # one item per word: an Alt of another length (``NOTHING``, which the emitters
        # compare every lexeme with) differs without building the items
        return isinstance(other, Alt) and len(other.items) == len(self.words) and self.items == other.items

    def __repr__(self) -> str:
        return f"LiteralAlt({len(self.words)} strings)"


def _alternative_words(node: Alt) -> list[bytes] | None:
    """The UTF-8 strings of an Alt whose items are all literal strings, else None."""
    words = []
    if isinstance(node, LiteralAlt):
        for w in node.words:
            try:
                words.append(w.encode("utf-8"))
            except UnicodeEncodeError:
                pass  # a word with a lone surrogate has no UTF-8 form: it matches nothing
        return words
    for it in node.items:
        cp = _single_code_point(it)
        if cp is not None:
            words.append(chr(cp).encode("utf-8"))
            continue
        data = b"" if isinstance(it, Seq) and not it.items else _literal_bytes(it)
        if data is None:
            return None
        words.append(data)
    return words


def _trie(words: list[bytes], max_states: int) -> tuple[list[bool], list[int], bytearray]:
    """The trie of sorted distinct ``words``: per node whether a word ends there and, per
    node but the root, its parent and byte (``parent[i - 1]`` and ``label[i - 1]`` for
    node ``i``). Nodes are numbered as the words create them (pre-order, children by
    byte), so children come after their parent, in byte order.

    Raises ``CompileBudgetExceeded`` when the trie needs more than ``max_states``
    states (one per byte not shared as a prefix with another string)."""
    final, parent, label = [False], [], bytearray()
    path, prev = [0], b""
    for w in words:
        k, m = 0, min(len(w), len(prev))
        while k < m and w[k] == prev[k]:
            k += 1
        del path[k + 1:]
        if len(final) + len(w) - k > max_states:
            raise CompileBudgetExceeded(
                f"the {len(words)} alternative strings need a trie of more than {max_states} "
                "states (budget: choice_states)", budget="choice_states"
            )
        for _ in range(k, len(w)):
            parent.append(path[-1])
            path.append(len(final))
            final.append(False)
        label += w[k:]
        final[path[-1]] = True
        prev = w
    return final, parent, label


def _trie_dfa(words: list[bytes], max_states: int = DEFAULT_MAX_TRIE_STATES) -> _Dfa:
    """The minimal DFA of a finite set of strings: a trie (see ``_trie``, which raises
    past ``max_states``), then states with the same right language merged height by
    height (children are always merged first)."""
    words = sorted(set(words))
    if sum(map(len, words)) <= SMALL_TRIE_BYTES:
        return _small_trie_dfa(words, max_states)
    final, parent, lab = _trie(words, max_states)
    n = len(final)
    height = [0] * n
    for d in range(n - 1, 0, -1):  # children have larger ids
        s = parent[d - 1]
        if height[d] + 1 > height[s]:
            height[s] = height[d] + 1
    labels = np.frombuffer(bytes(lab), dtype=np.uint8).astype(np.int64)
    bounds = sorted_unique(np.concatenate([_ALL_BYTES, labels, labels + 1]))
    table = np.full((n, len(bounds) - 1), -1, dtype=np.int64)
    table[np.asarray(parent, dtype=np.int64), np.searchsorted(bounds, labels)] = np.arange(1, n)
    accepting = np.asarray(final, dtype=bool)
    heights = np.asarray(height)
    canon = np.full(n, -1, dtype=np.int64)
    out_rows, out_acc = [], []
    for level in sorted_unique(heights):  # canonical ids, level by level from the leaves up
        nodes = np.flatnonzero(heights == level)
        rows = table[nodes]
        rows = np.where(rows >= 0, canon[rows.clip(0)], -1)
        first, inv = equal_rows(np.column_stack([accepting[nodes], rows]))
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


# Up to this many bytes in all, a word set's DFA is built in plain Python: the numpy
# construction's fixed costs per height level dominated small enums (~0.4 ms for three).
SMALL_TRIE_BYTES = 2048


def _small_trie_dfa(words: list[bytes], max_states: int = DEFAULT_MAX_TRIE_STATES) -> _Dfa:
    """``_trie_dfa`` for a small sorted set of distinct words: states hash-consed
    bottom-up by (accepting, moves to already-consed states), which is the minimal DFA
    of a finite language.

    The trie's children come after their parent, in byte order (``_trie``): consing the
    nodes from the last one back needs no stack and no sort (a post-order, last child
    first: a node's moves are gathered from its children, so in reverse)."""
    final, parent, label = _trie(words, max_states)
    ids: dict[tuple, int] = {}
    sigs: list[tuple] = []
    moves: list[list] = [[] for _ in final]  # per trie node: (byte, state), last child first
    for node in range(len(final) - 1, -1, -1):
        sig = (final[node], tuple(moves[node][::-1]))
        got = ids.get(sig)
        if got is None:
            got = ids[sig] = len(sigs)
            sigs.append(sig)
        if node:
            moves[parent[node - 1]].append((label[node - 1], got))
    start = got  # the root is consed last
    order = [start] + [i for i in range(len(sigs)) if i != start]  # the start first
    new = {old: k for k, old in enumerate(order)}
    labels = sorted({b for _, moves in sigs for b, _ in moves})
    bounds = sorted({0, 256, *labels, *(b + 1 for b in labels)})
    col = {b: i for i, b in enumerate(bounds)}  # each label starts its own class
    table = np.full((len(sigs), len(bounds) - 1), -1, dtype=np.int64)
    accepting = np.zeros(len(sigs), dtype=bool)
    rows, cols, targets = [], [], []
    for k, old in enumerate(order):
        is_final, moves = sigs[old]
        accepting[k] = is_final
        for b, t in moves:
            rows.append(k)
            cols.append(col[b])
            targets.append(new[t])
    if rows:
        table[rows, cols] = targets
    return _merge_equal_columns(_Dfa(table, accepting, np.array(bounds, dtype=np.int64), minimal=True, finite=True))


def _single_code_point(node: Node) -> int | None:
    """The code point of a Chars of exactly one (non-surrogate) code point, else None."""
    if type(node) is not Chars or len(node.ranges) != 1:
        return None
    lo, hi = node.ranges[0]
    if lo != hi or _SURROGATES[0] <= lo <= _SURROGATES[1]:
        return None
    return lo


def _literal_bytes(node: Node) -> bytes | None:
    """The UTF-8 bytes of a Seq of single code points (a literal string), else None."""
    if not isinstance(node, Seq) or not node.items:
        return None
    cps = []
    for it in node.items:
        cp = _single_code_point(it)
        if cp is None:
            return None
        cps.append(cp)
    return "".join(map(chr, cps)).encode("utf-8")
