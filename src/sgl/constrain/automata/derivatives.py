"""Boolean string-language expressions and the automaton built from them by derivatives.

Expressions are ``regex_ast`` nodes over code points plus ``LAnd`` (intersection),
``LNot`` (complement) and ``LDfa`` (a small DFA inside an expression). ``derivative``
is Brzozowski's derivative; ``expr_dfa`` builds the derivative DFA (states created as
they are reached, within a budget), ``minimize`` is ``dfa.py``'s minimiser, and
``dfa_to_node``/``materialize`` turn the automaton back into a plain node by state
elimination. ``restrict_length`` intersects a node with a length range, structurally
where it can. The JSON Schema frontend uses these for ``pattern`` + ``maxLength``,
``not: {pattern}`` and "any key except the declared ones".
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import CompileBudgetExceeded, ConstraintError
from ..regex_ast import (
    EMPTY,
    MAX_CODEPOINT,
    NOTHING,
    Alt,
    Bytes,
    Chars,
    Node,
    Repeat,
    Seq,
    normalize_ranges,
)
from .dfa import _Dfa, _minimize

ANY_CHAR = Chars(((0, MAX_CODEPOINT),))
ANY_STRING = Repeat(ANY_CHAR, 0, None)

# ---------------------------------------------------------------------------
# Smart constructors (canonical enough for derivatives to terminate)


@dataclass(frozen=True)
class LAnd:
    """Strings matched by every item (an intersection)."""

    items: tuple


@dataclass(frozen=True)
class LNot:
    """Strings not matched by ``item`` (complement over all strings)."""

    item: object


@dataclass(frozen=True, eq=False)
class DfaSpec:
    """A small DFA over code points used inside expressions (compared by identity)."""

    edges: tuple  # per state: ((Chars, target), ...)
    accepting: tuple  # per state: bool
    name: str = "dfa"  # for a deterministic order inside expressions

    def __repr__(self) -> str:
        return f"DfaSpec({self.name})"


@dataclass(frozen=True)
class LDfa:
    """The strings ``spec`` accepts from ``state`` (an automaton inside an expression)."""

    spec: DfaSpec
    state: int


Expr = Node | LAnd | LNot | LDfa

_KEYS: dict = {}


def _key(e) -> str:
    k = _KEYS.get(e)
    if k is None:
        if len(_KEYS) > 200_000:
            _KEYS.clear()
        k = _KEYS[e] = repr(e)
    return k


def mk_seq(*items) -> Expr:
    flat: list = []
    for it in items:
        t = type(it)  # the common classes first, without a dataclass __eq__ call each
        if t is Seq:
            flat.extend(it.items)
        elif t is Chars or t is Repeat:
            flat.append(it)
        elif t is Alt:
            if not it.items:  # NOTHING
                return NOTHING
            flat.append(it)
        elif isinstance(it, Seq):
            flat.extend(it.items)
        elif it == NOTHING:
            return NOTHING
        elif it != EMPTY:
            flat.append(it)
    if not flat:
        return EMPTY
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


# classes none of whose instances equals NOTHING (an Alt): dataclasses of another class
_NEVER_NOTHING = frozenset({Seq, Repeat, LAnd, LNot, LDfa})


def mk_alt(*items) -> Expr:
    flat: list = []
    char_ranges: list = []
    for it in items:
        if isinstance(it, Alt):
            for sub in it.items:
                (char_ranges.extend(sub.ranges) if isinstance(sub, Chars) else flat.append(sub))
        elif isinstance(it, Chars):
            char_ranges.extend(it.ranges)
        elif type(it) in _NEVER_NOTHING or it != NOTHING:  # no dataclass __eq__ call for those
            flat.append(it)
    if char_ranges:
        flat.append(Chars(normalize_ranges(char_ranges)))
    uniq = {(_key(x)): x for x in flat}
    out = [uniq[k] for k in sorted(uniq)]
    if not out:
        return NOTHING
    return out[0] if len(out) == 1 else Alt(tuple(out))


def mk_and(*items) -> Expr:
    flat: list = []
    for it in items:
        if isinstance(it, LAnd):
            flat.extend(it.items)
        elif it == NOTHING:
            return NOTHING
        elif it != ANY_STRING:
            flat.append(it)
    uniq = {(_key(x)): x for x in flat}
    out = [uniq[k] for k in sorted(uniq)]
    if not out:
        return ANY_STRING
    return out[0] if len(out) == 1 else LAnd(tuple(out))


def mk_not(item) -> Expr:
    return item.item if isinstance(item, LNot) else LNot(item)


def mk_repeat(item, lo: int, hi: int | None) -> Expr:
    if hi is not None and (hi < lo or hi == 0):
        return EMPTY if hi == 0 and lo == 0 else NOTHING
    t = type(item)
    if t is Chars:  # neither NOTHING nor EMPTY, never nullable
        return item if lo == 1 and hi == 1 else Repeat(item, lo, hi)
    if t is not Repeat:  # a Repeat is neither NOTHING nor EMPTY: no dataclass __eq__ call
        if item == NOTHING:
            return EMPTY if lo == 0 else NOTHING
        if item == EMPTY:
            return EMPTY
    if nullable(item):
        lo = 0
    if lo == 1 and hi == 1:
        return item
    return Repeat(item, lo, hi)


@lru_cache(maxsize=100_000)
def nullable(e) -> bool:
    if isinstance(e, Chars | Bytes):
        return False
    if isinstance(e, Seq | LAnd):
        return all(nullable(i) for i in e.items)
    if isinstance(e, Alt):
        return any(nullable(i) for i in e.items)
    if isinstance(e, Repeat):
        return e.min == 0 or nullable(e.item)
    if isinstance(e, LNot):
        return not nullable(e.item)
    if isinstance(e, LDfa):
        return e.spec.accepting[e.state]
    raise TypeError(e)


def has_boolean_ops(e, memo: dict | None = None) -> bool:
    if isinstance(e, LAnd | LNot | LDfa):
        return True
    if isinstance(e, Chars | Bytes):
        return False
    if type(e) is not Alt and isinstance(e, Alt) and getattr(e, "words", None) is not None:
        return False  # a word list (compiler.LiteralAlt): literal strings, items not built
    kept = getattr(e, "__dict__", None)  # nodes are immutable: the answer is kept on them
    got = kept.get("_bool_ops") if kept is not None else None
    if got is not None:
        return got
    memo = {} if memo is None else memo
    got = memo.get(id(e))
    if got is not None:
        return got
    if isinstance(e, Seq | Alt):
        r = any(has_boolean_ops(i, memo) for i in e.items)
    else:
        r = has_boolean_ops(e.item, memo)
    memo[id(e)] = r
    if kept is not None:
        kept["_bool_ops"] = r
    return r


# ---------------------------------------------------------------------------
# Derivatives


def in_chars(cs: Chars, c: int) -> bool:
    """Whether code point ``c`` is in the set ``cs`` (binary search of its ranges)."""
    i = bisect_right(cs.ranges, (c, MAX_CODEPOINT + 1)) - 1
    return i >= 0 and cs.ranges[i][0] <= c <= cs.ranges[i][1]


def derivative(e, c: int):
    """The strings ``w`` such that ``chr(c) + w`` is in ``e``."""
    if isinstance(e, Chars):
        return EMPTY if in_chars(e, c) else NOTHING
    if isinstance(e, Seq):
        if not e.items:
            return NOTHING
        head, rest = e.items[0], mk_seq(*e.items[1:])
        d = mk_seq(derivative(head, c), rest)
        if nullable(head):
            return mk_alt(d, derivative(rest, c))
        return d
    if isinstance(e, Alt):
        return mk_alt(*(derivative(i, c) for i in e.items))
    if isinstance(e, Repeat):
        if e.max == 0:
            return NOTHING
        rest = mk_repeat(e.item, max(e.min - 1, 0), None if e.max is None else e.max - 1)
        return mk_seq(derivative(e.item, c), rest)
    if isinstance(e, LAnd):
        return mk_and(*(derivative(i, c) for i in e.items))
    if isinstance(e, LNot):
        return mk_not(derivative(e.item, c))
    if isinstance(e, LDfa):
        for cs, t in e.spec.edges[e.state]:
            if in_chars(cs, c):
                return LDfa(e.spec, t)
        return NOTHING
    if isinstance(e, Bytes):
        raise ConstraintError("byte-level patterns cannot be combined")
    raise TypeError(e)


def _firsts(e, out: list) -> None:
    """Collect the character sets that can start ``e`` (an over-approximation)."""
    if isinstance(e, Chars):
        out.append(e)
    elif isinstance(e, Seq):
        for it in e.items:
            _firsts(it, out)
            if not nullable(it):
                break
    elif isinstance(e, Alt | LAnd):
        for it in e.items:
            _firsts(it, out)
    elif isinstance(e, Repeat | LNot):
        _firsts(e.item, out)
    elif isinstance(e, LDfa):
        out.extend(cs for cs, _ in e.spec.edges[e.state])


def _classes(e) -> list[tuple[int, int]]:
    """Elementary intervals on which every derivative of ``e`` is constant."""
    sets: list[Chars] = []
    _firsts(e, sets)
    cuts = {0, MAX_CODEPOINT + 1}
    for cs in sets:
        for lo, hi in cs.ranges:
            cuts.add(lo)
            cuts.add(hi + 1)
    pts = sorted(cuts)
    return [(pts[i], pts[i + 1] - 1) for i in range(len(pts) - 1)]


@dataclass
class CharDFA:
    """A DFA over code points: ``edges[s]`` = [(Chars, target)], start 0."""

    edges: list[list[tuple[Chars, int]]]
    accepting: list[bool]


def expr_dfa(e, max_states: int = 2000) -> CharDFA:
    """The derivative DFA of an expression (every state reachable from the start)."""
    states = [e]
    index = {e: 0}
    edges: list[list[tuple[Chars, int]]] = []
    i = 0
    while i < len(states):
        cur = states[i]
        i += 1
        by_target: dict[int, list[tuple[int, int]]] = {}
        for lo, hi in _classes(cur):
            d = derivative(cur, lo)
            if d == NOTHING:
                continue
            t = index.get(d)
            if t is None:
                t = index[d] = len(states)
                states.append(d)
                if len(states) > max_states:
                    raise CompileBudgetExceeded(f"string constraint needs over {max_states} automaton states")
            by_target.setdefault(t, []).append((lo, hi))
        edges.append([(Chars(normalize_ranges(r)), t) for t, r in by_target.items()])
    return CharDFA(edges, [nullable(s) for s in states])


def _size(node, memo: dict) -> int:
    k = id(node)
    got = memo.get(k)
    if got is not None:
        return got[0]
    if isinstance(node, Seq | Alt):
        n = 1 + sum(_size(i, memo) for i in node.items)
    elif isinstance(node, Repeat):
        n = 1 + _size(node.item, memo)
    else:
        n = 1
    memo[k] = (n, node)
    return n


def _trim(dfa: CharDFA) -> CharDFA:
    """Only the states that can reach acceptance (all of them stay reachable)."""
    live = list(dfa.accepting)
    changed = True
    while changed:
        changed = False
        for s, out in enumerate(dfa.edges):
            if not live[s] and any(live[t] for _, t in out):
                live[s] = changed = True
    if not live[0]:
        return CharDFA([[]], [False])
    keep = [s for s in range(len(dfa.edges)) if live[s]]
    renum = {s: k for k, s in enumerate(keep)}
    return CharDFA([[(cs, renum[t]) for cs, t in dfa.edges[s] if live[t]] for s in keep],
                   [dfa.accepting[s] for s in keep])


def minimize(dfa: CharDFA) -> CharDFA:
    """The minimal DFA (start 0) of a DFA whose states are all reachable from the start:
    states that cannot reach acceptance are dropped (the minimiser wants a trim DFA),
    then ``dfa.py``'s minimiser runs over the elementary code-point intervals."""
    dfa = _trim(dfa)
    cuts = {x for es in dfa.edges for cs, _ in es for lo, hi in cs.ranges for x in (lo, hi + 1)}
    bounds = np.array(sorted(cuts | {0, MAX_CODEPOINT + 1}))
    table = np.full((len(dfa.edges), len(bounds) - 1), -1, dtype=np.int32)
    for s, es in enumerate(dfa.edges):
        for cs, t in es:
            for lo, hi in cs.ranges:
                table[s, np.searchsorted(bounds, lo):np.searchsorted(bounds, hi + 1)] = t
    m = _minimize(_Dfa(table, dfa.accepting, bounds, minimal=False, finite=False))
    edges = []
    for row in m.table.tolist():
        by_t: dict[int, list] = {}
        for c, t in enumerate(row):
            if t >= 0:
                by_t.setdefault(t, []).append((int(m.bounds[c]), int(m.bounds[c + 1]) - 1))
        edges.append([(Chars(normalize_ranges(r)), t) for t, r in by_t.items()])
    return CharDFA(edges, m.accepting.tolist())


def dfa_to_node(dfa: CharDFA, max_size: int = 20_000) -> Node:
    """State elimination: a regex for the DFA's language (raises when it grows too big)."""
    dfa = minimize(dfa)
    n = len(dfa.edges)
    start, final = n, n + 1
    out: dict[int, dict[int, Node]] = {s: {} for s in range(n + 2)}
    inc: dict[int, set[int]] = {s: set() for s in range(n + 2)}
    memo: dict = {}

    def too_big() -> CompileBudgetExceeded:
        return CompileBudgetExceeded("string constraint is too complex to combine into one regex")

    def add(i: int, j: int, node) -> None:
        if node == NOTHING:
            return
        old = out[i].get(j)
        if old is not None and _size(old, memo) + _size(node, memo) > max_size:
            raise too_big()
        out[i][j] = node if old is None else mk_alt(old, node)
        inc[j].add(i)

    add(start, 0, EMPTY)
    for s, es in enumerate(dfa.edges):
        for cs, t in es:
            add(s, t, cs)
        if dfa.accepting[s]:
            add(s, final, EMPTY)
    remaining = set(range(n))
    while remaining:
        k = min(remaining, key=lambda s: (len(inc[s] - {s}) * len(set(out[s]) - {s}), s))
        remaining.discard(k)
        loop = out[k].pop(k, None)
        inc[k].discard(k)
        star = mk_repeat(loop, 0, None) if loop is not None else EMPTY
        preds = [(i, out[i].pop(k)) for i in sorted(inc[k])]
        succs = sorted(out[k].items())
        for j, _ in succs:
            inc[j].discard(k)
        total = 0
        for i, rin in preds:
            for j, rout in succs:
                total += _size(rin, memo) + _size(star, memo) + _size(rout, memo)
                if total > 4 * max_size:
                    raise too_big()
                add(i, j, mk_seq(rin, star, rout))
        out[k] = {}
        inc[k] = set()
    return out[start].get(final, NOTHING)


def materialize(e, max_states: int = 2000, max_size: int = 20_000) -> Node:
    """A plain ``regex_ast`` node for an expression that may contain ``LAnd``/``LNot``."""
    if not has_boolean_ops(e):
        return e
    try:
        return dfa_to_node(expr_dfa(e, max_states), max_size)
    except RecursionError:
        raise CompileBudgetExceeded("string constraint nests too deeply to combine into one regex") from None


# ---------------------------------------------------------------------------
# Length restrictions


@lru_cache(maxsize=50_000)
def length_range(e) -> tuple[int, int | None]:
    """(min, max) length in characters of the strings of a plain node (max None = unbounded)."""
    if isinstance(e, Chars | Bytes):
        return (1, 1) if e.ranges else (0, 0)
    if isinstance(e, Seq):
        lo, hi = 0, 0
        for it in e.items:
            a, b = length_range(it)
            lo += a
            hi = None if hi is None or b is None else hi + b
        return lo, hi
    if isinstance(e, Alt):
        if not e.items:
            return 0, 0
        rs = [length_range(i) for i in e.items]
        return min(r[0] for r in rs), (None if any(r[1] is None for r in rs) else max(r[1] for r in rs))
    if isinstance(e, Repeat):
        a, b = length_range(e.item)
        hi = None if e.max is None or b is None else b * e.max
        return a * e.min, hi
    raise TypeError(e)


def restrict_length(e: Node, lo: int, hi: int | None) -> tuple[Node, bool]:
    """The strings of ``e`` with length in ``[lo, hi]``: ``(node, exact)``.

    Exact when the constraint is implied, or the node has a single variable-length
    repetition of fixed-width items; otherwise tries the automaton construction and
    falls back to a sound under-approximation (a subset: repetitions get smaller
    bounds), reported with ``exact=False``.
    """
    mn, mx = length_range(e)
    if mn >= lo and (hi is None or (mx is not None and mx <= hi)):
        return e, True
    if (hi is not None and mn > hi) or (mx is not None and mx < lo):
        return NOTHING, True
    got = _restrict_simple(e, lo, hi)
    if got is not None:
        return got, True
    try:
        return materialize(mk_and(e, Repeat(ANY_CHAR, lo, hi)), max_states=1500, max_size=20_000), True
    except CompileBudgetExceeded as exc:
        if exc.budget == "seconds":
            raise  # out of time: not a reason to restrict the language further
    approx = _restrict_sound(e, lo, hi)
    if approx is None:
        raise CompileBudgetExceeded("cannot combine this pattern with minLength/maxLength")
    return approx, False


def _restrict_simple(e: Node, lo: int, hi: int | None) -> Node | None:
    """Exact length restriction by structure, or None.

    Handles alternations branch by branch, and sequences with at most one unbounded
    part (a repetition of fixed-width items) plus a few bounded variable parts, whose
    lengths are enumerated (``https?://.+`` with maxLength: two alternatives).
    """
    if isinstance(e, Alt):
        parts = [restrict_length(i, lo, hi) for i in e.items]
        if all(ok for _, ok in parts):
            return mk_alt(*(p for p, _ in parts))
        return None
    if isinstance(e, Repeat):
        w, w2 = length_range(e.item)
        if w != w2 or w == 0:
            return None
        cmin = max(e.min, -(-lo // w))
        cmax = None if hi is None else hi // w
        if e.max is not None:
            cmax = e.max if cmax is None else min(cmax, e.max)
        return NOTHING if cmax is not None and cmax < cmin else mk_repeat(e.item, cmin, cmax)
    items = list(e.items) if isinstance(e, Seq) else [e]
    ranges = [length_range(it) for it in items]
    var = [i for i, (a, b) in enumerate(ranges) if a != b]
    unbounded = [i for i in var if ranges[i][1] is None]
    bounded = [i for i in var if ranges[i][1] is not None]
    if len(unbounded) > 1:
        return None
    options = 1
    for i in bounded:
        options *= ranges[i][1] - ranges[i][0] + 1
    if options > 64:
        return None
    if unbounded:
        r = items[unbounded[0]]
        if not isinstance(r, Repeat):
            return None
        w, w2 = length_range(r.item)
        if w != w2 or w == 0:
            return None
    fixed = sum(a for k, (a, b) in enumerate(ranges) if k not in var)
    combos: list[tuple] = [()]
    for i in bounded:
        combos = [c + ((i, n),) for c in combos for n in range(ranges[i][0], ranges[i][1] + 1)]
    alts = []
    for combo in combos:
        new = list(items)
        total = fixed
        ok = True
        for k, n in combo:
            node, exact = restrict_length(items[k], n, n)
            if not exact:
                return None
            if node == NOTHING:
                ok = False
                break
            new[k] = node
            total += n
        if not ok:
            continue
        if unbounded:
            k = unbounded[0]
            r = items[k]
            w = length_range(r.item)[0]
            cmin = max(r.min, -(-(lo - total) // w))
            cmax = None if hi is None else (hi - total) // w
            if cmax is not None and r.max is not None:
                cmax = min(cmax, r.max)
            if cmax is not None and cmax < cmin:
                continue
            new[k] = mk_repeat(r.item, max(cmin, 0), cmax)
        elif total < lo or (hi is not None and total > hi):
            continue
        alts.append(mk_seq(*new))
    return mk_alt(*alts) if alts else NOTHING


def _restrict_sound(e: Node, lo: int, hi: int | None) -> Node | None:
    """A subset of the strings of ``e`` with lengths in ``[lo, hi]``, or None.

    Only an upper bound is distributed (each part of a sequence gets a share of the
    slack); a lower bound must already be implied by the node.
    """
    if length_range(e)[0] < lo or hi is None:
        return None
    got = _cap_length(e, hi)
    return None if got == NOTHING else got


def _cap_length(e: Node, hi: int) -> Node:
    """A subset of ``e`` whose strings all have length <= hi (sound, not exact)."""
    mn, mx = length_range(e)
    if mx is not None and mx <= hi:
        return e
    if mn > hi:
        return NOTHING
    if isinstance(e, Alt):
        return mk_alt(*(_cap_length(i, hi) for i in e.items))
    if isinstance(e, Seq):
        mins = [length_range(i)[0] for i in e.items]
        var = [k for k, it in enumerate(e.items) if length_range(it)[1] != mins[k]]
        slack = hi - sum(mins)
        share, extra = divmod(slack, max(len(var), 1))
        items = list(e.items)
        for n, k in enumerate(var):
            items[k] = _cap_length(items[k], mins[k] + share + (1 if n < extra else 0))
        return mk_seq(*items)
    if isinstance(e, Repeat):
        xmin, xmax = length_range(e.item)
        copies = max(e.min, 1)
        w = hi // copies
        if xmax is not None:
            w = min(w, xmax)
        w = max(w, xmin, 1)
        item = _cap_length(e.item, w)
        count = hi // w
        if count < e.min or item == NOTHING:
            return NOTHING if e.min > 0 else EMPTY
        return mk_repeat(item, e.min, count if e.max is None else min(e.max, count))
    return NOTHING
