"""Compile a ``regex_ast`` node into a minimal byte-level DFA.

Pipeline: code-point sets are lowered to UTF-8 byte-range automata (the
utf8-ranges construction, surrogates excluded), the AST becomes a Thompson NFA
over byte ranges, the byte values are partitioned into classes that no range
edge splits, subset construction runs over those classes, Hopcroft's algorithm
minimises the result, and the states that cannot reach acceptance are dropped.

Every stage is budgeted so that hostile patterns (``(x{1000}){1000}``,
``(a|b)*a(a|b){30}``) fail fast with ``CompileBudgetExceeded`` instead of
hanging. Nothing is cached across calls: the caller owns caching.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .dfa import ByteDFA
from .errors import CompileBudgetExceeded
from .regex_ast import Alt, Bytes, Chars, Node, Repeat, Seq

# NFA states + edges we are willing to build; beyond this Python-level subset
# construction would be far too slow anyway.
DEFAULT_MAX_NFA = 400_000
# Total size of all NFA-state sets built during subset construction: a proxy
# for time that catches huge epsilon closures even with few DFA states.
DEFAULT_MAX_WORK = 5_000_000

_SURROGATES = (0xD800, 0xDFFF)
# Below this many elements a C-level union of per-target closures beats a walk.
_SMALL_UNION = 2048


def to_dfa(
    node: Node,
    max_states: int = 50_000,
    *,
    max_nfa: int = DEFAULT_MAX_NFA,
    max_work: int = DEFAULT_MAX_WORK,
) -> ByteDFA:
    """Compile ``node`` into a minimal ``ByteDFA`` with no dead states (start = 0).

    ``Chars`` match the UTF-8 encoding of their code points (surrogates never
    match); ``Bytes`` match raw bytes. Raises ``CompileBudgetExceeded`` when the
    NFA would exceed ``max_nfa`` states+edges, the subset construction would
    exceed ``max_states`` DFA states, or its total work exceeds ``max_work``.
    """
    nfa = _Nfa(max_nfa)
    start, accept = nfa.build(node)
    classes = _byte_classes(nfa)
    rows, accepting = _determinize(nfa, start, accept, classes, max_states, max_work)
    return _minimize(rows, accepting, classes)


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


@dataclass
class _Template:
    """A small acyclic byte automaton: ``edges[i]`` = [(lo, hi, j)], one final node."""

    edges: list[list[tuple[int, int, int]]]
    root: int
    final: int

    @property
    def cost(self) -> int:
        return len(self.edges) + sum(len(e) for e in self.edges)


def _chars_template(ranges: tuple[tuple[int, int], ...]) -> _Template:
    """A trie of the UTF-8 sequences with shared suffixes (a minimal acyclic DFA)."""
    trie: dict = {}
    for lo, hi in ranges:
        for seq in utf8_sequences(lo, hi):
            node = trie
            for r in seq:
                node = node.setdefault(r, {})
    edges: list[list[tuple[int, int, int]]] = [[]]  # node 0 = final (no edges)
    interned: dict[tuple, int] = {(): 0}

    def intern(node: dict) -> int:
        raw = sorted((lo, hi, intern(child)) for (lo, hi), child in node.items())
        merged: list[tuple[int, int, int]] = []
        for lo, hi, t in raw:  # adjacent ranges into the same node are one edge
            if merged and merged[-1][2] == t and merged[-1][1] + 1 == lo:
                merged[-1] = (merged[-1][0], hi, t)
            else:
                merged.append((lo, hi, t))
        key = tuple(merged)
        idx = interned.get(key)
        if idx is None:
            idx = interned[key] = len(edges)
            edges.append(merged)
        return idx

    if not trie:
        return _Template([[], []], root=1, final=0)
    return _Template(edges, root=intern(trie), final=0)


def _bytes_template(ranges: tuple[tuple[int, int], ...]) -> _Template:
    return _Template([[], [(lo, hi, 0) for lo, hi in ranges]], root=1, final=0)


# ---------------------------------------------------------------------------
# Thompson NFA


@dataclass
class _Nfa:
    budget: int
    eps: list[list[int]] = field(default_factory=list)
    edges: list[list[tuple[int, int, int]]] = field(default_factory=list)
    size: int = 0
    _templates: dict = field(default_factory=dict)
    _cost: dict = field(default_factory=dict)

    def new(self) -> int:
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def template(self, node: Chars | Bytes) -> _Template:
        key = (type(node), node.ranges)
        t = self._templates.get(key)
        if t is None:
            make = _chars_template if isinstance(node, Chars) else _bytes_template
            t = self._templates[key] = make(node.ranges)
        return t

    def cost(self, node: Node) -> int:
        """Upper bound on the states+edges ``build(node)`` adds (memoised by identity)."""
        got = self._cost.get(id(node))
        if got is not None:
            return got[1]
        if isinstance(node, Chars | Bytes):
            c = self.template(node).cost
        elif isinstance(node, Seq | Alt):
            c = 3 + sum(self.cost(it) + 1 for it in node.items)
        elif isinstance(node, Repeat):
            copies = node.min + (1 if node.max is None else max(node.max - node.min, 0))
            c = 4 + copies * (self.cost(node.item) + 3)
        else:
            raise TypeError(f"not a regex_ast node: {node!r}")
        self._cost[id(node)] = (node, c)  # keep node alive so its id stays unique
        return c

    def build(self, node: Node) -> tuple[int, int]:
        """Add ``node`` to the NFA; returns (start, accept)."""
        need = self.cost(node)
        if need > self.budget:
            raise CompileBudgetExceeded(
                f"regex is too large to compile: its automaton would need about {need} "
                f"NFA states+edges (budget {self.budget}); reduce repetition counts"
            )
        return self._build(node)

    def _build(self, node: Node) -> tuple[int, int]:
        if isinstance(node, Chars | Bytes):
            t = self.template(node)
            base = len(self.eps)
            for _ in t.edges:
                self.new()
            for i, out in enumerate(t.edges):
                if out:
                    self.edges[base + i] = [(lo, hi, base + j) for lo, hi, j in out]
            return base + t.root, base + t.final
        if isinstance(node, Seq):
            start = cur = self.new()
            for it in node.items:
                s, e = self._build(it)
                self.eps[cur].append(s)
                cur = e
            return start, cur
        if isinstance(node, Alt):
            start, end = self.new(), self.new()
            for it in node.items:
                s, e = self._build(it)
                self.eps[start].append(s)
                self.eps[e].append(end)
            return start, end
        if isinstance(node, Repeat):
            return self._build_repeat(node)
        raise TypeError(f"not a regex_ast node: {node!r}")

    def _build_repeat(self, node: Repeat) -> tuple[int, int]:
        start = cur = self.new()
        if node.max is not None and node.max < node.min:
            return start, self.new()  # matches nothing
        for _ in range(node.min):
            s, e = self._build(node.item)
            self.eps[cur].append(s)
            cur = e
        end = self.new()
        if node.max is None:
            s, e = self._build(node.item)
            self.eps[cur] += [s, end]
            self.eps[e] += [s, end]
            return start, end
        # x{0,k} as (x(x(x)?)?)?: linear in k
        for _ in range(node.max - node.min):
            s, e = self._build(node.item)
            self.eps[cur] += [end, s]
            cur = e
        self.eps[cur].append(end)
        return start, end


# ---------------------------------------------------------------------------
# Byte classes and subset construction


@dataclass
class _Classes:
    bounds: list[int]  # class i = bytes [bounds[i], bounds[i+1])
    of_byte: np.ndarray  # int array [256]: class id of each byte

    @property
    def n(self) -> int:
        return len(self.bounds) - 1


def _byte_classes(nfa: _Nfa) -> _Classes:
    """The coarsest partition of 0..255 that no edge range splits."""
    cuts = {0, 256}
    for out in nfa.edges:
        for lo, hi, _ in out:
            cuts.add(lo)
            cuts.add(hi + 1)
    bounds = sorted(cuts)
    of_byte = np.empty(256, dtype=np.int64)
    for i in range(len(bounds) - 1):
        of_byte[bounds[i] : bounds[i + 1]] = i
    return _Classes(bounds, of_byte)


class _Closures:
    """Epsilon closures restricted to important states, as a DAG of shared pieces.

    The epsilon graph is condensed into its strongly connected components
    (iterative Tarjan, computed lazily). Each component becomes a node holding
    its own important states and links to the components it reaches, so the
    closure of a *set* of targets is one walk over shared nodes: in
    ``(a?){n}`` a DFA transition costs O(n), not O(n^2) set unions. Each node
    also keeps its closure as a frozenset (built from its kids' sets in C), used
    directly when the union of the targets' sets is small, the common case.
    """

    def __init__(self, eps: list[list[int]], important, max_work: int) -> None:
        self.eps = eps
        self.important = important
        self.max_work = max_work
        self.node_of: dict[int, int] = {}  # NFA state -> component node
        self.own: list[list[int]] = []  # node -> its important NFA states
        self.kids: list[list[int]] = []  # node -> nodes it reaches directly
        self.sets: list[frozenset[int]] = []  # node -> its whole closure
        self.work = 0  # nodes and states visited, for the caller's budget

    def union(self, nodes) -> frozenset[int]:
        """The closure of a collection of component nodes (important states only)."""
        if len(nodes) == 1:
            for n in nodes:
                return self.sets[n]
        parts = [self.sets[n] for n in nodes]
        total = sum(map(len, parts))
        if total <= _SMALL_UNION:
            self.work += len(parts)
            return frozenset().union(*parts)
        stack = list(nodes)
        seen = set(stack)
        out: list[int] = []
        own, kids = self.own, self.kids
        while stack:
            n = stack.pop()
            out += own[n]
            for k in kids[n]:
                if k not in seen:
                    seen.add(k)
                    stack.append(k)
        self.work += len(seen) + len(out)
        return frozenset(out)

    def node(self, root: int) -> int:
        """The component node of an NFA state."""
        got = self.node_of.get(root)
        if got is not None:
            return got
        eps, node_of = self.eps, self.node_of
        idx = {root: 0}
        low = {root: 0}
        tarjan = [root]
        on_stack = {root}
        frames = [(root, 0)]
        while frames:
            v, i = frames[-1]
            succ = eps[v]
            if i < len(succ):
                frames[-1] = (v, i + 1)
                w = succ[i]
                if w in node_of:
                    continue
                if w not in idx:
                    idx[w] = low[w] = len(idx)
                    tarjan.append(w)
                    on_stack.add(w)
                    frames.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], idx[w])
                continue
            frames.pop()
            if frames:
                u = frames[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == idx[v]:
                members = []
                while True:
                    w = tarjan.pop()
                    on_stack.discard(w)
                    members.append(w)
                    if w == v:
                        break
                self._finish(members)
        return node_of[root]

    def _finish(self, members: list[int]) -> None:
        """Make the node of a completed component (its successors are all done)."""
        node_of = self.node_of
        inside = set(members)
        own = [m for m in members if self.important(m)]
        kids = {node_of[r] for m in members for r in self.eps[m] if r not in inside}
        self.work += len(members)
        if not own and len(kids) == 1:
            node = next(iter(kids))  # a pure pass-through: alias, do not add a node
        else:
            node = len(self.own)
            self.own.append(own)
            self.kids.append(list(kids))
            closure = frozenset(own).union(*[self.sets[k] for k in kids])
            self.sets.append(closure)
            self.work += len(closure)
            if self.work > self.max_work:
                raise CompileBudgetExceeded(
                    f"regex is too expensive to determinize (work budget {self.max_work} exceeded)"
                )
        for m in members:
            node_of[m] = node


def _determinize(
    nfa: _Nfa, start: int, accept: int, classes: _Classes, max_states: int, max_work: int
) -> tuple[list[list[int]], list[bool]]:
    """Subset construction over byte classes; rows[i][c] = next state or -1."""
    important = {s for s, out in enumerate(nfa.edges) if out}
    important.add(accept)
    closure = _Closures(nfa.eps, important.__contains__, max_work)
    # flat[s] = ((class, target component node), ...) for NFA states with byte edges:
    # expanded once so the hot loop below is a plain scan
    bounds = classes.bounds
    flat: dict[int, tuple[tuple[int, int], ...]] = {}
    for s, out in enumerate(nfa.edges):
        if out:
            pairs = []
            for lo, hi, t in out:
                node = closure.node(t)
                c0, c1 = bisect_right(bounds, lo) - 1, bisect_right(bounds, hi) - 1
                pairs += [(c, node) for c in range(c0, c1 + 1)]
            flat[s] = tuple(pairs)
    first = closure.union((closure.node(start),))
    index: dict[frozenset[int], int] = {first: 0}
    sets = [first]
    rows: list[list[int]] = []
    accepting: list[bool] = []
    by_key: dict = {}  # component node, or frozenset of them -> DFA state
    work = 0
    n_cls = classes.n
    i = 0
    while i < len(sets):
        cur = sets[i]
        i += 1
        accepting.append(accept in cur)
        per_class: defaultdict[int, list[int]] = defaultdict(list)
        for s in cur:
            fl = flat.get(s)
            if fl:
                for c, node in fl:
                    per_class[c].append(node)
        row = [-1] * n_cls
        for c, nodes in per_class.items():
            key = nodes[0] if len(nodes) == 1 else frozenset(nodes)
            nxt = by_key.get(key)
            if nxt is None:
                dset = closure.union(nodes if len(nodes) == 1 else key)
                nxt = index.get(dset)
                if nxt is None:
                    nxt = index[dset] = len(sets)
                    sets.append(dset)
                    if len(sets) > max_states:
                        raise CompileBudgetExceeded(
                            f"regex needs more than {max_states} DFA states; "
                            "simplify it (e.g. bound fewer repetitions after a wildcard)"
                        )
                by_key[key] = nxt
            row[c] = nxt
        rows.append(row)
        work += len(cur)
        if work + closure.work > max_work:
            raise CompileBudgetExceeded(
                f"regex is too expensive to determinize (work budget {max_work} exceeded)"
            )
    return rows, accepting


# ---------------------------------------------------------------------------
# Minimisation (Hopcroft) and clean-up


def _minimize(rows: list[list[int]], accepting: list[bool], classes: _Classes) -> ByteDFA:
    """Drop dead states, minimise (Hopcroft), renumber in BFS order from the start."""
    table = np.array(rows, dtype=np.int64).reshape(len(rows), classes.n)
    # classes that behave identically in every state are one column from here on
    table, col_of_class = np.unique(table, axis=1, return_inverse=True)
    col_of_byte = col_of_class.reshape(-1)[classes.of_byte]
    block_of = _hopcroft(table, np.array(accepting, dtype=bool))
    if block_of[0] < 0:  # the start state is dead: the language is empty
        return ByteDFA(np.full((1, 256), -1, dtype=np.int32), np.zeros(1, dtype=bool))
    return _renumber(table, accepting, block_of, col_of_byte)


def _hopcroft(table: np.ndarray, accepting: np.ndarray) -> list[int]:
    """Block id of every state (-1 for states that cannot reach acceptance).

    Runs on the partial transition function, with no sink state: dead states
    are removed first, after which two live states are equivalent exactly when
    Hopcroft's refinement (started from both initial blocks, as partial DFAs
    require) leaves them together. This avoids iterating over the many
    transitions into the sink.
    """
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

    # live states: those that reach acceptance (reverse search over in-edges)
    live = accepting.tolist()
    stack = [q for q in range(n) if live[q]]
    while stack:
        q = stack.pop()
        for j in range(first_in[q], first_in[q + 1]):
            p = in_src[j]
            if not live[p]:
                live[p] = True
                stack.append(p)

    acc = {q for q in range(n) if accepting[q]}
    rej = {q for q in range(n) if live[q] and not accepting[q]}
    blocks: list[set[int]] = [b for b in (acc, rej) if b]
    block_of = [-1] * n
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


def _renumber(
    table: np.ndarray, accepting: list[bool], block_of: list[int], col_of_byte: np.ndarray
) -> ByteDFA:
    """Quotient by the blocks, number states in BFS order from the start."""
    n, k = table.shape
    rep: dict[int, int] = {}  # block -> a representative state
    for q in range(n):
        rep.setdefault(block_of[q], q)
    rows = table.tolist()
    order = [block_of[0]]
    new_id = {block_of[0]: 0}
    out_rows: list[list[int]] = []
    i = 0
    while i < len(order):
        out = []
        for t in rows[rep[order[i]]]:
            b = -1 if t < 0 else block_of[t]
            if b < 0:
                out.append(-1)
                continue
            j = new_id.get(b)
            if j is None:
                j = new_id[b] = len(order)
                order.append(b)
            out.append(j)
        out_rows.append(out)
        i += 1
    col_table = np.array(out_rows, dtype=np.int32).reshape(len(order), k)
    table_out = np.ascontiguousarray(col_table[:, col_of_byte])
    acc = np.array([accepting[rep[b]] for b in order], dtype=bool)
    return ByteDFA(table_out, acc)
