"""String languages for the JSON Schema frontend: JSON escaping, string sets, patterns.

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

Intersections and complements of such nodes are built in ``derivatives``. ECMA-262
patterns (``pattern``, ``patternProperties``) are translated here too.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from functools import lru_cache

from .automata.compiler import LiteralAlt
from .automata.derivatives import ANY_STRING, in_chars, materialize, mk_alt, mk_repeat, mk_seq
from .errors import ConstraintError, check_deadline
from .format_lexemes import LEXEME_LIMITS, lexeme_for
from .regex_ast import EMPTY, MAX_CODEPOINT, NOTHING, Alt, Chars, Node, Repeat, Seq, chars, literal

QUOTE = literal('"')

# ---------------------------------------------------------------------------
# JSON string encoding

HEX_CLASS = [chars((0x30 + v, 0x30 + v)) if v < 10 else chars((0x61 + v - 10, 0x61 + v - 10), (0x41 + v - 10, 0x41 + v - 10)) for v in range(16)]


def _hex_digits(lo: int, hi: int) -> Node:
    return mk_alt(*(HEX_CLASS[v] for v in range(lo, hi + 1)))


def _split_span(a: int, la: int, b: int, lb: int, lmin: int, lmax: int, edge, middle) -> Node:
    """The numbers from ``(a, la)`` to ``(b, lb)`` (high part, low part in ``[lmin, lmax]``):
    ``edge(h, l_lo, l_hi)`` for a high part with only some low parts (the first, then the
    last), ``middle(h_lo, h_hi)`` for the high parts in between, with all of them."""
    if a == b:
        return edge(a, la, lb)
    parts = []
    if la != lmin:
        parts.append(edge(a, la, lmax))
        a += 1
    if lb != lmax:
        parts.append(edge(b, lmin, lb))
        b -= 1
    if a <= b:
        parts.append(middle(a, b))
    return mk_alt(*parts)


def _hex_same_width(lo: int, hi: int, width: int) -> Node:
    """Hex spellings (either case) of the ``width``-digit numbers in ``[lo, hi]``."""
    if width == 0:
        return EMPTY
    base = 16 ** (width - 1)
    return _split_span(
        lo // base, lo % base, hi // base, hi % base, 0, base - 1,
        lambda h, l_lo, l_hi: mk_seq(_hex_digits(h, h), _hex_same_width(l_lo, l_hi, width - 1)),
        lambda h_lo, h_hi: mk_seq(_hex_digits(h_lo, h_hi),
                                  mk_repeat(_hex_digits(0, 15), width - 1, width - 1)))


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
    short = [ord(esc[1]) for c, esc in _SHORT.items() if in_chars(cs, c)]
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

    def pair(h_lo, h_hi, l_lo, l_hi):
        return mk_seq(_hex_same_width(h_lo, h_hi, 4), _U, _hex_same_width(l_lo, l_hi, 4))

    v, w = lo - 0x10000, hi - 0x10000
    return _split_span(0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF),
                       0xD800 + (w >> 10), 0xDC00 + (w & 0x3FF), 0xDC00, 0xDFFF,
                       lambda h, l_lo, l_hi: pair(h, h, l_lo, l_hi),
                       lambda h_lo, h_hi: pair(h_lo, h_hi, 0xDC00, 0xDFFF))


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
            out = [i for i in map(go, n.items) if i != NOTHING]  # order kept
            r = NOTHING if not out else out[0] if len(out) == 1 else Alt(tuple(out))
        elif isinstance(n, Repeat):
            r = mk_repeat(go(n.item), n.min, n.max)
        else:
            raise ConstraintError("a JSON string constraint cannot contain raw bytes")
        memo[id(n)] = (r, n)
        return r

    return go(node)


# printable ASCII but for " \ and / (each of which has a second, escaped spelling)
_ONE_SPELLING = re.compile(r"[\x20\x21\x23-\x2e\x30-\x5b\x5d-\x7e]*")
LITERAL_SET_MIN = 2  # a string set this large, all of one spelling, becomes a trie lexeme (linear, no subset construction)


_LEXEMES: OrderedDict = OrderedDict()  # (decoded, limits) -> lexeme node, across compiles
_LEXEMES_SIZE = 256  # recurring formats and patterns; every entry is more for the full GC to walk
_lexemes_lock = threading.Lock()


def json_string_node(decoded, max_states: int = 2000, max_size: int = 20_000) -> Node:
    """The lexeme (quotes included) for the JSON strings whose decoded value is in ``decoded``.

    Kept across compiles (bounded, least recently used out): a ``format``'s or a common
    pattern's lexeme took ~2.5 ms (``uri``) to escape again in every schema using it, and
    the same node object finds its DFA in ``terminal_dfa``'s cache by identity.
    """
    key = (decoded, max_states, max_size)
    with _lexemes_lock:
        got = _LEXEMES.get(key)
        if got is not None:
            _LEXEMES.move_to_end(key)
            return got
    got = lexeme_for(decoded) if (max_states, max_size) == LEXEME_LIMITS else None  # a format's, shipped
    if got is None:
        got = build_json_string_node(decoded, max_states, max_size)
    with _lexemes_lock:
        _LEXEMES[key] = got
        if len(_LEXEMES) > _LEXEMES_SIZE:
            _LEXEMES.popitem(last=False)
    return got


def build_json_string_node(decoded, max_states: int, max_size: int) -> Node:
    """``json_string_node`` built afresh: no cache, no shipped format lexeme."""
    if isinstance(decoded, LiteralAlt) and all(_ONE_SPELLING.fullmatch(w) for w in decoded.words):
        # every character has one JSON spelling: the JSON texts are the quoted words
        return LiteralAlt(tuple(f'"{w}"' for w in decoded.words))
    inner = materialize(decoded, max_states, max_size)
    if inner == NOTHING:
        return NOTHING
    return mk_seq(QUOTE, jsonify(inner), QUOTE)


@lru_cache(maxsize=1)
def any_string_lexeme() -> Node:
    return json_string_node(ANY_STRING)


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
            elif d in "pPu" and pattern.startswith("{", i + 2):
                end = pattern.find("}", i)
                if end < 0:
                    raise ConstraintError(f"bad \\{d.lower()}{{...}} escape in pattern", str(i))
                if d == "u":
                    out.append(f"\\U{int(pattern[i + 3 : end], 16):08x}")
                else:
                    body = _category_class(pattern[i + 3 : end])
                    if d == "P" and in_class:
                        raise ConstraintError("\\P{...} inside a character class is not supported", str(i))
                    out.append(body if in_class else ("[^" if d == "P" else "[") + body + "]")
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

    name = name.removeprefix("General_Category=").removeprefix("gc=")
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
    """``p`` ends with a ``$`` that is not escaped (an even run of backslashes before it)."""
    return p.endswith("$") and (len(p) - 1 - len(p[:-1].rstrip("\\"))) % 2 == 0


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
