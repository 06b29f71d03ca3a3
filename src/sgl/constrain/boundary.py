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
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .native import _native

# tests: run the python_scans mode (every new scan and column lexer made through
# ``EarleyParser.scan``) for every grammar; the masks must not change. No grammar needs it
# now: the duplicate-key check, which filters columns, runs in the compiled scan too
FORCE_PYTHON_SCANS = False


class NativeBoundaries:
    """One grammar's registered pieces (used under the grammar's lock, as its masks are)."""

    def __init__(self, parser, lexer, n_words: int, group: Callable, python_scans: bool = False):
        """``group(core, res)``: a walk's boundary groups (``mask._group_boundaries``).
        ``python_scans``: new scans go through ``parser.scan``, each column's lexer from
        its Python ``allowed`` (the C loop still runs everything met before): the mode a
        parser whose Python scans filter columns needed before the duplicate-key check
        moved into the compiled scan; kept for tests (``FORCE_PYTHON_SCANS``)."""
        self._c = _native.Boundaries(parser.native, sorted(parser.t.ignore), n_words, python_scans)
        self._parser, self._lexer = parser, lexer
        self._group = group
        self._lexers: list = []  # L -> LexerDFA (kept alive: ids are by object)
        self._lexer_ids: dict[int, int] = {}
        self._walks: list = []  # W -> WalkResult
        self._walk_ids: dict[int, int] = {}

    def lexer_id(self, lex) -> int:
        got = self._lexer_ids.get(id(lex))
        if got is None:
            got = self._lexer_ids[id(lex)] = len(self._lexers)
            self._lexers.append(lex)
        return got

    def walk_id(self, res, lexer) -> int:
        """``res`` (a walk in ``lexer``) registered; with what its groups' states complete
        in ``lexer``, which the next run needs anyway (one round fewer)."""
        got = self._walk_ids.get(id(res))
        if got is None:
            reps: list[int] = []
            if res.boundary_ids.size:
                if res.groups is None:
                    res.groups = self._group(lexer.core, res)
                reps = [group[0] for group, _sel in res.groups]
            got = self._walk_ids[id(res)] = self._c.add_walk(res.inside, reps)
            self._walks.append(res)
            L = self.lexer_id(lexer)
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
        else:
            _, W, g, L2 = item
            res, nxt = self._walks[W], self._lexers[L2]
            group, sel = res.groups[g]
            key = (group, nxt.core.uid)  # the same cache as the Python path's
            sub = res.subs.get(key)
            if sub is None:
                check_budget()
                sub = res.subs[key] = walk_rest(nxt, res, sel)
            self._c.set_sub(W, g, L2, self.walk_id(sub, nxt))
