"""String languages for the JSON Schema frontend: JSON escaping, formats, patterns.

Everything here works on *decoded* strings first (a ``regex_ast`` node over code
points, as a pattern means it), then ``json_string_node`` turns such a node into the
lexeme for the *encoded* JSON string, quotes included. What the encoded form accepts
for a decoded character ``c`` (documented contract of the string lexemes):

* printable ASCII other than ``"`` and ``\\`` (0x20-0x7E): ``c`` itself (``/`` also
  as ``\\/``); its ``\\uXXXX`` spelling only where the character set contains all of
  printable ASCII (unconstrained strings, ``.``), which keeps those automata small;
* ``"`` and ``\\``: ``\\"``/``\\\\`` and ``\\u0022``/``\\u005c``;
* control characters (0x00-0x1F): the short escape where JSON has one
  (``\\b \\f \\n \\r \\t``) and ``\\u00XX``;
* DEL and non-ASCII: the raw UTF-8 character and ``\\uXXXX`` (astral characters as a
  surrogate pair ``\\uD8xx\\uDCxx``), as ``json.dumps`` writes with or without
  ``ensure_ascii``.

Hex digits in ``\\u`` escapes may be upper or lower case; lone surrogates are never
accepted.

Intersections and complements (``pattern`` + ``maxLength``, ``not: {pattern}``,
"any key except the declared ones") use ``LAnd``/``LNot`` expression nodes, which
``materialize`` turns back into a plain ``regex_ast`` node through a Brzozowski
derivative DFA and state elimination, within a size budget.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

from .automaton import LiteralAlt
from .errors import CompileBudgetExceeded, ConstraintError, check_deadline
from .regex_ast import (
    EMPTY,
    MAX_CODEPOINT,
    NOTHING,
    Alt,
    Bytes,
    Chars,
    Node,
    Repeat,
    Seq,
    chars,
    literal,
    normalize_ranges,
)

ANY_CHAR = Chars(((0, MAX_CODEPOINT),))
ANY_STRING = Repeat(ANY_CHAR, 0, None)
QUOTE = literal('"')

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
        if isinstance(it, Seq):
            flat.extend(it.items)
        elif it == NOTHING:
            return NOTHING
        elif it != EMPTY:
            flat.append(it)
    if not flat:
        return EMPTY
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def mk_alt(*items) -> Expr:
    flat: list = []
    char_ranges: list = []
    for it in items:
        if isinstance(it, Alt):
            for sub in it.items:
                (char_ranges.extend(sub.ranges) if isinstance(sub, Chars) else flat.append(sub))
        elif isinstance(it, Chars):
            char_ranges.extend(it.ranges)
        elif it != NOTHING:
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
    if isinstance(item, LNot):
        return item.item
    return LNot(item)


def mk_repeat(item, lo: int, hi: int | None) -> Expr:
    if hi is not None and (hi < lo or hi == 0):
        return EMPTY if hi == 0 and lo == 0 else NOTHING
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
    if isinstance(e, Seq):
        return all(nullable(i) for i in e.items)
    if isinstance(e, Alt):
        return any(nullable(i) for i in e.items)
    if isinstance(e, Repeat):
        return e.min == 0 or nullable(e.item)
    if isinstance(e, LAnd):
        return all(nullable(i) for i in e.items)
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
    memo = {} if memo is None else memo
    got = memo.get(id(e))
    if got is not None:
        return got
    if isinstance(e, Seq | Alt):
        r = any(has_boolean_ops(i, memo) for i in e.items)
    else:
        r = has_boolean_ops(e.item, memo)
    memo[id(e)] = r
    return r


# ---------------------------------------------------------------------------
# Derivatives


def _contains(cs: Chars, c: int) -> bool:
    i = bisect_right(cs.ranges, (c, MAX_CODEPOINT + 1)) - 1
    return i >= 0 and cs.ranges[i][0] <= c <= cs.ranges[i][1]


def derivative(e, c: int):
    """The strings ``w`` such that ``chr(c) + w`` is in ``e``."""
    if isinstance(e, Chars):
        return EMPTY if _contains(e, c) else NOTHING
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
            if _contains(cs, c):
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
    elif isinstance(e, Repeat):
        _firsts(e.item, out)
    elif isinstance(e, LNot):
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
    """The derivative DFA of an expression, dead states removed."""
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
    accepting = [nullable(s) for s in states]
    # keep only states that can reach acceptance
    live = [a for a in accepting]
    changed = True
    while changed:
        changed = False
        for s, out in enumerate(edges):
            if not live[s] and any(live[t] for _, t in out):
                live[s] = changed = True
    if not live[0]:
        return CharDFA([[]], [False])
    keep = [s for s in range(len(states)) if live[s]]
    renum = {s: k for k, s in enumerate(keep)}
    new_edges = [[(cs, renum[t]) for cs, t in edges[s] if live[t]] for s in keep]
    return CharDFA(new_edges, [accepting[s] for s in keep])


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


def minimize(dfa: CharDFA) -> CharDFA:
    """Moore's partition refinement over the DFA's elementary character intervals."""
    n = len(dfa.edges)
    cuts = {0, MAX_CODEPOINT + 1}
    for es in dfa.edges:
        for cs, _ in es:
            for lo, hi in cs.ranges:
                cuts.add(lo)
                cuts.add(hi + 1)
    pts = sorted(cuts)
    reps = pts[:-1]

    def target(s: int, c: int) -> int:
        for cs, t in dfa.edges[s]:
            if _contains(cs, c):
                return t
        return -1

    table = [[target(s, c) for c in reps] for s in range(n)]
    cls = [int(a) for a in dfa.accepting]
    while True:
        sigs: dict = {}
        new = [sigs.setdefault((cls[s], tuple(cls[t] if t >= 0 else -1 for t in table[s])), len(sigs)) for s in range(n)]
        if len(sigs) == len(set(cls)):
            break
        cls = new
    order: dict[int, int] = {}
    for s in range(n):  # number classes by first state, so the start stays 0
        order.setdefault(cls[s], len(order))
    m = len(order)
    edges: list = [None] * m
    accepting = [False] * m
    for s in range(n):
        k = order[cls[s]]
        if edges[k] is not None:
            continue
        by_t: dict[int, list] = {}
        for i, t in enumerate(table[s]):
            if t >= 0:
                by_t.setdefault(order[cls[t]], []).append((pts[i], pts[i + 1] - 1))
        edges[k] = [(Chars(normalize_ranges(r)), t) for t, r in by_t.items()]
        accepting[k] = bool(dfa.accepting[s])
    return CharDFA(edges, accepting)


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
    except CompileBudgetExceeded:
        pass
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


# ---------------------------------------------------------------------------
# JSON string encoding

HEX_CLASS = [chars((0x30 + v, 0x30 + v)) if v < 10 else chars((0x61 + v - 10, 0x61 + v - 10), (0x41 + v - 10, 0x41 + v - 10)) for v in range(16)]


def _hex_digits(lo: int, hi: int) -> Node:
    return mk_alt(*(HEX_CLASS[v] for v in range(lo, hi + 1)))


def _hex_same_width(lo: int, hi: int, width: int) -> Node:
    """Hex spellings (either case) of the ``width``-digit numbers in ``[lo, hi]``."""
    if width == 0:
        return EMPTY
    base = 16 ** (width - 1)
    a, b = lo // base, hi // base
    if a == b:
        return mk_seq(_hex_digits(a, a), _hex_same_width(lo % base, hi % base, width - 1))
    if lo % base == 0 and hi % base == base - 1:
        return mk_seq(_hex_digits(a, b), mk_repeat(_hex_digits(0, 15), width - 1, width - 1))
    parts = []
    first, last = a, b
    if lo % base != 0:
        parts.append(mk_seq(_hex_digits(a, a), _hex_same_width(lo % base, base - 1, width - 1)))
        first = a + 1
    if hi % base != base - 1:
        parts.append(mk_seq(_hex_digits(b, b), _hex_same_width(0, hi % base, width - 1)))
        last = b - 1
    if first <= last:
        parts.append(mk_seq(_hex_digits(first, last), mk_repeat(_hex_digits(0, 15), width - 1, width - 1)))
    return mk_alt(*parts)


_U = literal("\\u")
_SHORT = {0x22: '\\"', 0x5C: "\\\\", 0x2F: "\\/", 0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
_RAW = ((0x20, 0x21), (0x23, 0x5B), (0x5D, 0xD7FF), (0xE000, MAX_CODEPOINT))
_UESC = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0xD7FF), (0xE000, 0xFFFF))


def _intersect(a, b) -> list[tuple[int, int]]:
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


@lru_cache(maxsize=4096)
def json_chars(cs: Chars) -> Node:
    """Every JSON-encoded spelling of one character of ``cs`` (see the module docstring).

    Shaped as ``raw | \\ (short | u hex4 | u hi-surrogate \\u lo-surrogate)`` so the
    backslash and ``u`` are shared: this node is repeated once per counted character.
    """
    raw = _intersect(cs.ranges, _RAW)
    after_backslash: list = []
    short = [ord(esc[1]) for c, esc in _SHORT.items() if _contains(cs, c)]
    if short:
        after_backslash.append(chars(*((c, c) for c in short)))
    # a set with every printable ASCII character takes all its \u spellings: same
    # decoded language, far smaller automaton (two hex ranges instead of five)
    has_ascii = _intersect(cs.ranges, ((0x20, 0x7E),)) == [(0x20, 0x7E)]
    uesc = _intersect(cs.ranges, ((0, 0xD7FF), (0xE000, 0xFFFF)) if has_ascii else _UESC)
    after_u: list = [_hex_same_width(lo, hi, 4) for lo, hi in uesc]
    after_u += [_surrogate_pairs(lo, hi) for lo, hi in _intersect(cs.ranges, ((0x10000, MAX_CODEPOINT),))]
    if after_u:
        after_backslash.append(mk_seq(literal("u"), mk_alt(*after_u)))
    parts: list = [Chars(tuple(raw))] if raw else []
    if after_backslash:
        parts.append(mk_seq(literal("\\"), mk_alt(*after_backslash)))
    return mk_alt(*parts)


def _surrogate_pairs(lo: int, hi: int) -> Node:
    """Surrogate-pair spellings of ``[lo, hi]`` (astral), without the leading ``\\u``."""

    def split(c):
        v = c - 0x10000
        return 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF)

    (h1, l1), (h2, l2) = split(lo), split(hi)

    def pair(h_lo, h_hi, l_lo, l_hi):
        return mk_seq(_hex_same_width(h_lo, h_hi, 4), _U, _hex_same_width(l_lo, l_hi, 4))

    if h1 == h2:
        return pair(h1, h1, l1, l2)
    parts = []
    first, last = h1, h2
    if l1 != 0xDC00:
        parts.append(pair(h1, h1, l1, 0xDFFF))
        first = h1 + 1
    if l2 != 0xDFFF:
        parts.append(pair(h2, h2, 0xDC00, l2))
        last = h2 - 1
    if first <= last:
        parts.append(pair(first, last, 0xDC00, 0xDFFF))
    return mk_alt(*parts)


def jsonify(node: Node) -> Node:
    """Map a node over decoded characters to a node over their JSON-escaped spellings."""
    memo: dict = {}

    def go(n):
        got = memo.get(id(n))
        if got is not None:
            return got[0]
        if len(memo) & 4095 == 0:
            check_deadline("escaping strings for JSON")
        if isinstance(n, Chars):
            r = json_chars(n) if n.ranges else NOTHING
        elif isinstance(n, Seq):
            items = tuple(go(i) for i in n.items)  # structure kept: flattening is quadratic
            r = NOTHING if any(i == NOTHING for i in items) else Seq(items)
        elif isinstance(n, Alt):
            r = _alt_keep_order(go(i) for i in n.items)
        elif isinstance(n, Repeat):
            r = mk_repeat(go(n.item), n.min, n.max)
        else:
            raise ConstraintError("a JSON string constraint cannot contain raw bytes")
        memo[id(n)] = (r, n)
        return r

    return go(node)


def _alt_keep_order(items) -> Node:
    out = [i for i in items if i != NOTHING]
    if not out:
        return NOTHING
    return out[0] if len(out) == 1 else Alt(tuple(out))


# printable ASCII but for " \ and / (each of which has a second, escaped spelling)
_ONE_SPELLING = re.compile(r"[\x20\x21\x23-\x2e\x30-\x5b\x5d-\x7e]*")
LITERAL_SET_MIN = 64  # a string set this large, all of one spelling, becomes a trie lexeme


def json_string_node(decoded, max_states: int = 2000, max_size: int = 20_000) -> Node:
    """The lexeme (quotes included) for the JSON strings whose decoded value is in ``decoded``."""
    if isinstance(decoded, LiteralAlt) and all(_ONE_SPELLING.fullmatch(w) for w in decoded.words):
        # every character has one JSON spelling: the JSON texts are the quoted words
        return LiteralAlt(tuple(f'"{w}"' for w in decoded.words))
    inner = materialize(decoded, max_states, max_size)
    if inner == NOTHING:
        return NOTHING
    return mk_seq(QUOTE, jsonify(inner), QUOTE)


ANY_JSON_STRING = None  # filled lazily by any_string_lexeme()


def any_string_lexeme() -> Node:
    global ANY_JSON_STRING
    if ANY_JSON_STRING is None:
        ANY_JSON_STRING = json_string_node(ANY_STRING)
    return ANY_JSON_STRING


def literal_string(text: str) -> Node:
    """The decoded-level node for exactly ``text``."""
    return EMPTY if text == "" else literal(text)


def string_set(texts) -> Node:
    """A decoded-level node for a finite set of strings: a radix trie whose identical
    subtrees are shared (a minimal acyclic automaton), built bottom-up without recursion.

    Runs of single-child nodes become one flat ``Seq`` (nesting depth = branching
    depth, not string length, so deep strings never hit Python's recursion limit).
    A large set of strings whose characters each have one JSON spelling is a
    ``LiteralAlt`` instead: ``json_string_node`` compiles it as one trie, in linear time.
    """
    texts = list(texts)
    if len(texts) >= LITERAL_SET_MIN and all(_ONE_SPELLING.fullmatch(t) for t in texts):
        return LiteralAlt(tuple(texts))
    trie: dict = {}
    for k, t in enumerate(texts):
        if k & 4095 == 0:
            check_deadline("building the set of enum strings")
        node = trie
        for ch in t:
            node = node.setdefault(ch, {})
        node[""] = True
    interned: dict[tuple, int] = {}
    built: list[Node] = []
    result: dict[int, int] = {}  # id(branching or leaf trie node) -> interned index

    def is_chain(nd: dict) -> bool:
        return len(nd) == 1 and "" not in nd

    def follow(ch: str, sub: dict) -> tuple[list[Node], int]:
        """The characters from an edge down to the next branching node, and its index."""
        items = [Chars(((ord(ch), ord(ch)),))]
        while is_chain(sub):
            (c2, nxt), = sub.items()
            items.append(Chars(((ord(c2), ord(c2)),)))
            sub = nxt
        return items, result[id(sub)]

    stack = [(trie, False)]
    while stack:
        node, ready = stack.pop()
        if not ready:
            stack.append((node, True))
            stack.extend((sub, False) for ch, sub in node.items() if ch != "")
            continue
        if is_chain(node) and node is not trie:
            continue  # folded into the edge that reaches it
        end = node.get("") is True
        edges: dict[tuple, list[int]] = {}
        for ch, sub in node.items():
            if ch == "":
                continue
            items, target = follow(ch, sub)
            # group edges whose rest (after the first char) is identical
            rest_key = (tuple(it.ranges[0][0] for it in items[1:]), target)
            edges.setdefault(rest_key, []).append(ord(ch))
        key = (end, tuple(sorted((k, tuple(sorted(v))) for k, v in edges.items())))
        idx = interned.get(key)
        if idx is None:
            parts: list[Node] = []
            for (rest, target), cps in key[1]:
                head = Chars(((cps[0], cps[0]),)) if len(cps) == 1 else chars(*((c, c) for c in cps))
                tail = built[target]
                seq_items = [head] + [Chars(((c, c),)) for c in rest]
                if tail != EMPTY:
                    seq_items.append(tail)
                parts.append(seq_items[0] if len(seq_items) == 1 else Seq(tuple(seq_items)))
            if end:
                parts.append(EMPTY)
            nd = NOTHING if not parts else parts[0] if len(parts) == 1 else Alt(tuple(parts))
            idx = interned[key] = len(built)
            built.append(nd)
        result[id(node)] = idx
    return built[result[id(trie)]]


# ---------------------------------------------------------------------------
# Patterns (ECMA-262 flavour, search semantics)


def _translate_ecma(pattern: str) -> str:
    """ECMA-262 -> Python ``re`` for the differences that matter here.

    ``\\d`` and ``\\w`` are ASCII-only in ECMA-262 (Python's are Unicode); ``\\D``/``\\W``
    likewise; ``\\cX`` control escapes, ``(?<name>`` groups and ``\\uXXXX`` escapes
    are rewritten; ``$`` only ever means end of input.
    """
    out = []
    i = 0
    in_class = False
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            d = pattern[i + 1]
            if d == "d":
                out.append("0-9" if in_class else "[0-9]")
            elif d == "w":
                out.append("A-Za-z0-9_" if in_class else "[A-Za-z0-9_]")
            elif d == "D" and not in_class:
                out.append("[^0-9]")
            elif d == "W" and not in_class:
                out.append("[^A-Za-z0-9_]")
            elif d == "c" and i + 2 < n and pattern[i + 2].isalpha():
                out.append("\\x%02x" % (ord(pattern[i + 2]) % 32))
                i += 3
                continue
            elif d in "pP" and i + 2 < n and pattern[i + 2] == "{":
                end = pattern.find("}", i)
                if end < 0:
                    raise ConstraintError("bad \\p{...} escape in pattern", str(i))
                body = _category_class(pattern[i + 3 : end])
                if d == "P" and in_class:
                    raise ConstraintError("\\P{...} inside a character class is not supported", str(i))
                out.append(body if in_class else ("[^" if d == "P" else "[") + body + "]")
                i = end + 1
                continue
            elif d == "u" and i + 2 < n and pattern[i + 2] == "{":
                end = pattern.find("}", i)
                if end < 0:
                    raise ConstraintError("bad \\u{...} escape in pattern", str(i))
                out.append(f"\\U{int(pattern[i + 3 : end], 16):08x}")
                i = end + 1
                continue
            else:
                out.append(c + d)
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            if pattern.startswith("^", i + 1):
                out.append("^")
                i += 1
            if pattern.startswith("]", i + 1):  # ECMA: [] is empty, []...] not a literal ]
                out.append("\\]")
                i += 1
        elif c == "(" and pattern.startswith("(?<", i) and not pattern.startswith(("(?<=", "(?<!"), i):
            out.append("(?P<")
            i += 3
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


_CATEGORY_NAMES = {
    "Letter": "L", "Cased_Letter": "LC", "Uppercase_Letter": "Lu", "Lowercase_Letter": "Ll",
    "Titlecase_Letter": "Lt", "Modifier_Letter": "Lm", "Other_Letter": "Lo", "Mark": "M",
    "Nonspacing_Mark": "Mn", "Spacing_Mark": "Mc", "Enclosing_Mark": "Me", "Number": "N",
    "Decimal_Number": "Nd", "digit": "Nd", "Letter_Number": "Nl", "Other_Number": "No",
    "Punctuation": "P", "punct": "P", "Connector_Punctuation": "Pc", "Dash_Punctuation": "Pd",
    "Open_Punctuation": "Ps", "Close_Punctuation": "Pe", "Initial_Punctuation": "Pi",
    "Final_Punctuation": "Pf", "Other_Punctuation": "Po", "Symbol": "S", "Math_Symbol": "Sm",
    "Currency_Symbol": "Sc", "Modifier_Symbol": "Sk", "Other_Symbol": "So", "Separator": "Z",
    "Space_Separator": "Zs", "Line_Separator": "Zl", "Paragraph_Separator": "Zp", "Other": "C",
    "Control": "Cc", "cntrl": "Cc", "Format": "Cf", "Surrogate": "Cs", "Private_Use": "Co",
    "Unassigned": "Cn",
}


@lru_cache(maxsize=64)
def _category_class(name: str) -> str:
    """``\\p{name}`` (a Unicode general category) as the body of a Python class."""
    import unicodedata

    for prefix in ("General_Category=", "gc="):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    cat = _CATEGORY_NAMES.get(name, name)
    valid = {v for v in _CATEGORY_NAMES.values()} | {c[0] for c in _CATEGORY_NAMES.values()}
    if cat not in valid:
        raise ConstraintError(f"Unicode property \\p{{{name}}} is not supported (general categories only)")
    want = {"Lu", "Ll", "Lt"} if cat == "LC" else None
    ranges: list[list[int]] = []
    for cp in range(MAX_CODEPOINT + 1):
        c = unicodedata.category(chr(cp))
        if (c in want) if want else (c == cat or c[0] == cat):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    return "".join(f"\\U{lo:08x}" + (f"-\\U{hi:08x}" if hi > lo else "") for lo, hi in ranges)


def _split_top_alternatives(pattern: str) -> list[str]:
    parts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    parts.append(pattern[start:])
    return parts


def _ends_with_anchor(p: str) -> bool:
    if not p.endswith("$"):
        return False
    k = len(p) - 2
    slashes = 0
    while k >= 0 and p[k] == "\\":
        slashes += 1
        k -= 1
    return slashes % 2 == 0


@lru_cache(maxsize=1024)
def pattern_node(pattern: str) -> Node:
    """The decoded strings in which ECMA-262 ``pattern`` finds a match (``re.search``).

    ``^`` and ``$`` are honoured at the start/end of each top-level alternative;
    anchors elsewhere, lookarounds and backreferences are refused.
    """
    from .regex import parse_regex

    alts = []
    for part in _split_top_alternatives(pattern):
        start = part.startswith("^")
        end = _ends_with_anchor(part)
        body = part[1 if start else 0 : len(part) - 1 if end else len(part)]
        # a group wrapping the whole alternative with anchors inside: ^(...)$ handled above
        try:
            node = parse_regex(_translate_ecma(body))
        except ConstraintError as e:
            raise ConstraintError(f"unsupported pattern {pattern!r}: {e.message}") from e
        except (NotImplementedError, re.error, ValueError) as e:
            raise ConstraintError(f"unsupported pattern {pattern!r}: {e}") from e
        alts.append(mk_seq(EMPTY if start else ANY_STRING, node, EMPTY if end else ANY_STRING))
    return mk_alt(*alts)


# ---------------------------------------------------------------------------
# Formats (RFC 3339, 5321, 1123, 3986, 4122, 6570, 6901)

_DEC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_DEC_OCTET}(?:\.{_DEC_OCTET}){{3}}"
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"


def _ipv6() -> str:
    """RFC 3986 IPv6address, line by line."""
    tails = [
        rf"(?:{_H16}:){{4}}{_LS32}",
        rf"(?:{_H16}:){{3}}{_LS32}",
        rf"(?:{_H16}:){{2}}{_LS32}",
        rf"{_H16}:{_LS32}",
        _LS32,
        _H16,
        "",
    ]
    alts = [rf"(?:{_H16}:){{6}}{_LS32}", rf"::(?:{_H16}:){{5}}{_LS32}"]
    for j, tail in enumerate(tails):
        head = rf"(?:(?:{_H16}:){{0,{j}}}{_H16})?" if j else rf"(?:{_H16})?"
        alts.append(rf"{head}::{tail}")
    return "(?:" + "|".join(alts) + ")"


_IPV6 = _ipv6()
_DAY31 = r"(?:0[1-9]|[12][0-9]|3[01])"
_DAY30 = r"(?:0[1-9]|[12][0-9]|30)"
_LEAP_YEAR = r"(?:[0-9]{2}(?:[02468][48]|[13579][26]|[2468]0)|(?:[02468][048]|[13579][26])00)"
_DATE = (
    rf"(?:[0-9]{{4}}-(?:(?:0[13578]|1[02])-{_DAY31}|(?:0[469]|11)-{_DAY30}|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    rf"|{_LEAP_YEAR}-02-29)"
)
_OFFSET = r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
# A leap second (:60) is accepted at 23:59 UTC only (Z, +00:00, -00:00): exact leap
# seconds with other offsets would need ~1,500 automaton states per lexeme.
_TIME = (
    rf"(?:(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?{_OFFSET})"
    r"|23:59:60(?:\.[0-9]+)?(?:[Zz]|[+-]00:00))"
)
_DURATION = (
    r"P(?:(?:[0-9]+D|[0-9]+M(?:[0-9]+D)?|[0-9]+Y(?:[0-9]+M(?:[0-9]+D)?)?)(?:T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S))?"
    r"|T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)|[0-9]+W)"
)
_LD = "A-Za-z0-9"
# RFC 1123 labels; a label with "--" in positions 3-4 is an IDNA A-label ("xn--"),
# whose Punycode a regex cannot check, so such labels are refused. The 253-character
# total length is not checked.
_LABEL = rf"[{_LD}](?:|[{_LD}]|[{_LD}-][{_LD}]|[{_LD}-][{_LD}-][{_LD}]|[{_LD}-](?:[{_LD}][{_LD}-]|-[{_LD}])[{_LD}-]{{0,58}}[{_LD}])"
_HOSTNAME = rf"{_LABEL}(?:\.{_LABEL})*"
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_EMAIL = (
    rf"(?:{_ATEXT}+(?:\.{_ATEXT}+)*|\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*\")"
    rf"@(?:[{_LD}](?:[{_LD}-]*[{_LD}])?(?:\.[{_LD}](?:[{_LD}-]*[{_LD}])?)*|\[(?:{_IPV4}|IPv6:{_IPV6})\])"
)
_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"

# RFC 3986
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"


def _uri_parts(extra: str = "") -> dict[str, str]:
    """RFC 3986 productions; ``extra`` adds characters (IRI's ucschar) to unreserved."""
    unres = _UNRESERVED + extra
    pchar = rf"(?:[{unres}{_SUB_DELIMS}:@]|{_PCT})"
    seg = rf"{pchar}*"
    seg_nz = rf"{pchar}+"
    seg_nz_nc = rf"(?:[{unres}{_SUB_DELIMS}@]|{_PCT})+"
    ip_future = rf"[vV][0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+"
    host = rf"(?:\[(?:{_IPV6}|{ip_future})\]|{_IPV4}|(?:[{unres}{_SUB_DELIMS}]|{_PCT})*)"
    userinfo = rf"(?:[{unres}{_SUB_DELIMS}:]|{_PCT})*"
    authority = rf"(?:{userinfo}@)?{host}(?::[0-9]*)?"
    query = rf"(?:{pchar}|[/?]" + ("|[\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]" if extra else "") + ")*"
    fragment = rf"(?:{pchar}|[/?])*"
    path_abempty = rf"(?:/{seg})*"
    path_absolute = rf"/(?:{seg_nz}(?:/{seg})*)?"
    path_rootless = rf"{seg_nz}(?:/{seg})*"
    path_noscheme = rf"{seg_nz_nc}(?:/{seg})*"
    hier = rf"(?://{authority}{path_abempty}|{path_absolute}|{path_rootless}|)"
    rel = rf"(?://{authority}{path_abempty}|{path_absolute}|{path_noscheme}|)"
    scheme = r"[A-Za-z][A-Za-z0-9+\-.]*"
    uri = rf"{scheme}:{hier}(?:\?{query})?(?:#{fragment})?"
    relative = rf"{rel}(?:\?{query})?(?:#{fragment})?"
    return {"uri": uri, "uri-reference": rf"(?:{uri}|{relative})"}


_UCSCHAR = (
    "\u00a0-\ud7ff\uf900-\ufdcf\ufdf0-\uffef\U00010000-\U0001fffd\U00020000-\U0002fffd"
    "\U00030000-\U0003fffd\U00040000-\U0004fffd\U00050000-\U0005fffd\U00060000-\U0006fffd"
    "\U00070000-\U0007fffd\U00080000-\U0008fffd\U00090000-\U0009fffd\U000a0000-\U000afffd"
    "\U000b0000-\U000bfffd\U000c0000-\U000cfffd\U000d0000-\U000dfffd\U000e1000-\U000efffd"
)
_URI = _uri_parts()
_IRI = _uri_parts(_UCSCHAR)
_JSON_POINTER = r"(?:/(?:[^/~]|~[01])*)*"
_REL_JSON_POINTER = rf"(?:0|[1-9][0-9]*)(?:#|{_JSON_POINTER})"
_URI_TEMPLATE_LITERAL = (
    r"(?:[\x21\x23\x24\x26-\x3b\x3d\x3f-\x5b\x5d\x5f\x61-\x7a\x7e" + _UCSCHAR
    + "\ue000-\uf8ff\U000f0000-\U000ffffd\U00100000-\U0010fffd]|%[0-9A-Fa-f]{2})"
)
_VARNAME = r"(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2})(?:\.?(?:[A-Za-z0-9_]|%[0-9A-Fa-f]{2}))*"
_VARSPEC = rf"{_VARNAME}(?::[1-9][0-9]{{0,3}}|\*)?"
_URI_TEMPLATE = rf"(?:{_URI_TEMPLATE_LITERAL}|\{{[+#./;?&=,!@|]?{_VARSPEC}(?:,{_VARSPEC})*\}})*"

# format "regex": ECMA-262 pattern syntax (letter escapes as ECMA-262 defines them, so
# no Python-only ``\a``/``\Z``; any other character may be escaped, as Annex B and most
# validators allow; no Python-only groups or inline flags). Groups nest without bound, which no regular
# language can check: nesting is followed _REGEX_DEPTH deep, and anything is accepted
# inside a deeper group (an over-approximation only there). Also over-approximated:
# ``{``, ``}`` and ``]`` as literals (Annex B), quantifier bounds, class range order and
# backreference targets.
_REGEX_DEPTH = 3
_REGEX_NAME = r"[A-Za-z_$][A-Za-z0-9_$]*"
_REGEX_CHAR_ESCAPE = (
    r"(?:[fnrtv0dDsSwW]|c[A-Za-z]|x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|u\{[0-9A-Fa-f]+\}"
    r"|[pP]\{[A-Za-z0-9_=]+\}|[^0-9A-Za-z])"
)
_REGEX_ATOM_ESCAPE = rf"\\(?:{_REGEX_CHAR_ESCAPE}|[1-9][0-9]*|k<{_REGEX_NAME}>)"
_REGEX_CLASS = rf"\[\^?(?:[^\\\]]|\\(?:{_REGEX_CHAR_ESCAPE}|[bB0-9-]))*\]"
_REGEX_QUANTIFIER = r"(?:[*+?]|\{[0-9]+(?:,[0-9]*)?\})\??"
_REGEX_GROUP_OPEN = rf"\((?:\?(?::|=|!|<=|<!|<{_REGEX_NAME}>))?"


def _regex_syntax(depth: int) -> str:
    """ECMA-262 pattern syntax with groups nested at most ``depth`` deep (then anything)."""
    if depth == 0:
        return r"[\s\S]*"
    inner = _regex_syntax(depth - 1)
    atom = rf"(?:[^^$\\.*+?()\[|]|\.|{_REGEX_ATOM_ESCAPE}|{_REGEX_CLASS}|{_REGEX_GROUP_OPEN}{inner}\))"
    term = rf"(?:\^|\$|\\[bB]|{atom}(?:{_REGEX_QUANTIFIER})?)"
    return rf"(?:{term}|\|)*"


FORMAT_REGEXES: dict[str, str] = {
    "date": _DATE,
    "time": _TIME,
    "date-time": rf"{_DATE}[Tt]{_TIME}",
    "duration": _DURATION,
    "email": _EMAIL,
    "hostname": _HOSTNAME,
    "ipv4": _IPV4,
    "ipv6": _IPV6,
    "uuid": _UUID,
    "uri": _URI["uri"],
    "uri-reference": _URI["uri-reference"],
    "iri": _IRI["uri"],
    "iri-reference": _IRI["uri-reference"],
    "json-pointer": _JSON_POINTER,
    "relative-json-pointer": _REL_JSON_POINTER,
    "uri-template": _URI_TEMPLATE,
    "regex": _regex_syntax(_REGEX_DEPTH),
}

# Formats the specifications define but a regex cannot check: refused, not ignored.
UNSUPPORTED_FORMATS = frozenset({"idn-email", "idn-hostname"})
# Formats a regular language can only over-approximate (recorded as a note when used).
APPROXIMATE_FORMATS = frozenset({"regex"})


@lru_cache(maxsize=64)
def format_node(name: str) -> Node | None:
    """The decoded strings valid for ``format``; None for an unknown (ignored) format.

    Raises ``ConstraintError`` for a known format that cannot be checked by a regex.
    """
    from .regex import parse_regex

    if name in UNSUPPORTED_FORMATS:
        raise ConstraintError(f"format {name!r} cannot be enforced by a regular expression")
    text = FORMAT_REGEXES.get(name)
    if text is None:
        return None
    return parse_regex(text)
