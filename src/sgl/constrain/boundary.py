"""The boundary recursion of a mask miss in one C call (``_native.Boundaries``).

``MaskComputer._boundaries`` is the reference (and the pure-Python path): for each group
of boundary subtrees, scan the completed lexemes, find the next column's lexer, walk the
subtrees there (cached per walk), OR the tokens read inside, recurse. Here the C side
runs that loop, with the scans on the C Earley, over pieces registered from Python (walk
results, which lexemes a lexer state completes, the lexer of an allowed-lexeme set). What
it meets for the first time it reports instead of descending; Python builds those pieces
with the same functions the Python path uses, registers them and runs it again (OR-ing
the same words twice is harmless), until nothing is missing. After the first masks of a
grammar almost every run completes in one call.

With the token trie (``trie``) and lexers over C products, the sub-walks are made in C
too: a walk is registered with its boundary nodes (``add_walk_nodes``), the C side groups
them by the lexemes each state completes, walks each group's subtrees in the next lexer
and registers the result itself, with no report and no Python object. (It was ~30 µs of
Python per sub-walk: the walk's result arrays, the grouping, the registration.) Python
still makes the sub-walks the C side cannot (a lexer without a C product, a product
over its state budget) from the group's nodes (``group_nodes``).

A column the duplicate-key check filtered (a key position without its used keys, a
value's end without a dead ``,``) is walked in a *filtered lexer* the C side makes by
itself: the product of the column's unfiltered set (one Python lexer per object, reported
once as a "lexer" fill) seen through the lexemes the check kept. It is the walk the
product of the kept lexemes alone makes (transitions are componentwise: a state is alive
where a kept lexeme is, accepting where a kept lexeme accepts), with no Python lexer,
product or fill per set of used keys. Their ids start at ``FILTERED_BASE``; Python sees
one only where it must make a sub-walk into it (then in the kept set's own lexer).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .native import _native

# tests: run the python_scans mode (every new scan and column lexer made through
# ``EarleyParser.scan``) for every grammar; the masks must not change. No grammar needs it
# now: the duplicate-key check, which filters columns, runs in the compiled scan too
FORCE_PYTHON_SCANS = False

# filtered columns walked in filtered lexers made in C (see above); 0 gives each filtered
# set its own Python lexer, reported as a "lexer" fill; 2 makes them but has Python make
# their sub-walks (the path of a product over its state budget). Tests compare the three
FILTERED_LEXERS = 1
FILTERED_BASE = 1 << 28  # the first filtered lexer's id (_native_boundary.c)


def c_lexer(lex) -> bool:
    """Are the groups of walks in ``lex`` and the sub-walks into it made in C? Lexers over a
    C product; tests narrow it to reach the sub-walks Python makes for C groups."""
    return hasattr(lex.core, "product")


class NativeBoundaries:
    """One grammar's registered pieces (used under the grammar's lock, as its masks are)."""

    def __init__(self, parser, lexer, n_words: int, group: Callable, python_scans: bool = False,
                 trie: tuple | None = None, stub: Callable | None = None):
        """``group(core, res)``: a walk's boundary groups (``mask._group_boundaries``).
        ``trie``: (packed nodes, subtree byte sets, max chars, token ids) of the vocabulary's
        trie, for the sub-walks made in C; ``stub(nodes)``: a walk result whose boundaries
        are these trie nodes (what ``walk_rest`` continues), for the ones Python makes.
        ``python_scans``: new scans go through ``parser.scan``, each column's lexer from
        its Python ``allowed`` (the C loop still runs everything met before): the mode a
        parser whose Python scans filter columns needed before the duplicate-key check
        moved into the compiled scan; kept for tests (``FORCE_PYTHON_SCANS``)."""
        self._c = _native.Boundaries(parser.native, sorted(parser.t.ignore), n_words, python_scans)
        self._c.set_filtered(int(FILTERED_LEXERS))
        self._parser, self._lexer = parser, lexer
        self._group = group
        self._lexers: list = []  # L -> LexerDFA (kept alive: ids are by object)
        self._lexer_ids: dict[int, int] = {}
        self._walks: dict[int, object] = {}  # W -> WalkResult (walks made in C have none)
        self._walk_ids: dict[int, int] = {}
        self._py_groups: set[int] = set()  # W grouped by Python (its res.groups), not in C
        self._c_lexers: set[int] = set()  # L whose C product the C side has (c_lexer)
        self._stub = stub
        if trie is not None and stub is not None:
            self._c.set_trie(*trie)
        self._sub_walks = trie is not None and stub is not None

    def lexer_id(self, lex) -> int:
        got = self._lexer_ids.get(id(lex))
        if got is None:
            got = self._lexer_ids[id(lex)] = len(self._lexers)
            self._lexers.append(lex)
            if self._sub_walks and c_lexer(lex):  # a C product: sub-walks into it in C
                self._c.set_product(got, lex.core.product, lex.order)
                self._c_lexers.add(got)
            elif self._sub_walks and not lex.order:  # no lexemes: reads nothing (Python's core)
                self._c.set_product(got, None, ())
        return got

    def walk_id(self, res, lexer) -> int:
        """``res`` (a walk in ``lexer``) registered; with what its groups' states complete
        in ``lexer``, which the next run needs anyway (one round fewer)."""
        got = self._walk_ids.get(id(res))
        if got is None and res.by_node and self.lexer_id(lexer) in self._c_lexers:
            L = self.lexer_id(lexer)
            if res.boundary_ids.size:  # grouped in C, what its states complete included
                got = self._c.add_walk_nodes(res.inside, res.boundary_ids, res.boundary_state, L)
            else:
                got = self._c.add_walk(res.inside, ())
            self._walk_ids[id(res)] = got
            self._walks[got] = res
        elif got is None:
            reps: list[int] = []
            if res.boundary_ids.size:
                if res.groups is None:
                    res.groups = self._group(lexer.core, res)
                reps = [group[0] for group, _sel in res.groups]
            L = self.lexer_id(lexer)
            got = self._walk_ids[id(res)] = self._c.add_walk(res.inside, reps, L)
            self._walks[got] = res
            self._py_groups.add(got)
            for st in reps:
                self._c.set_accepts(L, st, tuple(lexer.accepts[st]))
        return got

    def run(self, col, lexer, res, words: np.ndarray, deadline: float | None, check_budget: Callable,
            walk_rest: Callable) -> None:
        """OR into ``words`` every token of ``res``'s boundary subtrees that goes on from
        column ``col`` (whose current lexer, the one ``res`` walked, is ``lexer``).
        ``walk_rest(lexer, res, sel)``: the walk of a group's subtrees (``_walk_rest``; passed
        per call, not kept, so that this object holds no reference to its mask computer)."""
        if not res.boundary_ids.size:
            return
        c = self._c
        L, W = self.lexer_id(lexer), self.walk_id(res, lexer)
        limit = float("inf") if deadline is None else deadline
        while True:
            missing = c.run(col.uid, L, W, words, limit)
            if missing is None:  # the C loop saw the deadline pass
                check_budget()
                limit = float("inf")  # the deadline moved (a test's clock): go on
                continue
            if not missing:
                return
            check_budget()
            for item in dict.fromkeys(missing):
                self._fill(item, check_budget, walk_rest)

    def _fill(self, item: tuple, check_budget: Callable, walk_rest: Callable) -> None:
        kind = item[0]
        if kind == "accepts":
            _, L, st = item
            self._c.set_accepts(L, st, tuple(self._lexers[L].accepts[st]))
        elif kind == "scan":
            _, col, L, st = item
            nxt = self._parser.scan(self._parser.columns[col], self._lexers[L].accepts[st])
            if nxt is not None:
                self._c.set_column_lexer(nxt.uid, self.lexer_id(self._lexer.for_lexemes(nxt.allowed)))
            self._c.set_child(col, L, st, -1 if nxt is None else nxt.uid)
        elif kind == "column":
            col = self._parser.columns[item[1]]
            self._c.set_column_lexer(col.uid, self.lexer_id(self._lexer.for_lexemes(col.allowed)))
        elif kind == "lexer":
            allowed = item[1]
            lex = self._lexer.for_lexemes(self._parser.allowed_set(allowed))
            self._c.set_lexer(allowed, self.lexer_id(lex))
        elif item[1] not in self._py_groups:  # grouped in C: the group's nodes
            _, W, g, L2 = item
            nxt = self._lexer_at(L2)
            nodes = np.frombuffer(self._c.group_nodes(W, g), dtype=np.int32).astype(np.int64)
            check_budget()
            self._c.set_sub(W, g, L2, self.walk_id(walk_rest(nxt, self._stub(nodes), slice(None)), nxt))
        else:
            _, W, g, L2 = item
            res, nxt = self._walks[W], self._lexer_at(L2)
            group, sel = res.groups[g]
            key = (group, nxt.core.uid)  # the same cache as the Python path's
            sub = res.subs.get(key)
            if sub is None:
                check_budget()
                sub = res.subs[key] = walk_rest(nxt, res, sel)
            self._c.set_sub(W, g, L2, self.walk_id(sub, nxt))

    def _lexer_at(self, L: int):
        """Lexer ``L``: registered by Python, or a filtered lexer made in C (its set's own
        lexer, for a sub-walk Python makes: the C walk ran over its state budget)."""
        if L < FILTERED_BASE:
            return self._lexers[L]
        allowed = self._c.filtered_lexer(L)[0]
        return self._lexer.for_lexemes(self._parser.allowed_set(allowed))

    def lexers(self) -> list:
        """The lexers Python registered (by id, in order)."""
        return list(self._lexers)

    def filtered_lexers(self) -> int:
        """How many filtered lexers the C side has made (see the module's docstring)."""
        return self._c.filtered_lexer(-1)[1]
