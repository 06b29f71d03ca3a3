"""Large counted repetitions (``a{100000}``, ``\\d{5000}``, ``.{0,1000000}``) without
unrolling them into a DFA.

A terminal whose pattern is a sequence with a counted repetition ``X{n,m}`` of a
fixed-width unit (a character class, or a fixed-length run of them) and a count over
``LARGE_COUNT`` becomes a nonterminal over small lexemes instead:

- ``F = X{C}`` (one chunk of ``C`` units), ``P = X{1,C-1}`` (a partial last chunk),
  ``X{r}`` / ``X{1,r}`` (the remainder of a bound) and ``X+`` (an unbounded tail);
- the number of chunks is counted by grammar rules in binary: ``E_i`` derives
  ``F^(2^i)`` (``E_i -> E_{i-1} E_{i-1}``), exactly ``K`` chunks is the ``E_i`` of
  ``K``'s bits, and "at most ``K``" walks ``K``'s bits from the top, either staying
  on ``K`` (tight) or dropping below it (then any bits follow). Every length has
  exactly one parse, so the Earley parser keeps O(log^2 count) items per column,
  and there are O(log count) rules.

Exactness: ``X{C}`` is prefix-free (its strings all have ``C`` code points of a
prefix-free code), so the greedy lexer ends every chunk exactly after ``C`` units; a
partial chunk and the pieces around the repetition never compete for a byte because
the split is only made when no lexeme before a boundary can be extended by a byte
that may start the lexeme after it (including what may follow the terminal in the
grammar: FOLLOW), and only in grammars without ignored lexemes (they could appear
between two pieces). Otherwise the terminal is left alone (compiled, or refused by
its budgets, as before).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import analysis
from .dfa import ByteDFA
from .grammar import Grammar, Rule, Terminal
from .regex import parse_regex
from .regex_ast import Bytes, Chars, Node, Repeat, Seq, literal

LARGE_COUNT = 2048  # repetitions counting up to more units than this are split
CHUNK = 256  # units per chunk lexeme

DfaOf = Callable[[Node], ByteDFA]


def split_counters(g: Grammar, dfa_of: DfaOf) -> Grammar:
    """``g`` with every terminal that holds a large counted repetition (and can be
    split exactly, see the module) replaced by a nonterminal over chunk lexemes."""
    if g.ignore:
        return g
    candidates = {}
    for name, t in g.terminals.items():
        node = _pattern_node(t)
        if node is not None and _has_large_count(node):
            candidates[name] = Terminal(name, node)
    if not candidates:
        return g
    follow = _follow_bytes(g, candidates, dfa_of)
    rules, terminals = list(g.rules), {n: t for n, t in g.terminals.items() if n not in candidates}
    split_any = False
    for name, term in candidates.items():
        pieces = _pieces(term.pattern, dfa_of)
        if pieces is None or not _boundaries_safe(pieces, follow[name]):
            terminals[name] = term
            continue
        split_any = True
        _Lowering(name, rules, terminals).terminal(pieces)
    if not split_any:
        return g
    used = {s for r in rules for s in r.rhs}
    out = Grammar(g.start, rules, {n: t for n, t in terminals.items() if n in used}, [], g.source)
    out.validate()
    return out


# ---------------------------------------------------------------------------
# Which terminals, and is splitting them exact


def _unit(node: Node) -> bool:
    """A fixed-width unit: every string of it has the same number of code points (or bytes)."""
    if isinstance(node, Chars | Bytes):
        return bool(node.ranges)
    return isinstance(node, Seq) and bool(node.items) and all(isinstance(i, Chars | Bytes) and i.ranges for i in node.items)


def _is_large(node: Node) -> bool:
    return (isinstance(node, Repeat) and _unit(node.item)
            and max(node.min, node.max if node.max is not None else 0) > LARGE_COUNT)


def _has_large_count(node: Node) -> bool:
    if isinstance(node, Seq):
        return any(_is_large(i) for i in node.items)
    return _is_large(node)


def _pattern_node(t: Terminal) -> Node | None:
    """The terminal's pattern as a node; None for literals and regex text with no count."""
    if not isinstance(t.pattern, str):
        return t.pattern
    if t.literal or "{" not in t.pattern:
        return None
    return parse_regex(t.pattern)


@dataclass
class _Piece:
    node: Node  # a regular run (one lexeme) or a large Repeat
    counted: bool
    first: np.ndarray  # bool[256]: bytes that may start it
    ext: np.ndarray  # bool[256]: bytes that may extend it once it could end
    nullable: bool


def _first_bytes(d: ByteDFA) -> np.ndarray:
    return d.table[0] >= 0


def _pieces(pattern: Node, dfa_of: DfaOf) -> list[_Piece] | None:
    items = pattern.items if isinstance(pattern, Seq) else (pattern,)
    runs: list[list[Node]] = []
    for item in items:
        if _is_large(item):
            runs.append([item])
        elif runs and not _is_large(runs[-1][0]):
            runs[-1].append(item)
        else:
            runs.append([item])
    pieces = []
    for run in runs:
        if _is_large(run[0]):
            rep = run[0]
            first = _first_bytes(dfa_of(rep.item))
            pieces.append(_Piece(rep, True, first, first, rep.min == 0))
            continue
        node = run[0] if len(run) == 1 else Seq(tuple(run))
        d = dfa_of(node)
        if d.accepting[0]:
            return None  # a nullable run would be an optional lexeme: not worth the cases
        ext = (d.table[d.accepting] >= 0).any(axis=0)
        pieces.append(_Piece(node, False, _first_bytes(d), ext, False))
    return pieces


def _boundaries_safe(pieces: list[_Piece], follow: np.ndarray) -> bool:
    """No piece that may end can be extended by a byte that may start what comes next
    (the next pieces through nullable ones, then what follows the terminal)."""
    starts = [p.first for p in pieces] + [follow]
    for i, p in enumerate(pieces):
        for j in range(i + 1, len(starts)):
            if (p.ext & starts[j]).any():
                return False
            if j == len(pieces) or not pieces[j].nullable:
                break
    return True


def _follow_bytes(g: Grammar, names, dfa_of: DfaOf) -> dict[str, np.ndarray]:
    """For each terminal in ``names``: the bytes that may start a lexeme after it."""
    is_term = g.terminals.__contains__
    _first, follow = analysis.first_follow(analysis.pairs(g.rules), g.start, is_term)
    out = {}
    for name in names:
        acc = np.zeros(256, dtype=bool)
        for t in follow.get(name, ()):
            if t != analysis.END:
                term = g.terminals[t]
                node = term.pattern
                if isinstance(node, str):
                    node = literal(node) if term.literal else parse_regex(node)
                acc |= _first_bytes(dfa_of(node))
        out[name] = acc
    return out


# ---------------------------------------------------------------------------
# The rules


class _Lowering:
    """Rules for one terminal ``name``, added to ``rules``/``terminals`` in place."""

    def __init__(self, name: str, rules: list[Rule], terminals: dict[str, Terminal]):
        self.name, self.rules, self.terminals = name, rules, terminals
        self.k = 0
        self.lexemes: dict[Node, str] = {}

    def fresh(self, hint: str) -> str:
        self.k += 1
        return f"{self.name}#{hint}{self.k}"

    def lexeme(self, node: Node) -> str:
        n = self.lexemes.get(node)
        if n is None:
            n = self.lexemes[node] = self.fresh("L")
            self.terminals[n] = Terminal(n, node)
        return n

    def terminal(self, pieces: list[_Piece]) -> None:
        rhs = [self.counter(p.node) if p.counted else self.lexeme(p.node) for p in pieces]
        self.rules.append(Rule(self.name, tuple(rhs)))

    def counter(self, rep: Repeat) -> str:
        """A nonterminal deriving ``X{n,m}`` over chunk lexemes."""
        x, n, m = rep.item, rep.min, rep.max
        f = self.lexeme(Repeat(x, CHUNK, CHUNK))
        powers: list[str] = []  # powers[i] derives F^(2^i)
        q, r0 = divmod(n, CHUNK)
        rhs = self.exactly(q, f, powers)
        if r0:
            rhs.append(self.lexeme(Repeat(x, r0, r0)))
        if m is None:
            tail = self.fresh("star")
            self.rules += [Rule(tail, ()), Rule(tail, (self.lexeme(Repeat(x, 1, None)),))]
            rhs.append(tail)
        elif m > n:
            rhs.append(self.at_most(x, m - n, f, powers))
        sym = self.fresh("count")
        self.rules.append(Rule(sym, tuple(rhs)))
        return sym

    def power(self, i: int, f: str, powers: list[str]) -> str:
        while len(powers) <= i:
            if not powers:
                powers.append(f)
            else:
                e = self.fresh(f"E{len(powers)}_")
                self.rules.append(Rule(e, (powers[-1], powers[-1])))
                powers.append(e)
        return powers[i]

    def exactly(self, count: int, f: str, powers: list[str]) -> list[str]:
        """Symbols deriving exactly ``count`` chunks."""
        return [self.power(i, f, powers) for i in reversed(range(count.bit_length())) if count >> i & 1]

    def at_most(self, x: Node, k: int, f: str, powers: list[str]) -> str:
        """A nonterminal deriving ``X{0,k}``: full chunks, then a partial one."""
        big, r = divmod(k, CHUNK)
        sym = self.fresh("upto")
        if big == 0:
            self.rules += [Rule(sym, ()), Rule(sym, (self.lexeme(Repeat(x, 1, r)),))]
            return sym
        below = self.chunks_at_most(big - 1, f, powers)
        partial = self.lexeme(Repeat(x, 1, CHUNK - 1))
        full = tuple(self.exactly(big, f, powers))
        self.rules += [Rule(sym, below), Rule(sym, (*below, partial)), Rule(sym, full)]
        if r:
            self.rules.append(Rule(sym, (*full, self.lexeme(Repeat(x, 1, r)))))
        return sym

    def chunks_at_most(self, k: int, f: str, powers: list[str]) -> tuple[str, ...]:
        """Symbols deriving 0 to ``k`` chunks, each count once: ``k``'s bits from the
        top, staying on them (tight) or, at a 1 bit, taking 0 and then any bits below."""
        if k == 0:
            return ()
        free: list[tuple[str, ...]] = [()]  # free[i+1]: any count below 2^(i+1)
        for i in range(k.bit_length()):
            sym = self.fresh("free")
            self.rules += [Rule(sym, (self.power(i, f, powers), *free[-1])), Rule(sym, free[-1])]
            free.append((sym,))
        tight: tuple[str, ...] = ()  # counts up to k's low bits
        for i in range(k.bit_length()):
            if k >> i & 1:
                sym = self.fresh("tight")
                self.rules += [Rule(sym, (self.power(i, f, powers), *tight)), Rule(sym, free[i])]
                tight = (sym,)
        return tight
