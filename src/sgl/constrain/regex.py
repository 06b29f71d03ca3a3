"""Python ``re`` syntax -> ``regex_ast``, with ``re.fullmatch`` semantics.

The pattern is parsed by the standard library's own parser (``re._parser``), so
the syntax accepted is exactly Python's. Its parse tree is then lowered to the
character-level AST:

* ``\\d``, ``\\w``, ``\\s`` and their negations get Python's Unicode meaning (or
  the ASCII one under ``re.ASCII``). The code-point sets are computed once per
  process by running the ``re`` engine itself over a string of every code point,
  so they agree with ``re`` by construction.
* Case-insensitive literals and classes are computed the same way (the engine
  scans all code points with the class under ``re.IGNORECASE``), which
  reproduces Python's folding rules exactly, quirks included. Results are
  cached per class.
* Lazy quantifiers equal greedy ones: only the set of whole matches matters.
* ``^``/``\\A`` at the start and ``$``/``\\Z`` at the end are no-ops (a constraint
  always matches the whole text; ``re.fullmatch('a$', 'a\\n')`` is ``None``).
  Anywhere else, and for lookarounds, backreferences, conditionals, ``\\b``,
  ``\\B``, atomic groups and possessive quantifiers, ``ConstraintError`` names
  the construct and its character offset.
"""

from __future__ import annotations

import _sre
import functools
import itertools
import re
from collections import defaultdict
from re import _constants as _c
from re import _parser as _sre_parse

from .automata.compiler import LiteralAlt
from .errors import ConstraintError
from .grammar import Grammar, Rule, Terminal
from .regex_ast import (
    EMPTY,
    MAX_CODEPOINT,
    Alt,
    Chars,
    Node,
    Repeat,
    negate,
    normalize_ranges,
    nullable,
    seq,
)

_IGNORECASE = _c.SRE_FLAG_IGNORECASE
_DOTALL = _c.SRE_FLAG_DOTALL
_ASCII = _c.SRE_FLAG_ASCII
_VERBOSE = _c.SRE_FLAG_VERBOSE
_TYPE_FLAGS = _c.SRE_FLAG_ASCII | _c.SRE_FLAG_LOCALE | _c.SRE_FLAG_UNICODE

_BEGIN_ANCHORS = {_c.AT_BEGINNING, _c.AT_BEGINNING_STRING}
_END_ANCHORS = {_c.AT_END, _c.AT_END_STRING}

_CATEGORY_ESCAPES = {
    _c.CATEGORY_DIGIT: r"\d",
    _c.CATEGORY_NOT_DIGIT: r"\D",
    _c.CATEGORY_SPACE: r"\s",
    _c.CATEGORY_NOT_SPACE: r"\S",
    _c.CATEGORY_WORD: r"\w",
    _c.CATEGORY_NOT_WORD: r"\W",
}

# construct kind -> how to name it in an error message
_UNSUPPORTED = {
    "lookahead": "lookahead assertion (?=...)",
    "neg_lookahead": "negative lookahead assertion (?!...)",
    "lookbehind": "lookbehind assertion (?<=...)",
    "neg_lookbehind": "negative lookbehind assertion (?<!...)",
    "backref": "backreference",
    "conditional": "conditional group (?(id)yes|no)",
    "boundary": r"word boundary \b",
    "nonboundary": r"non-boundary \B",
    "atomic": "atomic group (?>...)",
    "possessive": "possessive quantifier",
}


def parse_regex(pattern: str, flags: int = 0) -> Node:
    """Parse a Python ``re`` pattern into a ``regex_ast`` node.

    The node's language is ``{s : re.fullmatch(pattern, s, flags)}``. Raises
    ``ConstraintError`` (location ``"offset N"``) for invalid syntax and for
    constructs that are not regular or need context (see the module docstring).
    """
    if not isinstance(pattern, str):
        raise ConstraintError("a regex constraint must be a str pattern")
    if len(pattern) > _WORD_LIST_MIN and not flags and "|" in pattern and _WORD_LIST.fullmatch(pattern):
        # ``one|two|three|...`` with thousands of words: straight to a trie of them
        # (sre's parse and the lowering would cost seconds per 10,000 words)
        return LiteralAlt(tuple(pattern.split("|")))
    counts: dict[int, int] = {}
    try:
        try:
            parsed = _sre_parse.parse(pattern, flags)
        except OverflowError:  # a count past sre's 2**32 - 2: parse it with stand-ins
            pattern, counts = _big_counts(pattern)
            parsed = _sre_parse.parse(pattern, flags)
    except re.error as e:
        raise ConstraintError(f"invalid regex: {e.msg}", _offset(e.pos)) from None
    except (ValueError, OverflowError, RecursionError) as e:
        raise ConstraintError(f"invalid regex: {e}") from None
    return _Lowering(pattern, parsed.state.flags, counts).lower(parsed)


_COUNT_OR_SKIP = re.compile(r"\\.|\[\^?\]?(?:\\.|[^\]\\])*\]|\{(\d*)(,?)(\d*)\}", re.S)


def _big_counts(pattern: str) -> tuple[str, dict[int, int]]:
    """``pattern`` with every repetition count sre cannot hold replaced by a stand-in
    below its limit (in the same order, and not written elsewhere in the pattern), and
    the counts the stand-ins mean. Escapes and classes are skipped, so only counts are
    touched; the counts are exact in the grammar (``counters``)."""
    big = sorted({int(n) for m in _COUNT_OR_SKIP.finditer(pattern) if m.group(0)[0] == "{"
                  for n in (m.group(1), m.group(3)) if n and int(n) >= _c.MAXREPEAT})
    written = {int(n) for n in re.findall(r"\d+", pattern)}
    stand_ins = list(itertools.islice((n for n in itertools.count(_c.MAXREPEAT - 1, -1) if n not in written), len(big)))[::-1]
    of = dict(zip(big, stand_ins, strict=True))

    def stand_in(n: str) -> str:
        return str(of.get(int(n), n)) if n else ""

    def swap(m: re.Match) -> str:
        if m.group(0)[0] != "{":
            return m.group(0)
        lo, comma, hi = m.groups("")
        return "{" + stand_in(lo) + comma + stand_in(hi) + "}"

    return _COUNT_OR_SKIP.sub(swap, pattern), {v: k for k, v in of.items()}


def regex_grammar(pattern: str, flags: int = 0) -> Grammar:
    """A one-terminal grammar for ``pattern``: ``start -> T`` with ``T`` the parsed node.

    When the pattern also matches the empty string, ``start -> ()`` is added so a
    lexer that never emits empty lexemes still accepts the empty text.
    """
    node = parse_regex(pattern, flags)
    rules = [Rule("start", ("T",))]
    if nullable(node):
        rules.append(Rule("start", ()))
    g = Grammar("start", rules, {"T": Terminal("T", node)}, source=pattern)
    g.validate()
    return g


_WORD_LIST_MIN = 10_000
_WORD_LIST = re.compile(r"[^\\\[\](){}.*+?^$|]*(?:\|[^\\\[\](){}.*+?^$|]*)*")


def _offset(pos: int | None) -> str | None:
    return None if pos is None else f"offset {pos}"


# ---------------------------------------------------------------------------
# Lowering the parse tree


class _Lowering:
    def __init__(self, pattern: str, flags: int, counts: dict[int, int]) -> None:
        self.pattern = pattern
        self.global_flags = flags
        self.anchors_seen = 0
        self.counts = counts  # stand-in -> the count it means (``_big_counts``)
        self._positions: dict[str, list[int]] | None = None

    def lower(self, parsed) -> Node:
        return self.items(list(parsed), self.global_flags, True, True)

    # -- errors -------------------------------------------------------------

    def refuse(self, kind: str, index: int = 0, detail: str = "") -> ConstraintError:
        if self._positions is None:
            self._positions = _construct_positions(self.pattern, bool(self.global_flags & _VERBOSE))
        found = self._positions.get(kind, [])
        pos = found[index] if index < len(found) else None
        what = _UNSUPPORTED.get(kind, kind)
        msg = detail or f"{what} is not supported in a regex constraint"
        return ConstraintError(msg, _offset(pos), keyword=kind)

    # -- structure ----------------------------------------------------------

    def items(self, items: list, flags: int, at_start: bool, at_end: bool) -> Node:
        """A sequence; ``at_start``/``at_end`` say whether it touches the pattern's edges."""
        n = len(items)
        # starts[i]: only begin-anchors precede item i (and we are at the pattern start)
        starts, ok = [], at_start
        for op, av in items:
            starts.append(ok)
            ok = ok and op is _c.AT and av in _BEGIN_ANCHORS
        ends, ok = [False] * n, at_end
        for i in range(n - 1, -1, -1):
            ends[i] = ok
            op, av = items[i]
            ok = ok and op is _c.AT and av in _END_ANCHORS
        return seq(
            *[self.item(op, av, flags, starts[i], ends[i]) for i, (op, av) in enumerate(items)]
        )

    def item(self, op, av, flags: int, at_start: bool, at_end: bool) -> Node:
        if op is _c.LITERAL:
            return self.literal(av, flags)
        if op is _c.NOT_LITERAL:
            return negate(self.literal(av, flags))
        if op is _c.ANY:
            if flags & _DOTALL:
                return Chars(((0, MAX_CODEPOINT),))
            return negate(Chars(((10, 10),)))
        if op is _c.IN:
            return self.char_class(av, flags)
        if op is _c.BRANCH:
            return Alt(tuple(self.items(list(b), flags, at_start, at_end) for b in av[1]))
        if op is _c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            return self.items(
                list(sub), _combine_flags(flags, add_flags, del_flags), at_start, at_end
            )
        if op is _c.MAX_REPEAT or op is _c.MIN_REPEAT:
            lo, hi, sub = av
            hi = None if hi is _c.MAXREPEAT or hi == _c.MAXREPEAT else self.counts.get(int(hi), int(hi))
            lo = self.counts.get(int(lo), int(lo))
            # an anchor inside a repeat is only at the edge if it cannot run twice
            once = hi is not None and hi <= 1
            body = self.items(list(sub), flags, at_start and once, at_end and once)
            return Repeat(body, int(lo), hi)
        if op is _c.AT:
            return self.anchor(av, at_start, at_end)
        kind = _kind_of(op, av)
        raise self.refuse(kind)

    def anchor(self, av, at_start: bool, at_end: bool) -> Node:
        index = self.anchors_seen
        if av in _BEGIN_ANCHORS or av in _END_ANCHORS:
            self.anchors_seen += 1
        if av in _BEGIN_ANCHORS and at_start:
            return EMPTY
        if av in _END_ANCHORS and at_end:
            return EMPTY
        if av is _c.AT_BOUNDARY:
            raise self.refuse("boundary")
        if av is _c.AT_NON_BOUNDARY:
            raise self.refuse("nonboundary")
        where = "start" if av in _BEGIN_ANCHORS else "end"
        name = {
            _c.AT_BEGINNING: "^",
            _c.AT_BEGINNING_STRING: r"\A",
            _c.AT_END: "$",
            _c.AT_END_STRING: r"\Z",
        }.get(av, str(av))
        raise self.refuse(
            "anchor",
            index,
            f"anchor {name} is only supported at the very {where} of a regex constraint",
        )

    # -- characters ---------------------------------------------------------

    def literal(self, code: int, flags: int) -> Chars:
        if flags & _IGNORECASE and _is_cased(code, flags):
            return _engine_class(((_c.LITERAL, code),), False, _engine_flags(flags))
        return Chars(((code, code),))

    def char_class(self, items: list, flags: int) -> Chars:
        negated = bool(items) and items[0][0] is _c.NEGATE
        body = tuple(items[1:] if negated else items)
        if flags & _IGNORECASE and any(op is not _c.CATEGORY for op, _ in body):
            return _engine_class(body, negated, _engine_flags(flags))
        ranges: list[tuple[int, int]] = []
        for op, av in body:
            if op is _c.LITERAL:
                ranges.append((av, av))
            elif op is _c.RANGE:
                ranges.append((av[0], av[1]))
            elif op is _c.CATEGORY:
                ranges.extend(_category(av, bool(flags & _ASCII)))
            else:  # pragma: no cover - the parser emits nothing else in a set
                raise ConstraintError(f"unsupported character set item {op}")
        cs = Chars(normalize_ranges(ranges))
        return negate(cs) if negated else cs


def _kind_of(op, av) -> str:
    if op is _c.ASSERT:
        return "lookahead" if av[0] >= 0 else "lookbehind"
    if op is _c.ASSERT_NOT:
        return "neg_lookahead" if av[0] >= 0 else "neg_lookbehind"
    if op is _c.GROUPREF:
        return "backref"
    if op is _c.GROUPREF_EXISTS:
        return "conditional"
    if op is getattr(_c, "ATOMIC_GROUP", None):
        return "atomic"
    if op is getattr(_c, "POSSESSIVE_REPEAT", None):
        return "possessive"
    return str(op)


def _combine_flags(flags: int, add_flags: int, del_flags: int) -> int:
    if add_flags & _TYPE_FLAGS:
        flags &= ~_TYPE_FLAGS
    return (flags | add_flags) & ~del_flags


def _is_cased(code: int, flags: int) -> bool:
    return bool((_sre.ascii_iscased if flags & _ASCII else _sre.unicode_iscased)(code))


def _engine_flags(flags: int) -> int:
    return _IGNORECASE | (_ASCII if flags & _ASCII else 0)


# ---------------------------------------------------------------------------
# Code-point sets computed by the re engine itself


@functools.cache
def _all_code_points() -> str:
    """Every code point 0..0x10FFFF once, in order (surrogates included)."""
    import numpy as np

    cps = np.arange(MAX_CODEPOINT + 1, dtype="<u4").tobytes()
    return cps.decode("utf-32-le", "surrogatepass")


def _runs(pattern: str, flags: int) -> tuple[tuple[int, int], ...]:
    """The code points matched by a one-character ``pattern``, as ranges."""
    rx = re.compile(f"(?:{pattern})+", flags)
    return tuple((m.start(), m.end() - 1) for m in rx.finditer(_all_code_points()))


@functools.cache
def _category(code, ascii_only: bool) -> tuple[tuple[int, int], ...]:
    """Python's ``\\d``/``\\w``/``\\s`` (and negations) as code-point ranges."""
    return _runs(_CATEGORY_ESCAPES[code], _ASCII if ascii_only else 0)


def _class_body(items: tuple) -> str:
    out = []
    for op, av in items:
        if op is _c.LITERAL:
            out.append(f"\\U{av:08x}")
        elif op is _c.RANGE:
            out.append(f"\\U{av[0]:08x}-\\U{av[1]:08x}")
        elif op is _c.CATEGORY:
            out.append(_CATEGORY_ESCAPES[av])
        else:  # pragma: no cover
            raise ConstraintError(f"unsupported character set item {op}")
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _engine_class(items: tuple, negated: bool, flags: int) -> Chars:
    """The set ``re`` matches with ``[items]`` (or ``[^items]``) under ``flags``.

    Scans the negated class: a sparse class has a dense complement, and dense
    runs are what the engine finds quickly.
    """
    outside = _runs(f"[^{_class_body(items)}]", flags)
    cs = Chars(normalize_ranges(outside))
    return cs if negated else negate(cs)


# ---------------------------------------------------------------------------
# Locating constructs in the pattern text (the parse tree has no positions)


_QUANT_BRACES = re.compile(r"\{\d*(?:,\d*)?\}")
_GROUP_KINDS = (
    ("(?<=", "lookbehind"),
    ("(?<!", "neg_lookbehind"),
    ("(?=", "lookahead"),
    ("(?!", "neg_lookahead"),
    ("(?P=", "backref"),
    ("(?(", "conditional"),
    ("(?>", "atomic"),
)


def _construct_positions(pattern: str, verbose: bool) -> dict[str, list[int]]:
    """Offsets of anchors and unsupported constructs, per kind, in text order."""
    out: dict[str, list[int]] = defaultdict(list)
    i, n = 0, len(pattern)
    after_quantifier = False
    while i < n:
        c = pattern[i]
        quant = False
        if verbose and c in " \t\n\r\v\f":
            i += 1
            continue
        if verbose and c == "#":
            j = pattern.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "\\":
            i = _scan_escape(pattern, i, out)
        elif c == "[":
            i = _skip_class(pattern, i)
        elif c == "(":
            for prefix, kind in _GROUP_KINDS:
                if pattern.startswith(prefix, i):
                    out[kind].append(i)
                    break
            i += 1
        elif c in "^$":
            out["anchor"].append(i)
            i += 1
        elif c in "*+?" or (c == "{" and _QUANT_BRACES.match(pattern, i)):
            if after_quantifier and c == "+":
                out["possessive"].append(i - 1)
            elif not (after_quantifier and c == "?"):
                quant = True
            i = _QUANT_BRACES.match(pattern, i).end() if c == "{" else i + 1
        else:
            i += 1
        after_quantifier = quant
    return out


def _scan_escape(pattern: str, i: int, out: dict[str, list[int]]) -> int:
    d = pattern[i + 1 : i + 2]
    if d == "b":
        out["boundary"].append(i)
    elif d == "B":
        out["nonboundary"].append(i)
    elif d in ("A", "Z"):
        out["anchor"].append(i)
    elif d and d in "123456789":
        # mirror sre_parse: three octal digits are a character, else a group number
        nxt = pattern[i + 2 : i + 3]
        if nxt.isdigit() and d in "01234567" and nxt in "01234567":
            third = pattern[i + 3 : i + 4]
            if third and third in "01234567":
                return i + 4
        out["backref"].append(i)
        return i + 3 if nxt.isdigit() else i + 2
    return i + 2


def _skip_class(pattern: str, i: int) -> int:
    j = i + 1
    if pattern.startswith("^", j):
        j += 1
    if pattern.startswith("]", j):
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1
