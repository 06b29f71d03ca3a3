"""Subset construction of the regex compiler (``compiler``) over *terms*.

The tree above the compiled automata is hash-consed into an IR (``_Ir``); a term is
(automaton, state, continuation), the continuation being the interned list of IR
nodes still to match. ``_Determinizer`` builds the DFA whose states are sets of
terms; equal tails are one continuation, so they are explored once, not once per
branch.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CompileBudgetExceeded, check_deadline
from ..regex_ast import Alt, Bytes, Chars, Node, Repeat, Seq
from .dfa import _Dfa, _too_many_states

if TYPE_CHECKING:
    from .compiler import _Compiler

_ATOM, _SEQ, _ALT, _REP = range(4)
_LEAVES = 0  # automaton 0 of every IR: the shared leaves
_END = 0  # the empty continuation
_FINAL = 0  # the term "the whole pattern has matched"


def _repeat_cost(item_cost: int, lo: int, hi: int | None) -> int:
    copies = lo + (1 if hi is None else max(hi - lo, 0))
    return 4 + copies * (item_cost + 3)


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
        if isinstance(node, Seq):  # a subclass that builds its own DFA (json_counted), nested
            return self._node(Seq(node.items))
        if isinstance(node, Alt):  # a subclass (a word list, a number lexeme), nested
            return self._node(Alt(node.items))
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
        if hi == 1 and self.c.fast:
            # one copy at most: the item's minimal DFA (built just above) is the coarsest
            # form of it, and its tree would be determinised again here
            return self.intern(_REP, (self.automaton(x, item_cost), lo, hi), cost)
        # the item stays a tree here, not its DFA: the union of the item's
        # positions in several copies is coarser than the tuple of its DFA states
        return self.intern(_REP, (self.node(node.item), lo, hi), cost)

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
        self.segments: dict[int, tuple[list[int], np.ndarray]] = {}  # leaf state -> its moves
        self.moves: dict[tuple[int, int], tuple[list[int], np.ndarray]] = {}  # automaton state -> its moves
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
                    # the counter after one more item (cost 0: it shrinks, no size check)
                    smaller = (item, max(lo - 1, 0), None if hi is None else hi - 1)
                    again = node if (hi is None and lo == 0) else ir.intern(_REP, smaller, 0)
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

    def leaf_segments(self, state: int) -> tuple[list[int], np.ndarray]:
        """A leaf state's moves: (next states, per byte class the index of the one taken
        there, ``len(next states)`` where none is)."""
        got = self.segments.get(state)
        if got is None:
            edges = self.leaves.edges[state]
            cuts = np.searchsorted(self.bounds, [(lo, hi + 1) for lo, hi, _ in edges]).tolist()
            inv = np.full(self.k, len(edges), dtype=np.intp)
            for i, (c0, c1) in enumerate(cuts):
                inv[c0:c1] = i
            got = self.segments[state] = ([nxt for _, _, nxt in edges], inv)
        return got

    def automaton_moves(self, automaton: int, state: int) -> tuple[list[int], np.ndarray]:
        """A compiled automaton's state's moves: (its distinct next states ascending, -1
        first where some class has none; per byte class the index of the one taken).
        Shared by the state's terms; no table-sized lookup array per term (a term of a
        20,000-state automaton filled one: quadratic in big lexemes)."""
        key = (automaton, state)
        got = self.moves.get(key)
        if got is None:
            row = self.tables[automaton][state]
            targets = sorted(set(row.tolist()))  # a few distinct ones in a short row: no np.unique
            got = self.moves[key] = (targets, np.searchsorted(np.array(targets), row))
        return got

    def term_row(self, t: int) -> np.ndarray:
        """Per byte class, the id of the set of terms that ``t`` moves to (-1: none)."""
        got = self.term_rows[t]
        if got is not None:
            return got
        automaton, state, cont = self.term_args[t]
        arrive = self.arrive
        if automaton == _LEAVES:
            targets, inv = self.leaf_segments(state)
            ids = [arrive(automaton, nxt, cont) for nxt in targets]
            ids.append(-1)
        else:
            targets, inv = self.automaton_moves(automaton, state)
            ids = [-1 if nxt < 0 else arrive(automaton, nxt, cont) for nxt in targets]
        got = np.array(ids, dtype=np.int64)[inv]
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
                for s in sorted(set(ids[row == -2].tolist())):  # np.unique's order, less overhead
                    state_of[s] = len(queue)
                    queue.append(s)
                if len(queue) > max_states:
                    raise _too_many_states(max_states)
                row = state_of[ids]
            rows.append(row)
        accepting = np.array([_FINAL in self.sets[s] for s in queue], dtype=bool)
        return np.array(rows), accepting
