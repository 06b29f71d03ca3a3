"""Number lexemes (``ranges`` regexes) compiled by a position automaton.

A JSON number with bounds (``minimum: 0, maximum: 100``, ``type: integer``,
``multipleOf: 0.01``) is a regex of a few hundred ASCII character classes: digit
ranges, bounded repeats of digits, alternatives per integer length and exponent.
Through ``compiler.to_dfa`` each becomes a subset construction over terms with its
own Repeat items minimised on the way: 1.5-6 ms for a 12-45 state result, most of it
per-term bookkeeping made for Unicode-sized alphabets.

Here the alphabet is ASCII (a character is its byte) and small (digits, ``.``,
``e``/``E``, signs), so the Glushkov position automaton fits in Python integers:
each occurrence of a character class in the regex (bounded repeats unrolled) is a
bit, ``follow[p]`` the bits that may come after position ``p``, and the subset
construction walks sets of positions as integers: a state is the set of positions
just read, its successor on a byte class the ``|`` of their ``follow`` rows ``&`` the
class's positions. The result
is minimised by ``dfa._minimize`` as every other lexeme's; the language is the
regex's by construction (tests compare with ``general_dfa`` on random bounds).

``NumberLexeme`` is the node: an ``Alt`` whose items are the regex's (every other
consumer sees the same language) with ``direct_byte_dfa`` for ``to_dfa``. Regexes with
a non-ASCII class or more than ``MAX_POSITIONS`` positions (a bound with hundreds of
digits) go through the general construction.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..regex_ast import Alt, Bytes, Chars, Node, Repeat, Seq
from .dfa import ByteDFA, _Dfa, _minimize, _too_many_states

# Positions (unrolled character classes) past which the general construction is used:
# its budgets then decide, and a regex that big is not a number range anyone writes.
MAX_POSITIONS = 4000


class NumberLexeme(Alt):
    """A number lexeme's regex, compiled by ``position_dfa`` when it is ASCII."""

    def direct_byte_dfa(self, max_states: int = 50_000) -> ByteDFA | None:
        """The minimal ``ByteDFA`` of this node (see the module), or None when it is not
        for this construction: ``to_dfa`` then compiles ``regex`` within its own budgets."""
        return position_dfa(self, max_states)

    @property
    def regex(self) -> Node:
        """The plain regex this node wraps."""
        return self.items[0] if len(self.items) == 1 else Alt(self.items)


@lru_cache(maxsize=1024)
def number_lexeme(node: Node) -> Node:
    """``node`` as a ``NumberLexeme`` (cached so that equal inputs give one object: the
    JSON Schema emitter deduplicates terminals by identity)."""
    if isinstance(node, NumberLexeme) or (isinstance(node, Alt) and not node.items):
        return node
    return NumberLexeme(node.items if type(node) is Alt else (node,))


class _Positions:
    """The linearised regex: each position's byte ranges and ``follow`` bit sets."""

    def __init__(self) -> None:
        self.ranges: list[tuple[tuple[int, int], ...]] = []
        self.follow: list[int] = []

    def walk(self, node: Node) -> tuple[bool, int, int]:
        """(nullable, first positions, last positions) of ``node``, adding its positions."""
        if isinstance(node, Chars | Bytes):
            if isinstance(node, Chars) and node.ranges and node.ranges[-1][1] >= 0x80:
                raise _NotAscii
            p = len(self.ranges)
            if p >= MAX_POSITIONS:
                raise _NotAscii
            self.ranges.append(node.ranges)
            self.follow.append(0)
            return False, 1 << p, 1 << p
        if isinstance(node, Seq):
            acc = (True, 0, 0)
            for it in node.items:
                acc = self.then(acc, self.walk(it))
            return acc
        if isinstance(node, Alt):
            nullable, first, last = False, 0, 0
            for it in node.items:
                n, f, la = self.walk(it)
                nullable, first, last = nullable or n, first | f, last | la
            return nullable, first, last
        if isinstance(node, Repeat):
            return self.repeat(node)
        raise TypeError(node)

    def repeat(self, node: Repeat) -> tuple[bool, int, int]:
        """``X{m,n}`` as ``m`` copies and ``n - m`` optional ones; ``X{m,}`` ends with ``X*``."""
        lo, hi = node.min, node.max
        acc = (True, 0, 0)
        copies = lo if hi is None else hi
        for i in range(copies + (hi is None)):
            n, f, la = self.walk(node.item)
            if hi is None and i == copies:  # the starred copy loops on itself
                self.link(la, f)
                n = True
            elif i >= lo:
                n = True  # an optional copy
            acc = self.then(acc, (n, f, la))
        return acc

    def then(self, acc: tuple[bool, int, int], part: tuple[bool, int, int]) -> tuple[bool, int, int]:
        """(nullable, first, last) of ``acc`` followed by ``part``, linking the two."""
        nullable, first, last = acc
        n, f, la = part
        self.link(last, f)
        return nullable and n, first | f if nullable else first, la | last if n else la

    def link(self, sources: int, targets: int) -> None:
        """Every position of ``sources`` may be followed by every one of ``targets``."""
        if not targets:
            return
        follow = self.follow
        while sources:
            low = sources & -sources
            follow[low.bit_length() - 1] |= targets
            sources ^= low


class _NotAscii(Exception):
    """The regex is not for this construction (non-ASCII class, too many positions)."""


def position_dfa(node: Node, max_states: int = 50_000) -> ByteDFA | None:
    """The minimal ``ByteDFA`` of an ASCII regex, or None when it is not one (see the
    module). Raises ``CompileBudgetExceeded`` past ``max_states`` subset states."""
    if _count_positions(node, {}) > MAX_POSITIONS:
        return None  # counted first: linking thousands of positions before giving up is slow
    pos = _Positions()
    try:
        nullable, first, last = pos.walk(node)
    except _NotAscii:
        return None
    if not first:
        return ByteDFA(np.full((1, 256), -1, dtype=np.int32), np.array([nullable]))  # {""} or nothing
    bounds, masks = _classes(pos.ranges)
    follow = pos.follow
    start = 1 << len(pos.ranges)  # a bit of its own: the start is not a position
    follow.append(first)
    index = {start: 0}
    order = [start]
    rows: list[list[int]] = []
    i = 0
    while i < len(order):
        s = order[i]
        i += 1
        reach = 0  # the positions that may come next: the follow sets of s's
        while s:
            low = s & -s
            reach |= follow[low.bit_length() - 1]
            s ^= low
        row = []
        for m in masks:
            t = reach & m
            if not t:
                row.append(-1)
                continue
            k = index.get(t)
            if k is None:
                k = index[t] = len(order)
                order.append(t)
                if len(order) > max_states:
                    raise _too_many_states(max_states)
            row.append(k)
        rows.append(row)
    accepting = [bool(s & last) for s in order]
    accepting[0] = nullable
    table, accepting_arr = _trim(np.array(rows, dtype=np.int64), np.array(accepting, dtype=bool))
    return _minimize(_Dfa(table, accepting_arr, bounds, minimal=False, finite=False)).to_byte_dfa()


def _count_positions(node: Node, memo: dict[int, int]) -> int:
    """How many positions ``walk`` would make (bounded repeats unrolled), capped just
    above ``MAX_POSITIONS``; shared subtrees counted once per object."""
    got = memo.get(id(node))
    if got is not None:
        return got
    if isinstance(node, Chars | Bytes):
        n = 1
    elif isinstance(node, Seq | Alt):
        n = 0
        for it in node.items:
            n += _count_positions(it, memo)
            if n > MAX_POSITIONS:
                break
    elif isinstance(node, Repeat):
        copies = node.min + 1 if node.max is None else node.max
        n = _count_positions(node.item, memo) * copies
    else:
        n = MAX_POSITIONS + 1  # not a regex_ast node the walk knows
    n = min(n, MAX_POSITIONS + 1)
    memo[id(node)] = n
    return n


def _classes(ranges: list[tuple[tuple[int, int], ...]]) -> tuple[np.ndarray, list[int]]:
    """Byte-class bounds (0 to 256) and, per class, the bit set of positions holding it."""
    bounds = sorted({0, 256, *(x for rs in ranges for lo, hi in rs for x in (lo, hi + 1))})
    at = {b: k for k, b in enumerate(bounds)}
    masks = [0] * (len(bounds) - 1)
    for p, rs in enumerate(ranges):
        bit = 1 << p
        for lo, hi in rs:
            for c in range(at[lo], at[hi + 1]):
                masks[c] |= bit
    return np.array(bounds), masks


def _trim(table: np.ndarray, accepting: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Only the states that can reach acceptance (all are reachable from the start);
    one rejecting state for the empty language, as ``_Dfa`` wants."""
    live = accepting.copy()
    while True:
        more = live | (np.where(table >= 0, live[table], False).any(axis=1))
        if (more == live).all():
            break
        live = more
    if live.all():
        return table, accepting
    if not live[0]:
        return np.full((1, table.shape[1]), -1), np.array([False])
    renum = np.cumsum(live) - 1
    kept = table[live]
    out = np.where((kept >= 0) & live[kept], renum[kept], -1)
    return out, accepting[live]
