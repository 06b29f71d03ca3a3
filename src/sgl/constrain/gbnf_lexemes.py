"""Lexeme automata for the GBNF lowering's merge check: position (Glushkov) automata
of candidate lexemes, which bytes can extend a complete match of one lexeme within
another, and which lexemes may be allowed at the same boundary."""

from __future__ import annotations

from dataclasses import dataclass

from . import analysis
from .errors import ConstraintError
from .grammar import Grammar
from .regex_ast import MAX_CODEPOINT, Alt, Chars, Node, Repeat, Seq, normalize_ranges

# ---------------------------------------------------------------------------
# Lexeme automata: first characters, and which bytes can extend a complete match
# ---------------------------------------------------------------------------

_MAX_POSITIONS = 4000
_MAX_STATES = 4000
_ALL_BYTES = (1 << 256) - 1


class _TooBig(Exception):
    pass


@dataclass(frozen=True)
class _Star:
    item: Node


@dataclass(frozen=True)
class _Opt:
    item: Node


def _positions(n) -> int:
    """How many positions ``_Glushkov`` would make for ``n`` (capped just past the limit)."""
    if isinstance(n, Chars):
        return 1 if n.ranges else 0
    if isinstance(n, Alt | Seq):
        total = 0
        for it in n.items:
            total += _positions(it)
            if total > _MAX_POSITIONS:
                break
        return total
    if isinstance(n, Repeat):
        return min(_positions(n.item) * max(1, n.max if n.max is not None else n.min + 1), _MAX_POSITIONS + 1)
    return 0


class _Glushkov:
    """Position automaton of a regex (one position per character class occurrence)."""

    def __init__(self, node: Node):
        if _positions(node) > _MAX_POSITIONS:
            raise _TooBig  # before building: a long chain of optionals builds in quadratic time
        self.chars: list[tuple[tuple[int, int], ...]] = []
        self._follow: list[set[int]] = []  # filled by build(), frozen below
        self.nullable, first, last = self.build(node)
        self.first = frozenset(first)
        self.last = frozenset(last)
        self.follow = [frozenset(f) for f in self._follow]
        self.first_chars = normalize_ranges(r for p in self.first for r in self.chars[p])
        self.literal = _literal_text(node)  # the one string it matches, if so

    def build(self, n) -> tuple[bool, set[int], set[int]]:
        if isinstance(n, Chars):
            if not n.ranges:
                return False, set(), set()
            if len(self.chars) >= _MAX_POSITIONS:
                raise _TooBig
            self.chars.append(n.ranges)
            self._follow.append(set())
            p = len(self.chars) - 1
            return False, {p}, {p}
        if isinstance(n, Alt):
            nul, first, last = False, set(), set()
            for it in n.items:
                a, f, la = self.build(it)
                nul, first, last = nul or a, first | f, last | la
            return nul, first, last
        if isinstance(n, Seq):
            return self.build_seq(n.items)
        if isinstance(n, Repeat):
            copies: list = [n.item] * n.min
            if n.max is None:
                copies.append(_Star(n.item))
            else:
                copies += [_Opt(n.item)] * (n.max - n.min)
            return self.build_seq(copies)
        if isinstance(n, _Star):
            _, first, last = self.build(n.item)
            for p in last:
                self._follow[p] |= first
            return True, first, last
        if isinstance(n, _Opt):
            _, first, last = self.build(n.item)
            return True, first, last
        raise ConstraintError(f"unsupported regex node {type(n).__name__} in a GBNF lexeme")

    def build_seq(self, items) -> tuple[bool, set[int], set[int]]:
        nul, first, last = True, set(), set()
        for it in items:
            a, f, la = self.build(it)
            for p in last:
                self._follow[p] |= f
            first = first | f if nul else first
            last = last | la if a else la
            nul = nul and a
        return nul, first, last

    def step(self, state: frozenset[int]) -> frozenset[int]:
        """Positions that the next character may match, after ``state``."""
        if state is _START:
            return self.first
        out: set[int] = set()
        for p in state:
            out |= self.follow[p]
        return frozenset(out)

    def read(self, text: str) -> frozenset[int] | None:
        """The state after ``text`` (None: no match starts with it)."""
        state = _START
        for c in map(ord, text):
            state = frozenset(p for p in self.step(state) if any(lo <= c <= hi for lo, hi in self.chars[p]))
            if not state:
                return None
        return state

    def accepts(self, text: str) -> bool:
        state = self.read(text)
        return state is not None and self.accepting(state)

    def accepting(self, state: frozenset[int]) -> bool:
        return self.nullable if state is _START else not self.last.isdisjoint(state)


_START: frozenset[int] = frozenset([-1])


def _cross_extension(t: _Glushkov, s: _Glushkov) -> int:
    """Lead bytes ``b`` such that some complete match ``w`` of ``t`` followed by ``b``
    is still a viable prefix of ``s``: the greedy lexer would read on past ``w``.

    With ``s is t`` these are the bytes that extend ``t`` itself. Runs the two position
    automata in lockstep over character classes (a product subset construction).
    """
    if not _overlap(t.first_chars, s.first_chars):
        return 0
    if t.literal is not None and s.literal is not None:
        w, v = t.literal, s.literal
        return _lead_bytes(((ord(v[len(w)]),) * 2,)) if len(v) > len(w) and v.startswith(w) else 0
    if t.literal is not None:  # the common case, and a much cheaper walk
        return _literal_extension(t.literal, s)
    ext: list[tuple[int, int]] = []
    seen = {(_START, _START)}
    stack = [(_START, _START)]
    while stack:
        qt, qs = stack.pop()
        nt, ns = t.step(qt), s.step(qs)
        if qt is not _START and t.accepting(qt):
            ext.extend(r for p in ns for r in s.chars[p])
        for a, b in _joint_moves(t, nt, s, ns):
            if (a, b) not in seen:
                if len(seen) >= _MAX_STATES:
                    return _ALL_BYTES
                seen.add((a, b))
                stack.append((a, b))
    return _lead_bytes(normalize_ranges(ext))


def _literal_extension(text: str, s: _Glushkov) -> int:
    state = s.read(text)
    return 0 if state is None else _lead_bytes(normalize_ranges(r for p in s.step(state) for r in s.chars[p]))


def _literal_text(n: Node) -> str | None:
    """The text of a node that matches exactly one string, else None."""
    if isinstance(n, Chars) and len(n.ranges) == 1 and n.ranges[0][0] == n.ranges[0][1]:
        return chr(n.ranges[0][0])
    if isinstance(n, Seq):
        parts = [_literal_text(i) for i in n.items]
        return None if None in parts else "".join(parts)
    return None


def _joint_moves(t: _Glushkov, nt, s: _Glushkov, ns):
    """For each character class that both automata can read: the two target states.

    A sweep over the range boundaries keeps the sets of positions covering the
    current elementary interval.
    """
    events: dict[int, list[tuple[int, int, int]]] = {}
    for side, g, positions in ((0, t, nt), (1, s, ns)):
        for p in positions:
            for lo, hi in g.chars[p]:
                events.setdefault(lo, []).append((side, p, 1))
                events.setdefault(hi + 1, []).append((side, p, -1))
    active: tuple[set[int], set[int]] = (set(), set())
    moves = set()
    for point in sorted(events):
        for side, p, delta in events[point]:
            if delta > 0:
                active[side].add(p)
            else:
                active[side].discard(p)
        if active[0] and active[1]:
            moves.add((frozenset(active[0]), frozenset(active[1])))
    return moves


def _lead_bytes(ranges) -> int:
    """Bitmask of the first UTF-8 bytes of the given code points."""
    mask = 0
    for lo, hi in ranges:
        for a, b in ((0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x10000, MAX_CODEPOINT)):
            s, e = max(lo, a), min(hi, b)
            if s <= e:
                mask |= ((1 << (_lead(e) + 1)) - 1) ^ ((1 << _lead(s)) - 1)
    return mask


def _lead(cp: int) -> int:
    return chr(cp).encode("utf-8", "surrogatepass")[0]


def _overlap(a, b) -> bool:
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i][1] < b[j][0]:
            i += 1
        elif b[j][1] < a[i][0]:
            j += 1
        else:
            return True
    return False


@dataclass
class _Candidate:
    """A regular part of the grammar that may become one lexeme."""

    pattern: Node  # its language minus the empty string: the lexeme
    nullable: bool  # whether its language holds the empty string
    ident: str  # repr(pattern): candidates with equal patterns share one terminal
    automaton: _Glushkov


@dataclass
class _Lexeme:
    automaton: _Glushkov
    ident: str
    candidates: set  # keys of the candidates merged into it (empty: a single character)


def _co_allowed(g: Grammar, lexemes: dict[str, _Lexeme]):
    """Which lexemes may be allowed at the same boundary (an over-approximation).

    The lexemes allowed after a boundary are among FOLLOW(p) for the lexemes ``p``
    just scanned, and the parser scans *every* allowed lexeme that matched the text,
    so two co-allowed lexemes that may match the same text (here: may start with the
    same byte) make their FOLLOW sets co-allowed too. Iterated to a fixed point.
    """
    first_sets, follow = analysis.first_follow(analysis.pairs(g.rules), g.start, g.terminals.__contains__)
    names = list(lexemes)
    index = {t: i for i, t in enumerate(names)}
    first_bytes = {t: _lead_bytes(lx.automaton.first_chars) for t, lx in lexemes.items()}
    follow_bits = {t: 0 for t in names}
    follow_bytes = {t: 0 for t in names}
    for t, after in follow.items():
        if t in index:
            for u in after:
                if u in index:
                    follow_bits[t] |= 1 << index[u]
                    follow_bytes[t] |= first_bytes[u]
    same_text = {t: 0 for t in names}
    for i, t in enumerate(names):
        at = lexemes[t].automaton
        for j in range(i, len(names)):
            u = names[j]
            if first_bytes[u] & first_bytes[t] and _may_match_same_text(at, lexemes[u].automaton):
                same_text[t] |= 1 << j
                same_text[u] |= 1 << i
    co = {t: 0 for t in names}
    start_bits = sum(1 << index[u] for u in first_sets[g.start] if u in index)
    for u in first_sets[g.start]:
        if u in co:
            co[u] |= start_bits
    follow_list = {q: list(_members(follow_bits[q], names)) for q in names}
    for q in names:
        for t in follow_list[q]:
            co[t] |= follow_bits[q]
    changed = True
    while changed:
        changed = False
        for q in names:
            together = 0
            for r in _members(co[q] & same_text[q], names):
                together |= follow_bits[r]
            for t in follow_list[q]:
                if together & ~co[t]:
                    co[t] |= together
                    changed = True
    co_sets = {t: set(_members(co[t], names)) for t in names}
    return co_sets, follow_bytes, first_bytes


def _may_match_same_text(a: _Glushkov, b: _Glushkov) -> bool:
    """Could two lexemes match one string? (over-approximated beyond literals)"""
    if a is b:
        return True
    if a.literal is not None and b.literal is not None:
        return a.literal == b.literal
    if a.literal is not None or b.literal is not None:
        text, other = (a.literal, b) if a.literal is not None else (b.literal, a)
        return other.accepts(text)
    return _overlap(a.first_chars, b.first_chars)


def _members(bits: int, names: list[str]):
    while bits:
        low = bits & -bits
        yield names[low.bit_length() - 1]
        bits ^= low
