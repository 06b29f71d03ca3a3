"""Large counted repetitions (``a{100000}``, ``\\d{5000}``, ``.{0,1000000}``) without
unrolling them into a DFA.

A terminal whose pattern is a sequence with a counted repetition ``X{n,m}`` of a
fixed-width unit (a character class, or a fixed-length run of them) and a count over
``LARGE_COUNT`` becomes a nonterminal over small lexemes instead:

- ``F = X{C}`` (one chunk of ``C`` units), ``P = X{1,C-1}`` (a partial last chunk),
  ``X{r}`` / ``X{1,r}`` (the remainder of a bound) and ``X+`` (an unbounded tail);
- the number of chunks is counted by grammar rules in binary: ``E_i`` derives
  ``F^(2^i)`` (``E_i -> E_{i-1} E_{i-1}``), exactly ``K`` chunks is the ``E_i`` of
  ``K``'s bits, and "at most ``K``" chooses, block by block from the largest,
  whether each block is there (``CountedRepeat``). Every length has
  exactly one parse, so the Earley parser keeps O(log^2 count) items per column,
  and there are O(log count) rules.

Exactness: ``X{C}`` is prefix-free (its strings all have ``C`` code points of a
prefix-free code), so the greedy lexer ends every chunk exactly after ``C`` units; a
partial chunk and the pieces around the repetition never compete for a byte because
the split is only made when no lexeme before a boundary can be extended by a byte
that may start the lexeme after it (including what may follow the terminal in the
grammar: FOLLOW), when no other terminal may start with a byte a piece starts with
(so inside the terminal only its own pieces are alive after the first byte), and only
in grammars without ignored lexemes (they could appear between two pieces).
Otherwise the terminal is left alone (compiled, or refused by its budgets, as before).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import analysis
from .automata.dfa import ByteDFA
from .grammar import Grammar, GrammarBuilder, Rule, Terminal
from .regex import parse_regex
from .regex_ast import Alt, Bytes, Chars, Node, Repeat, Seq, literal

LARGE_COUNT = 2048  # repetitions counting up to more units than this are split
CHUNK = 256  # units per chunk lexeme

DfaOf = Callable[[Node], ByteDFA]


def split_counters(g: Grammar, dfa_of: DfaOf) -> Grammar:
    """``g`` with every terminal that holds a large counted repetition (and can be
    split exactly, see the module) replaced by a nonterminal over chunk lexemes."""
    if g.ignore:
        return g
    candidates = {name: node for name, t in g.terminals.items()
                  if (node := _pattern_node(t)) is not None and _has_large_count(node)}
    if not candidates:
        return g
    pieces = {name: _pieces(node, dfa_of) for name, node in candidates.items()}
    # what may start each terminal: a split one's pieces, the others' DFAs
    starts = {name: np.any([p.first for p in ps], axis=0) if ps else np.ones(256, dtype=bool)
              for name, ps in pieces.items()}
    for name, t in g.terminals.items():
        if name not in starts:
            starts[name] = _first_bytes(dfa_of(_pattern_node(t, always=True)))
    follow = _follow_bytes(g, candidates, starts)
    rules, terminals = list(g.rules), {n: t for n, t in g.terminals.items() if n not in candidates}
    split_any = False
    for name, ps in pieces.items():
        # no other lexeme may start with a byte a piece starts with: then at every
        # column inside the terminal only its own pieces are alive after the first byte
        others = np.any([v for n, v in starts.items() if n != name], axis=0) if len(starts) > 1 else np.zeros(256, bool)
        if ps is None or (others & starts[name]).any() or not _boundaries_safe(ps, follow[name]):
            terminals[name] = g.terminals[name]
            continue
        split_any = True
        _Lowering(name, rules, terminals).terminal(ps)
    if not split_any:
        return g
    used = {s for r in rules for s in r.rhs}
    out = Grammar(g.start, rules, {n: t for n, t in terminals.items() if n in used}, [], g.source, g.unique_keys)
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
    return any(map(_is_large, node.items if isinstance(node, Seq) else (node,)))


def _pattern_node(t: Terminal, always: bool = False) -> Node | None:
    """The terminal's pattern as a node; unless ``always``, None for literals and regex
    text with no count (they cannot hold a large one)."""
    if not isinstance(t.pattern, str):
        return t.pattern
    if t.literal:
        return literal(t.pattern) if always else None
    return parse_regex(t.pattern) if always or "{" in t.pattern else None


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
    for item in items:  # large repeats alone, the items between them in one run
        if runs and not _is_large(item) and not _is_large(runs[-1][0]):
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


def _follow_bytes(g: Grammar, names, starts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """For each terminal in ``names``: the bytes that may start a lexeme after it."""
    _first, follow = analysis.first_follow(analysis.pairs(g.rules), g.start, g.terminals.__contains__)
    out = {}
    for name in names:
        acc = out[name] = np.zeros(256, dtype=bool)
        for t in follow.get(name, ()):
            if t != analysis.END:
                acc |= starts[t]
    return out


# ---------------------------------------------------------------------------
# The rules


class CountedRepeat:
    """Counted repetition of one unit (a tuple of grammar symbols) with O(log n) rules.

    The one binary-counting construction of ``constrain``: chunk counts here, and
    ``minItems``/``maxLength`` in the JSON Schema frontend. ``X_k`` derives exactly
    ``2**k`` units (``X_k -> X_{k-1} X_{k-1}``), so exactly ``a`` units is the sequence of
    the ``X_k`` of ``a``'s one bits, and "at most ``m``" chooses, block by block from the
    largest, whether each block is there. Each count has exactly one derivation (the
    grammar is unambiguous) and the language is exact: no count outside ``[lo, hi]``.
    An Earley parser keeps O(log² n) items per column for it. Rules are added through
    ``add(lhs, rhs)``, with names ``prefix@...`` (the prefix must be fresh).
    """

    def __init__(self, add: Callable[[str, tuple[str, ...]], None], prefix: str, unit: tuple[str, ...]):
        self.add, self.prefix, self.unit = add, prefix, unit
        self._blocks: list[str] = [unit[0]] if len(unit) == 1 else []  # a lone symbol is X_0
        self._below: dict[int, str] = {}
        self._at_most: dict[int, str] = {}
        self._star: str | None = None

    def block(self, k: int) -> str:
        """``X_k``: exactly ``2**k`` units."""
        while len(self._blocks) <= k:
            j = len(self._blocks)
            name = f"{self.prefix}@X{j}"
            self.add(name, self.unit if j == 0 else (self._blocks[j - 1], self._blocks[j - 1]))
            self._blocks.append(name)
        return self._blocks[k]

    def exactly(self, a: int) -> tuple[str, ...]:
        """Symbols deriving exactly ``a`` units (largest block first)."""
        return tuple(self.block(k) for k in range(a.bit_length() - 1, -1, -1) if a >> k & 1)

    def below(self, k: int) -> str:
        """``L_k``: 0 to ``2**k - 1`` units (``L_k -> L_{k-1} | X_{k-1} L_{k-1}``)."""
        got = self._below.get(k)
        if got is None:
            got = self._below[k] = f"{self.prefix}@L{k}"
            if k == 0:
                self.add(got, ())
            else:
                inner = self.below(k - 1)
                self.add(got, (inner,))
                self.add(got, (self.block(k - 1), inner))
        return got

    def at_most(self, m: int) -> str:
        """0 to ``m`` units: fewer than the top block, or the top block and at most the rest."""
        got = self._at_most.get(m)
        if got is None:
            got = self._at_most[m] = f"{self.prefix}@M{m}"
            if m == 0:
                self.add(got, ())
            else:
                k = m.bit_length() - 1
                self.add(got, (self.below(k),))
                self.add(got, (self.block(k), self.at_most(m - (1 << k))))
        return got

    def star(self) -> str:
        """Any number of units, left-recursive (linear for an Earley parser)."""
        if self._star is None:
            name = self._star = f"{self.prefix}@R"
            self.add(name, ())
            self.add(name, (name, *self.unit))
        return self._star

    def between(self, lo: int, hi: int | None) -> tuple[str, ...]:
        """Symbols deriving ``lo`` to ``hi`` units (``hi`` None: no upper bound)."""
        tail = self.star() if hi is None else self.at_most(hi - lo)
        return self.exactly(lo) + (tail,)


def lower_counter(name: str, rep: Repeat, rules: list[Rule], terminals: dict[str, Terminal]) -> str:
    """The nonterminal (named after terminal ``name``) that derives ``rep`` as counted
    chunks, its rules and lexemes added to ``rules``/``terminals`` in place."""
    return _Lowering(name, rules, terminals).counter(rep)


class _Lowering:
    """Rules for one terminal ``name``, added to ``rules``/``terminals`` in place."""

    def __init__(self, name: str, rules: list[Rule], terminals: dict[str, Terminal]):
        self.name, self.rules, self.terminals = name, rules, terminals
        self.k = 0
        self.lexemes: dict[Node, str] = {}

    def fresh(self, hint: str) -> str:
        self.k += 1
        return f"{self.name}#{hint}{self.k}"

    def add(self, lhs: str, rhs: tuple[str, ...]) -> None:
        self.rules.append(Rule(lhs, rhs))

    def lexeme(self, node: Node) -> str:
        n = self.lexemes.get(node)
        if n is None:
            n = self.lexemes[node] = self.fresh("L")
            self.terminals[n] = Terminal(n, node)
        return n

    def terminal(self, pieces: list[_Piece]) -> None:
        rhs = [self.counter(p.node) if p.counted else self.lexeme(p.node) for p in pieces]
        self.add(self.name, tuple(rhs))

    def counter(self, rep: Repeat) -> str:
        """A nonterminal deriving ``X{n,m}``: whole chunks ``F = X{CHUNK}`` counted in
        binary, then the remainder (an exact ``X{r}``, a partial chunk, or ``X+``)."""
        x, n, m = rep.item, rep.min, rep.max
        chunks = CountedRepeat(self.add, self.fresh("chunks"), (self.lexeme(Repeat(x, CHUNK, CHUNK)),))
        q, r0 = divmod(n, CHUNK)
        rhs = list(chunks.exactly(q))
        if r0:
            rhs.append(self.lexeme(Repeat(x, r0, r0)))
        if m is None:
            tail = self.fresh("star")
            self.add(tail, ())
            self.add(tail, (self.lexeme(Repeat(x, 1, None)),))
            rhs.append(tail)
        elif m > n:
            rhs.append(self.at_most(x, m - n, chunks))
        sym = self.fresh("count")
        self.add(sym, tuple(rhs))
        return sym

    def at_most(self, x: Node, k: int, chunks: CountedRepeat) -> str:
        """A nonterminal deriving ``X{0,k}``: fewer than ``k // CHUNK`` whole chunks and
        maybe a partial one, or exactly ``k // CHUNK`` and at most the remainder."""
        big, r = divmod(k, CHUNK)
        sym = self.fresh("upto")
        if big == 0:
            self.add(sym, ())
            self.add(sym, (self.lexeme(Repeat(x, 1, r)),))
            return sym
        below = chunks.at_most(big - 1)
        full = chunks.exactly(big)
        self.add(sym, (below,))
        self.add(sym, (below, self.lexeme(Repeat(x, 1, CHUNK - 1))))
        self.add(sym, full)
        if r:
            self.add(sym, (*full, self.lexeme(Repeat(x, 1, r))))
        return sym


# ---------------------------------------------------------------------------
# A regex whose DFA is over budget, as a grammar of one-character lexemes


MAX_CHAR_GRAMMAR_NODES = 20_000  # a larger regex (a long word list) would not mask faster this way


def char_grammar(node: Node, source: str = "") -> Grammar | None:
    """``node`` as a grammar over one-code-point lexemes (its character classes), or None
    when it has raw-byte classes, a word list or more than ``MAX_CHAR_GRAMMAR_NODES`` nodes.

    For regexes whose minimal DFA is exponential (``(a|b)*a(a|b){15}``,
    ``[\\s\\S]*a[\\s\\S]{20}``): the Earley parser then runs the regex as an NFA, with as
    many items per column as the regex has positions, instead of the lexer holding the
    DFA. Exact: every lexeme is one code point (UTF-8 is prefix-free, so no lexeme can
    extend another's match and greedy lexing never cuts one short); several lexemes that
    accept the same character all go to the parser. Counts use ``CountedRepeat``.
    """
    b = GrammarBuilder()
    ok, size = True, 0

    def lower(n: Node) -> tuple[str, ...]:
        nonlocal ok, size
        size += 1
        # a word list (LiteralAlt, before its items are built): its trie is the better lexeme
        if not ok or size > MAX_CHAR_GRAMMAR_NODES or getattr(n, "words", None) is not None:
            ok = False
            return ()
        if isinstance(n, Chars):
            return (b.terminal(n, "C"),) if n.ranges else (_nothing(b),)
        if isinstance(n, Seq):
            return tuple(s for item in n.items for s in lower(item))
        if isinstance(n, Alt):
            name = b.fresh("alt")
            for item in n.items:
                b.rule(name, lower(item))
            if not n.items:
                b.rule(name, (_nothing(b),))
            return (name,)
        if isinstance(n, Repeat):
            unit = lower(n.item)
            return CountedRepeat(b.rule, b.fresh("rep"), unit).between(n.min, n.max)
        ok = False  # Bytes: a one-byte lexeme could end inside another's character
        return ()

    b.rule("start", lower(node))
    if not ok:
        return None
    g = Grammar("start", b.rules, b.terminals, [], source)
    g.validate()
    return g


def _nothing(b: GrammarBuilder) -> str:
    """A terminal with no string (its rules are pruned at compile)."""
    return b.terminal(Chars(()), "none")
