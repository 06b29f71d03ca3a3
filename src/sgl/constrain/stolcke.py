"""Stolcke's probabilistic Earley parser over the grammar IR: prefix and sentence probabilities.

A. Stolcke, "An Efficient Probabilistic Context-Free Parsing Algorithm that Computes
Prefix Probabilities", Computational Linguistics 21(2), 1995.

The input is a sequence of lexemes, each given as an IR terminal name or as a set of
names (the lexer found several lexemes with the same span; the probabilities then sum
over the readings). Rule probabilities are ``weight / sum of weights of the same lhs``.

How the hard cases are handled (see ``docs/stolcke.md``):

* **ε-rules** are eliminated before parsing. ``e(X) = P(X =>* ε)`` is the least fixed
  point of the nullable equations (decomposed Newton iteration, per strongly connected
  component). Each nonterminal ``X`` is replaced by ``X+`` ("X deriving a non-empty
  string"); a rule ``X -> s1..sk`` of probability ``p`` becomes all its variants that
  drop some nullable symbols, with probability
  ``p * prod(e(dropped)) * prod(1 - e(kept nonterminal)) / (1 - e(X))``.
  The new grammar is proper again (rules of one lhs sum to 1), its inside probabilities
  are ``P(X =>* w) / (1 - e(X))``, and it is consistent when the original grammar is,
  so Stolcke's forward probabilities still sum to prefix probabilities. The start
  symbol's factor ``1 - e(S)`` is put back at the end; the empty sentence gets ``e(S)``.
* **Left recursion**: prediction uses ``R_L = (I - P_L)^-1``.
* **Unit-production cycles** (including ones that appear after ε-elimination, such as
  ``A -> A B`` with nullable ``B``): completion uses ``R_U = (I - P_U)^-1``, and
  items of unit rules are never put in the chart, so nothing is counted twice.
* **Underflow**: forward probabilities are rescaled at every position so that the
  scanned items' forward probabilities sum to 1; the log of the product of the scale
  factors is kept per position (inner probabilities are scaled by the factors of the
  positions they span), so long inputs do not underflow.

Rules that can never derive a terminal string (or whose weight is 0) are removed
before parsing; for a consistent grammar this changes nothing. Both closures are
checked: a cycle whose probability is 1 or more raises ``ConstraintError``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import analysis
from .errors import ConstraintError
from .grammar import Grammar

__all__ = ["ParseState", "StolckeParser"]

# A chart entry: (rule id, dot, origin, forward prob alpha, inner prob gamma).
_Entry = tuple[int, int, int, float, float]
_PRule = tuple[str, tuple[str, ...], float]  # (lhs, rhs, probability), names only

_NEG_INF = float("-inf")
_MAX_VARIANT_NULLABLES = 4  # rules with more nullable symbols are binarized first


@dataclass(frozen=True, eq=False)
class _Column:
    """Chart column after scanning, completion and prediction; never mutated."""

    waiting: dict[int, list[_Entry]]  # next symbol (nonterminal id) -> items
    scan: dict[str, list[_Entry]]  # next symbol (terminal name) -> items
    log_scale: float  # log of the product of the scale factors up to this position
    final_gamma: float  # scaled inner probability of the completed start item


@dataclass(frozen=True, eq=False)
class ParseState:
    """A persistent parser state after ``pos`` lexemes; advancing never changes it."""

    pos: int
    # Shared append-only list of columns; entries [0..pos] belong to this state.
    _cols: list[_Column] = field(repr=False)


class StolckeParser:
    """Probabilistic Earley parser computing prefix and sentence log-probabilities."""

    def __init__(self, grammar: Grammar):
        """Precompute ε-probabilities, the ε-free grammar and the R_L / R_U closures.

        Raises ``ConstraintError`` for bad weights or a cycle of probability >= 1.
        """
        grammar.validate()
        self._ignore = frozenset(grammar.ignore)
        self._used_terminals = frozenset(
            s for r in grammar.rules for s in r.rhs if s in grammar.terminals
        )
        rules = _rule_probs(grammar)
        terminals = set(grammar.terminals)
        rules = _prune(rules, grammar.start, terminals)
        nullable = analysis.nullable([r[:2] for r in rules])
        rules = _binarize(rules, nullable, terminals)
        nullable = analysis.nullable([r[:2] for r in rules])
        e = _nullable_probs(rules, nullable)
        e_start = e.get(grammar.start, 0.0)
        self._log_empty = math.log(e_start) if e_start > 0 else _NEG_INF
        plus = _epsilon_free(rules, nullable, e, terminals)
        plus = _prune(plus, grammar.start, terminals)
        self._log_nonempty = math.log1p(-e_start) if e_start < 1 else _NEG_INF
        self._build_tables(plus, grammar.start)

    # -- precomputation ----------------------------------------------------------------

    def _build_tables(self, rules: list[_PRule], start: str) -> None:
        names = sorted({lhs for lhs, _, _ in rules})
        ids = {name: i for i, name in enumerate(names)}
        n = len(names)
        self._rhs: list[tuple[int | str, ...]] = []
        self._lhs: list[int] = []
        self._prob: list[float] = []
        self._len: list[int] = []
        nonunit_of: list[list[int]] = [[] for _ in range(n)]
        p_left: list[dict[int, float]] = [{} for _ in range(n)]
        p_unit: list[dict[int, float]] = [{} for _ in range(n)]
        for r, (lhs, rhs, p) in enumerate(rules):
            x = ids[lhs]
            syms = tuple(ids.get(s, s) for s in rhs)  # nonterminals as ints, terminals as str
            self._lhs.append(x)
            self._rhs.append(syms)
            self._prob.append(p)
            self._len.append(len(syms))
            first = syms[0]
            if isinstance(first, int):
                p_left[x][first] = p_left[x].get(first, 0.0) + p
                if len(syms) == 1:
                    p_unit[x][first] = p_unit[x].get(first, 0.0) + p
                    continue
            nonunit_of[x].append(r)
        self._nonunit_of = nonunit_of
        r_left = probability_closure(p_left, names, "left-corner")
        r_unit = probability_closure(p_unit, names, "unit-production")
        self._r_left = r_left
        # Completion needs R_U by its second index: completed Y -> [(Z, R_U(Z, Y))].
        self._ru_by_y: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        for z in range(n):
            for y, v in r_unit[z].items():
                self._ru_by_y[y].append((z, v))
        self._pred_cache: dict[int, list[tuple[int, float]]] = {}
        # The dummy rule "-> . S" sits after the real rules.
        self._dummy = len(rules)
        self._start_id = ids.get(start)
        items: dict[tuple[int, int, int], list[float]] = {}
        if self._start_id is not None:
            self._rhs.append((self._start_id,))
            self._lhs.append(-1)
            self._prob.append(1.0)
            self._len.append(1)
            items[(self._dummy, 0, 0)] = [1.0, 1.0]
        self._start_col = self._make_column(items, 0, 0.0, 0.0)

    def _predictions(self, z: int) -> list[tuple[int, float]]:
        """Rules predicted by a waiting nonterminal ``z``: (rule, R_L(z, lhs) * P(rule))."""
        cached = self._pred_cache.get(z)
        if cached is None:
            acc: dict[int, float] = {}
            for y, rl in self._r_left[z].items():
                for r in self._nonunit_of[y]:
                    acc[r] = acc.get(r, 0.0) + rl * self._prob[r]
            cached = list(acc.items())
            self._pred_cache[z] = cached
        return cached

    # -- parsing -----------------------------------------------------------------------

    def start(self) -> ParseState:
        """The state before any lexeme."""
        return ParseState(0, [self._start_col])

    def advance(self, state: ParseState, terminals: Iterable[str] | str) -> ParseState | None:
        """Scan one lexeme (a terminal name or a set of alternative names).

        Returns the new state, or ``None`` when no sentence starts with the prefix.
        A lexeme whose names are all ignored terminals (``grammar.ignore``) that no rule
        uses is skipped: the same state comes back.
        """
        names = {terminals} if isinstance(terminals, str) else set(terminals)
        if names and names & self._ignore and not names & self._used_terminals:
            return state
        col = state._cols[state.pos]
        scanned: dict[tuple[int, int, int], list[float]] = {}
        for t in names:
            for r, d, k, a, g in col.scan.get(t, ()):
                key = (r, d + 1, k)
                acc = scanned.get(key)
                if acc is None:
                    scanned[key] = [a, g]
                else:
                    acc[0] += a
                    acc[1] += g
        total = sum(a for a, _ in scanned.values())
        if not total > 0.0:
            return None
        new_pos = state.pos + 1
        items, final = self._complete(state._cols, scanned, 1.0 / total)
        new_col = self._make_column(items, new_pos, col.log_scale + math.log(total), final)
        cols = state._cols
        if len(cols) != state.pos + 1:  # another branch already grew this list: copy
            cols = cols[: state.pos + 1]
        cols.append(new_col)
        return ParseState(new_pos, cols)

    def _complete(
        self,
        cols: list[_Column],
        scanned: dict[tuple[int, int, int], list[float]],
        inv_scale: float,
    ) -> tuple[dict[tuple[int, int, int], list[float]], float]:
        """Completion with unit closure; returns the new items and the final gamma."""
        rlen, rlhs, dummy = self._len, self._lhs, self._dummy
        items: dict[tuple[int, int, int], list[float]] = {}
        # Completed (non-unit) inner probabilities, by origin then lhs.
        buckets: dict[int, dict[int, float]] = {}
        for key, (a, g) in scanned.items():
            r, d, k = key
            if d == rlen[r]:
                b = buckets.setdefault(k, {})
                b[rlhs[r]] = b.get(rlhs[r], 0.0) + g * inv_scale
            else:
                items[key] = [a * inv_scale, g * inv_scale]
        # The grammar is ε-free and unit items are never in the chart, so completing
        # items of origin j only creates completed items of origin < j: process origins
        # from the right, each exactly once.
        heap = [-j for j in buckets]
        heapq.heapify(heap)
        final = 0.0
        while heap:
            j = -heapq.heappop(heap)
            by_z: dict[int, float] = {}
            for y, g in buckets.pop(j).items():
                for z, ru in self._ru_by_y[y]:
                    by_z[z] = by_z.get(z, 0.0) + ru * g
            waiting = cols[j].waiting
            for z, c in by_z.items():
                for r, d, k, a, g in waiting.get(z, ()):
                    if r == dummy:
                        final += g * c
                        continue
                    nd = d + 1
                    if nd == rlen[r]:
                        b = buckets.get(k)
                        if b is None:
                            b = buckets[k] = {}
                            heapq.heappush(heap, -k)
                        b[rlhs[r]] = b.get(rlhs[r], 0.0) + g * c
                    else:
                        key = (r, nd, k)
                        acc = items.get(key)
                        if acc is None:
                            items[key] = [a * c, g * c]
                        else:
                            acc[0] += a * c
                            acc[1] += g * c
        return items, final

    def _make_column(
        self,
        items: dict[tuple[int, int, int], list[float]],
        pos: int,
        log_scale: float,
        final: float,
    ) -> _Column:
        """Index the items and add the predictions (R_L closure) at ``pos``."""
        rhs = self._rhs
        waiting: dict[int, list[_Entry]] = {}
        scan: dict[str, list[_Entry]] = {}
        pending: dict[int, float] = {}
        for (r, d, k), (a, g) in items.items():
            sym = rhs[r][d]
            entry = (r, d, k, a, g)
            if isinstance(sym, int):
                waiting.setdefault(sym, []).append(entry)
                pending[sym] = pending.get(sym, 0.0) + a
            else:
                scan.setdefault(sym, []).append(entry)
        predicted: dict[int, float] = {}
        for z, a in pending.items():
            for r, coef in self._predictions(z):
                predicted[r] = predicted.get(r, 0.0) + a * coef
        for r, a in predicted.items():
            sym = rhs[r][0]
            entry = (r, 0, pos, a, self._prob[r])
            if isinstance(sym, int):
                waiting.setdefault(sym, []).append(entry)
            else:
                scan.setdefault(sym, []).append(entry)
        return _Column(waiting, scan, log_scale, final)

    # -- probabilities -------------------------------------------------------------------

    def prefix_logprob(self, state: ParseState) -> float:
        """log P(S =>* w ...): the probability that a sentence starts with the lexemes read."""
        if state.pos == 0:
            return 0.0
        return state._cols[state.pos].log_scale + self._log_nonempty

    def sentence_logprob(self, state: ParseState) -> float:
        """log P(S =>* w) for exactly the lexemes read; ``-inf`` if that is no sentence."""
        if state.pos == 0:
            return self._log_empty
        col = state._cols[state.pos]
        if not col.final_gamma > 0.0:
            return _NEG_INF
        return math.log(col.final_gamma) + col.log_scale + self._log_nonempty

    def next_terminals(self, state: ParseState) -> frozenset[str]:
        """The terminal names that can be scanned next."""
        col = state._cols[state.pos]
        return frozenset(t for t, entries in col.scan.items() if any(e[3] > 0.0 for e in entries))

    def parse(self, terminals_seq: Sequence[Iterable[str] | str]) -> ParseState | None:
        """Advance from the start through all lexemes; ``None`` if impossible."""
        state: ParseState | None = self.start()
        for terminals in terminals_seq:
            state = self.advance(state, terminals)
            if state is None:
                return None
        return state

    def prefix_logprob_of(self, terminals_seq: Sequence[Iterable[str] | str]) -> float:
        """``prefix_logprob`` after reading ``terminals_seq`` (``-inf`` if impossible)."""
        state = self.parse(terminals_seq)
        return _NEG_INF if state is None else self.prefix_logprob(state)

    def sentence_logprob_of(self, terminals_seq: Sequence[Iterable[str] | str]) -> float:
        """``sentence_logprob`` after reading ``terminals_seq`` (``-inf`` if impossible)."""
        state = self.parse(terminals_seq)
        return _NEG_INF if state is None else self.sentence_logprob(state)


# -- grammar preparation -------------------------------------------------------------------


def _rule_probs(grammar: Grammar) -> list[_PRule]:
    """Normalize weights per lhs; drop rules of probability 0."""
    totals: dict[str, float] = {}
    for r in grammar.rules:
        if not math.isfinite(r.weight):
            raise ConstraintError(f"rule {r.lhs!r} has a non-finite weight {r.weight!r}")
        totals[r.lhs] = totals.get(r.lhs, 0.0) + r.weight
    return [(r.lhs, tuple(r.rhs), r.weight / totals[r.lhs]) for r in grammar.rules if r.weight > 0]


def _prune(rules: list[_PRule], start: str, terminals: set[str]) -> list[_PRule]:
    """Keep rules that use only productive symbols and are reachable from ``start``."""
    return [rules[i] for i in analysis.trim([r[:2] for r in rules], start, terminals.__contains__)]


def _binarize(rules: list[_PRule], nullable: set[str], terminals: set[str]) -> list[_PRule]:
    """Split rules with many nullable symbols into a chain, so ε-elimination stays small."""
    used = {lhs for lhs, _, _ in rules} | terminals
    out: list[_PRule] = []
    counter = itertools.count()
    for lhs, rhs, p in rules:
        if sum(s in nullable for s in rhs) <= _MAX_VARIANT_NULLABLES:
            out.append((lhs, rhs, p))
            continue
        head, prob = lhs, p
        for i in range(len(rhs) - 2):
            name = f"{lhs}~{next(counter)}"
            while name in used:
                name = f"{lhs}~{next(counter)}"
            used.add(name)
            out.append((head, (rhs[i], name), prob))
            head, prob = name, 1.0
        out.append((head, rhs[-2:], prob))
    return out


def _nullable_probs(rules: list[_PRule], nullable: set[str]) -> dict[str, float]:
    """e(X) = P(X =>* ε): least fixed point, decomposed Newton over SCCs."""
    names = sorted(nullable)
    ids = {x: i for i, x in enumerate(names)}
    terms: list[list[tuple[float, tuple[int, ...]]]] = [[] for _ in names]
    for lhs, rhs, p in rules:
        if lhs in ids and all(s in ids for s in rhs):
            terms[ids[lhs]].append((p, tuple(ids[s] for s in rhs)))
    succ = [sorted({s for _, rhs in ts for s in rhs}) for ts in terms]
    value = [0.0] * len(names)
    for comp in _sccs(len(names), succ):
        _solve_nullable_component(comp, terms, value, [names[i] for i in comp])
    return {x: value[i] for i, x in enumerate(names)}


def _solve_nullable_component(
    comp: list[int],
    terms: list[list[tuple[float, tuple[int, ...]]]],
    value: list[float],
    comp_names: list[str],
) -> None:
    local = {v: i for i, v in enumerate(comp)}
    k = len(comp)

    def evaluate(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.zeros(k)
        jac = np.zeros((k, k))
        for a, v in enumerate(comp):
            for p, rhs in terms[v]:
                vals = [x[local[s]] if s in local else value[s] for s in rhs]
                f[a] += p * math.prod(vals)
                for pos, s in enumerate(rhs):
                    if s in local:
                        jac[a, local[s]] += p * math.prod(vals[:pos] + vals[pos + 1 :])
        return f, jac

    x = np.zeros(k)
    recursive = k > 1 or any(comp[0] in rhs for _, rhs in terms[comp[0]])
    for _ in range(1000 if recursive else 1):
        f, jac = evaluate(x)
        if not recursive:
            x = f
            break
        if np.max(np.abs(f - x)) <= 1e-16:
            x = np.maximum(x, f)
            break
        try:
            step = x + np.linalg.solve(np.eye(k) - jac, f - x)
        except np.linalg.LinAlgError:
            step = f
        if not np.all(np.isfinite(step)):
            step = f
        # Newton iterates lie between the Kleene iterate F(x) and the least fixed point.
        x = np.clip(np.maximum(step, f), 0.0, 1.0)
    f, _ = evaluate(x)
    if np.max(np.abs(f - x)) > 1e-9:
        raise ConstraintError(
            "could not solve the ε-probabilities of " + ", ".join(map(repr, comp_names))
        )
    for a, v in enumerate(comp):
        value[v] = float(x[a])


def _epsilon_free(
    rules: list[_PRule], nullable: set[str], e: dict[str, float], terminals: set[str]
) -> list[_PRule]:
    """Replace each X by X+ (non-empty yields), renormalized so the grammar stays proper."""
    # nonterminals deriving some non-empty string: one rule symbol that does suffices
    plus = set(analysis.derivable([(lhs, (s,)) for lhs, rhs, _ in rules for s in rhs], terminals))
    merged: dict[tuple[str, tuple[str, ...]], float] = {}
    for lhs, rhs, p in rules:
        norm = 1.0 - e.get(lhs, 0.0)
        if lhs not in plus or not norm > 0.0:
            continue
        choices: list[list[tuple[str | None, float]]] = []
        for s in rhs:
            options: list[tuple[str | None, float]] = []
            if s in terminals:
                options.append((s, 1.0))
            elif s in plus:
                options.append((s, 1.0 - e.get(s, 0.0)))
            if s in nullable:
                options.append((None, e[s]))
            choices.append(options)
        for combo in itertools.product(*choices):
            kept = tuple(s for s, _ in combo if s is not None)
            if not kept:
                continue
            w = p * math.prod(f for _, f in combo) / norm
            if w > 0.0:
                merged[(lhs, kept)] = merged.get((lhs, kept), 0.0) + w
    return [(lhs, rhs, w) for (lhs, rhs), w in merged.items()]


# -- linear algebra over nonterminals -------------------------------------------------------


def _sccs(n: int, succ: list[list[int]]) -> list[list[int]]:
    """Tarjan's strongly connected components, sinks first (reverse topological order)."""
    index = [-1] * n
    low = [0] * n
    on_stack = [False] * n
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in range(n):
        if index[root] != -1:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = True
        work = [(root, 0)]
        while work:
            v, i = work[-1]
            if i < len(succ[v]):
                work[-1] = (v, i + 1)
                w = succ[v][i]
                if index[w] == -1:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = True
                    work.append((w, 0))
                elif on_stack[w]:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
    return out


def probability_closure(p: list[dict[int, float]], names: Sequence[str], what: str) -> list[dict[int, float]]:
    """Sparse rows of R = (I - P)^-1 = sum_k P^k, inverting one SCC block at a time.

    Raises ``ConstraintError`` when a block's spectral radius is >= 1 (the series diverges).
    """
    n = len(p)
    rows: list[dict[int, float]] = [{} for _ in range(n)]
    for comp in _sccs(n, [sorted(row) for row in p]):
        local = {v: i for i, v in enumerate(comp)}
        k = len(comp)
        block = np.zeros((k, k))
        for v in comp:
            for w, x in p[v].items():
                if w in local:
                    block[local[v], local[w]] += x
        if k == 1 and block[0, 0] == 0.0:
            inv = np.ones((1, 1))
        else:
            radius = float(np.max(np.abs(np.linalg.eigvals(block))))
            if not radius < 1.0 - 1e-12:
                cycle = ", ".join(repr(names[v]) for v in sorted(comp)[:8])
                raise ConstraintError(
                    f"{what} cycle through {cycle} has probability >= 1 "
                    f"(spectral radius {radius:.6g}); the grammar is improper"
                )
            inv = np.maximum(np.linalg.inv(np.eye(k) - block), 0.0)  # clip round-off
        # Paths leaving the SCC: through an edge v -> w (w outside) then R[w].
        outside: list[dict[int, float]] = []
        for v in comp:
            acc: dict[int, float] = {}
            for w, x in p[v].items():
                if w not in local:
                    for y, rv in rows[w].items():
                        acc[y] = acc.get(y, 0.0) + x * rv
            outside.append(acc)
        for a, v in enumerate(comp):
            row: dict[int, float] = {}
            for b, w in enumerate(comp):
                m = float(inv[a, b])
                if m <= 0.0:
                    continue
                row[w] = row.get(w, 0.0) + m
                for y, rv in outside[b].items():
                    row[y] = row.get(y, 0.0) + m * rv
            rows[v] = row
    return rows
