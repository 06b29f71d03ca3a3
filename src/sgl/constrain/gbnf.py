"""GBNF (llama.cpp) and transformers-cfg EBNF grammar text -> the grammar IR.

The language is tiny: ``name ::= alternatives`` rules, ``|``, ``( )``, ``*``, ``+``,
``?``, ``{m}``/``{m,}``/``{m,n}``, string literals with escapes (``\\xNN``, ``\\uNNNN``,
``\\UNNNNNNNN``, ``\\t \\r \\n \\\\ \\"`` ...), character classes ``[^a-z\\n]``, ``.``
(any character), ``#`` comments, and rule references. A rule ends at a newline unless
the newline is inside parentheses or follows ``::=`` or ``|``. transformers-cfg's EBNF
files are the same language (its parser is a port of llama.cpp's).

These grammars are character-level, but the matcher lexes greedily: a lexeme ends only
when the next byte cannot extend it. So every character piece becomes its own
single-character lexeme, which is always exact, and a regular part of the grammar
(one that does not recurse) is merged into one multi-character lexeme only where that
is provably exact:

1. no other lexeme that may be allowed at the same place starts with a character the
   merged lexeme may start with (checked on FOLLOW sets, which over-approximate
   "allowed at the same place"), and
2. no lexeme that may follow it starts with a byte that could extend a complete match
   of it (so greedy lexing stops exactly where the grammar wants).

Merging is tried from the largest regular parts down, and any part that breaks a
condition is split into its pieces until the whole grammar passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import analysis
from .counters import LARGE_COUNT
from .errors import CompileBudgetExceeded, ConstraintError, check_deadline
from .grammar import Grammar, GrammarBuilder, Terminal
from .regex_ast import (
    MAX_CODEPOINT,
    NOTHING,
    Alt,
    Chars,
    Node,
    Repeat,
    Seq,
    normalize_ranges,
    nullable,
)

# ---------------------------------------------------------------------------
# The grammar text's own AST
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # identity matters: each occurrence is its own candidate
class GChars:
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, eq=False)
class GRef:
    name: str
    pos: int


@dataclass(frozen=True, eq=False)
class GSeq:
    items: tuple[GExpr, ...]


@dataclass(frozen=True, eq=False)
class GAlt:
    items: tuple[GExpr, ...]


@dataclass(frozen=True, eq=False)
class GRep:
    item: GExpr
    min: int
    max: int | None


GExpr = GChars | GRef | GSeq | GAlt | GRep

MAX_NESTED_COPIES = 2_000  # a repetition lowered to rules, times the ones nested in it
MAX_CHECKED_LEXEMES = 3_000  # lexemes of one grammar checked pairwise for safe merging
_MAX_REPEAT = 10_000_000  # a {m,n} bound beyond this is surely a mistake; large regular ones are counted by rules (counters.py)


def gbnf_grammar(text: str, start: str = "root") -> Grammar:
    """Compile llama.cpp GBNF ``text`` into the grammar IR, starting at rule ``start``.

    Raises ``ConstraintError`` with ``line L, column C`` for syntax errors and for
    references to undefined rules.
    """
    return _compile(text, start, "gbnf")


def ebnf_grammar(text: str, start: str = "root") -> Grammar:
    """Compile a transformers-cfg EBNF grammar (GBNF's dialect) into the grammar IR."""
    return _compile(text, start, "ebnf")


def _compile(text: str, start: str, dialect: str) -> Grammar:
    rules = _Parser(text, dialect).parse()
    if start not in rules:
        raise ConstraintError(f"{dialect.upper()} grammar has no {start!r} rule")
    return _Lowering(rules, start, dialect).run()


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------

_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "f": "\f", "v": "\v", "0": "\0", "a": "\a", "b": "\b"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _is_name_char(c: str) -> bool:
    return c != "" and c.isascii() and (c.isalnum() or c in "_-")  # "" is end of input


class _Parser:
    def __init__(self, text: str, dialect: str):
        self.text = text
        self.pos = 0
        self.dialect = dialect
        self.rules: dict[str, GExpr] = {}
        self.defined_at: dict[str, int] = {}

    # -- errors and low-level helpers --------------------------------------
    def error(self, message: str, pos: int | None = None) -> ConstraintError:
        return ConstraintError(
            f"{self.dialect.upper()}: {message}",
            _line_col(self.text, self.pos if pos is None else pos),
        )

    def peek(self, k: int = 0) -> str:
        i = self.pos + k
        return self.text[i] if i < len(self.text) else ""

    def skip_space(self, newline_ok: bool) -> None:
        t = self.text
        while self.pos < len(t):
            c = t[self.pos]
            if c in " \t" or (newline_ok and c in "\r\n"):
                self.pos += 1
            elif c == "#":
                while self.pos < len(t) and t[self.pos] not in "\r\n":
                    self.pos += 1
            else:
                break

    def parse_name(self) -> str:
        begin = self.pos
        while _is_name_char(self.peek()):
            self.pos += 1
        if self.pos == begin:
            raise self.error(f"expected a rule name, got {self.describe()}")
        return self.text[begin : self.pos]

    def describe(self) -> str:
        c = self.peek()
        if not c:
            return "end of text"
        if c == "$" or self.text.startswith("{{", self.pos):
            return f"{c!r} (an unfilled template placeholder?)"
        return repr(c)

    # -- grammar structure --------------------------------------------------
    def parse(self) -> dict[str, GExpr]:
        self.skip_space(newline_ok=True)
        while self.pos < len(self.text):
            self.parse_rule()
            self.skip_space(newline_ok=True)
        if not self.rules:
            raise self.error("the grammar defines no rules")
        self.check_references()
        return self.rules

    def parse_rule(self) -> None:
        name_pos = self.pos
        name = self.parse_name()
        self.skip_space(newline_ok=False)
        if not self.text.startswith("::=", self.pos):
            raise self.error(f"expected '::=' after rule name {name!r}, got {self.describe()}")
        self.pos += 3
        self.skip_space(newline_ok=True)
        body = self.parse_alternates(nested=False)
        if name in self.rules:
            first = _line_col(self.text, self.defined_at[name])
            raise self.error(f"rule {name!r} is defined twice (first at {first})", name_pos)
        self.rules[name] = body
        self.defined_at[name] = name_pos
        c = self.peek()
        if c and c not in "\r\n":
            raise self.error(f"expected end of rule {name!r} (a newline), got {self.describe()}")

    def parse_alternates(self, nested: bool) -> GExpr:
        alts = [self.parse_sequence(nested)]
        while self.peek() == "|":
            self.pos += 1
            self.skip_space(newline_ok=True)
            alts.append(self.parse_sequence(nested))
        return alts[0] if len(alts) == 1 else GAlt(tuple(alts))

    def parse_sequence(self, nested: bool) -> GExpr:
        items: list[GExpr] = []
        while True:
            c = self.peek()
            if c == '"':
                items.append(self.parse_literal())
            elif c == "[":
                items.append(self.parse_class())
            elif c == ".":
                self.pos += 1
                items.append(GChars(((0, MAX_CODEPOINT),)))
            elif c == "(":
                open_pos = self.pos
                self.pos += 1
                self.skip_space(newline_ok=True)
                inner = self.parse_alternates(nested=True)
                if self.peek() != ")":
                    raise self.error(
                        f"expected ')' to close the '(' at {_line_col(self.text, open_pos)}, got {self.describe()}"
                    )
                self.pos += 1
                items.append(inner)
            elif c and _is_name_char(c):
                ref_pos = self.pos
                items.append(GRef(self.parse_name(), ref_pos))
            elif c in ("*", "+", "?", "{"):
                if not items:
                    raise self.error(f"{c!r} must follow an item to repeat")
                items[-1] = self.parse_repetition(items[-1])
            elif c == "<":
                raise self.error("token references (<...>) are not supported")
            else:
                break
            self.skip_space(newline_ok=nested)
        if len(items) == 1:
            return items[0]
        return GSeq(tuple(items))

    def parse_repetition(self, item: GExpr) -> GExpr:
        c = self.peek()
        self.pos += 1
        if c == "*":
            return GRep(item, 0, None)
        if c == "+":
            return GRep(item, 1, None)
        if c == "?":
            return GRep(item, 0, 1)
        open_pos = self.pos - 1
        self.skip_space(newline_ok=False)
        lo = self.parse_int()
        self.skip_space(newline_ok=False)
        hi: int | None = lo
        if self.peek() == ",":
            self.pos += 1
            self.skip_space(newline_ok=False)
            hi = self.parse_int() if self.peek().isdigit() else None
            self.skip_space(newline_ok=False)
        if self.peek() != "}":
            raise self.error(f"expected '}}' to close the repetition, got {self.describe()}")
        self.pos += 1
        if hi is not None and hi < lo:
            raise self.error(f"repetition {{{lo},{hi}}} has max < min", open_pos)
        if max(lo, hi or 0) > _MAX_REPEAT:
            raise self.error(f"repetition bound above {_MAX_REPEAT}", open_pos)
        return GRep(item, lo, hi)

    def parse_int(self) -> int:
        begin = self.pos
        while self.peek().isdigit():
            self.pos += 1
        if begin == self.pos:
            raise self.error(f"expected a number, got {self.describe()}")
        return int(self.text[begin : self.pos])

    def parse_char(self) -> int:
        """One possibly escaped character of a literal or class, as a code point."""
        c = self.peek()
        if not c:
            raise self.error("unexpected end of text")
        if c != "\\":
            self.pos += 1
            return ord(c)
        esc_pos = self.pos
        e = self.peek(1)
        self.pos += 2
        if e in _HEX_ESCAPES:
            n = _HEX_ESCAPES[e]
            digits = self.text[self.pos : self.pos + n]
            if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.error(f"\\{e} needs {n} hex digits", esc_pos)
            self.pos += n
            cp = int(digits, 16)
            if cp > MAX_CODEPOINT:
                raise self.error(f"\\{e}{digits} is beyond U+10FFFF", esc_pos)
            return cp
        if e in _ESCAPES:
            return ord(_ESCAPES[e])
        if e and not e.isalnum():  # \\ \" \[ \] \- \/ ... stand for themselves
            return ord(e)
        raise self.error(f"unknown escape \\{e}", esc_pos)

    def parse_literal(self) -> GExpr:
        open_pos = self.pos
        self.pos += 1
        items: list[GExpr] = []
        while self.peek() != '"':
            if not self.peek():
                raise self.error("unterminated string literal", open_pos)
            cp = self.parse_char()
            items.append(GChars(((cp, cp),)))
        self.pos += 1
        if len(items) == 1:
            return items[0]
        return GSeq(tuple(items))

    def parse_class(self) -> GExpr:
        open_pos = self.pos
        self.pos += 1
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        while self.peek() != "]":
            if not self.peek():
                raise self.error("unterminated character class", open_pos)
            lo = self.parse_char()
            hi = lo
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.pos += 1
                hi = self.parse_char()
                if hi < lo:
                    raise self.error(
                        f"bad range {chr(lo)!r}-{chr(hi)!r} in character class", open_pos
                    )
            ranges.append((lo, hi))
        self.pos += 1
        norm = normalize_ranges(ranges)
        if negated:
            norm = _negate(norm)
        return GChars(norm)

    def check_references(self) -> None:
        for body in self.rules.values():
            for ref in _refs(body):
                if ref.name not in self.rules:
                    raise self.error(f"undefined rule {ref.name!r}", ref.pos)


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}"


def _negate(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    out, lo = [], 0
    for a, b in ranges:
        if a > lo:
            out.append((lo, a - 1))
        lo = b + 1
    if lo <= MAX_CODEPOINT:
        out.append((lo, MAX_CODEPOINT))
    return tuple(out)


def _refs(e: GExpr):
    if isinstance(e, GRef):
        yield e
    elif isinstance(e, (GSeq, GAlt)):
        for it in e.items:
            yield from _refs(it)
    elif isinstance(e, GRep):
        yield from _refs(e.item)


# ---------------------------------------------------------------------------
# Regular parts: which rules do not recurse, and their regex
# ---------------------------------------------------------------------------


def _regular_rules(rules: dict[str, GExpr]) -> set[str]:
    """Rules from which no recursion is reachable: their language is regular."""
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    regular: set[str] = set()

    def visit(name: str) -> bool:
        s = state.get(name)
        if s == 1:
            return False
        if s == 2:
            return name in regular
        state[name] = 1
        ok = True
        for ref in _refs(rules[name]):
            ok = visit(ref.name) and ok
        state[name] = 2
        if ok:
            regular.add(name)
        return ok

    for name in rules:
        visit(name)
    return regular


def _to_regex(e: GExpr, rules: dict[str, GExpr], memo: dict[str, Node]) -> Node:
    if isinstance(e, GChars):
        return Chars(e.ranges) if e.ranges else NOTHING
    if isinstance(e, GRef):
        if e.name not in memo:
            memo[e.name] = _to_regex(rules[e.name], rules, memo)
        return memo[e.name]
    if isinstance(e, GSeq):
        return Seq(tuple(_to_regex(i, rules, memo) for i in e.items))
    if isinstance(e, GAlt):
        return Alt(tuple(_to_regex(i, rules, memo) for i in e.items))
    return Repeat(_to_regex(e.item, rules, memo), e.min, e.max)


def _is_nothing(n: Node) -> bool:
    if isinstance(n, Chars):
        return not n.ranges
    if isinstance(n, Seq):
        return any(_is_nothing(i) for i in n.items)
    if isinstance(n, Alt):
        return all(_is_nothing(i) for i in n.items)
    if isinstance(n, Repeat):
        return n.min > 0 and _is_nothing(n.item)
    return False


def _non_empty(n: Node) -> Node:
    """A node for ``L(n)`` minus the empty string (a lexeme must consume something)."""
    if not nullable(n):
        return n
    if isinstance(n, Alt):
        items = (_non_empty(i) for i in n.items)
        return Alt(tuple(i for i in items if not _is_nothing(i)))
    if isinstance(n, Seq):
        if not n.items:
            return NOTHING
        head, rest = n.items[0], Seq(n.items[1:])
        # head and rest are both nullable here: nonempty = (head+ rest) | (rest+)
        return Alt((Seq((_non_empty(head), rest)), _non_empty(rest)))
    if isinstance(n, Repeat):
        if n.max == 0:
            return NOTHING
        # drop the leading empty iterations: one nonempty item, then any further ones
        rest_max = None if n.max is None else n.max - 1
        return Seq((_non_empty(n.item), Repeat(n.item, 0, rest_max)))
    return n


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

    def accepts(self, text: str) -> bool:
        state = _START
        for c in map(ord, text):
            state = frozenset(
                p for p in self.step(state) if any(lo <= c <= hi for lo, hi in self.chars[p])
            )
            if not state:
                return False
        return self.accepting(state)

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
    state = _START
    for c in map(ord, text):
        state = frozenset(p for p in s.step(state) if any(lo <= c <= hi for lo, hi in s.chars[p]))
        if not state:
            return 0
    return _lead_bytes(normalize_ranges(r for p in s.step(state) for r in s.chars[p]))


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


# ---------------------------------------------------------------------------
# Lowering to the IR
# ---------------------------------------------------------------------------


@dataclass
class _Candidate:
    """A regular part of the grammar that may become one lexeme."""

    node: Node  # its language
    pattern: Node  # the language minus the empty string: the lexeme
    nullable: bool
    ident: str  # repr(pattern): candidates with equal patterns share one terminal
    automaton: _Glushkov


@dataclass
class _Lexeme:
    automaton: _Glushkov
    ident: str
    candidates: set  # keys of the candidates merged into it (empty: a single character)


class _Lowering:
    def __init__(self, rules: dict[str, GExpr], start: str, dialect: str):
        self.rules = rules
        self.start = start
        self.dialect = dialect
        self.regular = _regular_rules(rules)
        self.regex_memo: dict[str, Node] = {}
        self.split: set = set()  # candidates not to merge (lowered piece by piece)
        self.cands: dict[object, _Candidate | None] = {}
        self.char_automata: dict[tuple, _Glushkov] = {}
        self.cross: dict[tuple[str, str], int] = {}

    def run(self) -> Grammar:
        while True:
            grammar, lexemes = self.generate()
            bad = self.violations(grammar, lexemes)
            if not bad:
                return grammar
            self.split |= bad

    # -- candidates ------------------------------------------------------
    def is_regular(self, e: GExpr) -> bool:
        return all(r.name in self.regular for r in _refs(e))

    def candidate(self, key, e: GExpr) -> _Candidate | None:
        """The lexeme to merge ``e`` into, or None when it is lowered piece by piece."""
        if key in self.split:
            return None
        if key not in self.cands:
            self.cands[key] = self.make_candidate(e) if self.is_regular(e) else None
        return self.cands[key]

    def make_candidate(self, e: GExpr) -> _Candidate | None:
        node = _to_regex(e, self.rules, self.regex_memo)
        pattern = _non_empty(node)
        if _is_nothing(pattern):
            return None
        try:
            automaton = _Glushkov(pattern)
        except _TooBig:
            return None
        return _Candidate(node, pattern, nullable(node), repr(pattern), automaton)

    # -- generation ------------------------------------------------------
    def generate(self) -> tuple[Grammar, dict[str, _Lexeme]]:
        self.b = GrammarBuilder()
        self.lexemes: dict[str, _Lexeme] = {}
        self.by_ident: dict[str, str] = {}
        emitted: set[str] = set()
        self.todo = [self.start]
        while self.todo:
            check_deadline(f"lowering the {self.dialect.upper()} grammar")
            name = self.todo.pop()
            if name not in emitted:
                emitted.add(name)
                self.emit_rule(name)
        return self.b.build(self.start, source=self.dialect), self.lexemes

    def emit_rule(self, name: str) -> None:
        body = self.rules[name]
        cand = self.candidate(("rule", name), body)
        if cand is not None:
            self.emit_merged(name, cand, ("rule", name))
        else:
            for alt in body.items if isinstance(body, GAlt) else (body,):
                self.b.rule(name, self.lower_seq(alt))

    def emit_merged(self, lhs: str, cand: _Candidate, key) -> None:
        self.b.rule(lhs, (self.lexeme(cand, key, hint=lhs.split("#")[0]),))
        if cand.nullable:
            self.b.rule(lhs, ())

    def lexeme(self, cand: _Candidate, key, hint: str) -> str:
        name = self.by_ident.get(cand.ident)
        if name is None:
            name = self.b.fresh(f"<{hint}>")
            self.b.terminals[name] = Terminal(name, cand.pattern)
            self.by_ident[cand.ident] = name
            self.lexemes[name] = _Lexeme(cand.automaton, cand.ident, set())
        self.lexemes[name].candidates.add(key)
        return name

    def char_terminal(self, ranges) -> str:
        if not ranges:
            return self.b.terminal(NOTHING, hint="[]")
        if len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            name = self.b.literal(chr(ranges[0][0]))
        else:
            name = self.b.terminal(Chars(ranges), hint="[class]")
        if name not in self.lexemes:
            if ranges not in self.char_automata:
                self.char_automata[ranges] = _Glushkov(Chars(ranges))
            self.lexemes[name] = _Lexeme(self.char_automata[ranges], repr(ranges), set())
        return name

    def lower_seq(self, e: GExpr) -> list[str]:
        """Symbols for a sequence; maximal runs of regular items are merge candidates."""
        items = e.items if isinstance(e, GSeq) else (e,)
        out: list[str] = []
        run: list[GExpr] = []
        for it in items:
            if self.is_regular(it):
                run.append(it)
            else:
                out += self.lower_run(run)
                run = []
                out += self.lower_item(it)
        out += self.lower_run(run)
        return out

    def lower_run(self, run: list[GExpr]) -> list[str]:
        if len(run) < 2:
            return [s for it in run for s in self.lower_item(it)]
        key = ("run",) + tuple(id(it) for it in run)
        cand = self.candidate(key, GSeq(tuple(run)))
        if cand is None:
            return [s for it in run for s in self.lower_item(it)]
        return [self.merged_symbol(key, cand)]

    def merged_symbol(self, key, cand: _Candidate) -> str:
        if not cand.nullable:
            return self.lexeme(cand, key, hint="lex")
        lhs = self.b.fresh("lex")
        self.emit_merged(lhs, cand, key)
        return lhs

    def lower_item(self, e: GExpr) -> list[str]:
        if isinstance(e, GChars):
            return [self.char_terminal(e.ranges)]
        if isinstance(e, GRef):
            self.todo.append(e.name)
            return [e.name]
        key = ("node", id(e))
        cand = self.candidate(key, e)
        if cand is not None:
            return [self.merged_symbol(key, cand)]
        if isinstance(e, GSeq):
            return self.lower_seq(e)
        if isinstance(e, GAlt):
            lhs = self.b.fresh("alt")
            for alt in e.items:
                self.b.rule(lhs, self.lower_seq(alt))
            return [lhs]
        return [self.lower_repeat(e)]

    def counted_terminal(self, e: GRep) -> str:
        """``[class]{m,n}`` with a large count: one terminal, which the compiler counts
        by rules over chunk lexemes (``counters``) instead of unrolling it."""
        x = Chars(e.item.ranges)
        name = self.b.terminal(Repeat(x, e.min, e.max), hint="[count]")
        if name not in self.lexemes:
            # for the merge check, X+ stands for it: a superset, so the check stays safe
            self.lexemes[name] = _Lexeme(_Glushkov(Repeat(x, 1, None)), repr((x, e.min, e.max)), set())
        return name

    def lower_group(self, e: GExpr) -> str:
        """One symbol for ``e`` (a fresh rule when it lowers to several)."""
        syms = self.lower_item(e)
        if len(syms) == 1:
            return syms[0]
        lhs = self.b.fresh("grp")
        self.b.rule(lhs, syms)
        return lhs

    def lower_repeat(self, e: GRep) -> str:
        if isinstance(e.item, GChars) and e.item.ranges and max(e.min, e.max or 0) > LARGE_COUNT:
            return self.counted_terminal(e)
        copies = _repeat_copies(e)
        if copies > MAX_NESTED_COPIES:
            # X{0,100} inside {0,100} is a chain of optionals in a chain of optionals:
            # 10,000 ways to split "x"*k, which parsing (not compiling) would pay for
            raise CompileBudgetExceeded(
                f"nested repetitions in the {self.dialect.upper()} grammar multiply to {copies} "
                f"copies, over the budget of {MAX_NESTED_COPIES} (budget: rules)"
            )
        x = self.lower_group(e.item)
        lhs = self.b.fresh("rep")
        prefix = [x] * e.min
        if e.max is None:
            # star -> ε | star x : left recursion keeps Earley's item sets small
            star = self.b.fresh("star")
            self.b.rule(star, ())
            self.b.rule(star, (star, x))
            self.b.rule(lhs, prefix + [star])
            return lhs
        tail: list[str] = []
        if e.max > e.min:  # a chain of nested optionals: unambiguous
            opt = None
            for _ in range(e.max - e.min):
                new = self.b.fresh("opt")
                self.b.rule(new, ())
                self.b.rule(new, (x,) if opt is None else (x, opt))
                opt = new
            tail = [opt]
        self.b.rule(lhs, prefix + tail)
        return lhs

    # -- the merge check -------------------------------------------------
    def violations(self, g: Grammar, lexemes: dict[str, _Lexeme]) -> set:
        """Candidates whose lexemes greedy lexing could cut at the wrong place.

        Two lexemes are *co-allowed* when both may be allowed at the same lexeme
        boundary. For each merged lexeme ``s`` and each ``t`` co-allowed with it (``t`` =
        ``s`` included), no byte that may start what follows ``t`` may extend a complete
        match of ``t`` within ``s``. Single characters extend nothing, so only merged
        ``s`` matter.
        """
        merged = [t for t, lx in lexemes.items() if lx.candidates]
        if not merged:
            return set()
        if len(lexemes) > MAX_CHECKED_LEXEMES:  # the check below is quadratic in them
            raise CompileBudgetExceeded(
                f"the {self.dialect.upper()} grammar needs {len(lexemes)} lexemes, over the "
                f"{MAX_CHECKED_LEXEMES} whose tokenization can be checked (budget: lexemes)"
            )
        co_allowed, follow_bytes, first_bytes = _co_allowed(g, lexemes)
        bad: set = set()
        for s in merged:
            ls = lexemes[s]
            for t, lt in lexemes.items():
                if not (first_bytes[t] & first_bytes[s] and follow_bytes[t] and s in co_allowed[t]):
                    continue
                key = (lt.ident, ls.ident)
                if key not in self.cross:
                    self.cross[key] = _cross_extension(lt.automaton, ls.automaton)
                if self.cross[key] & follow_bytes[t]:
                    bad |= ls.candidates | lt.candidates
        return bad


def _repeat_copies(e: GExpr) -> int:
    """How many copies of its innermost items nested bounded repetitions make."""
    if isinstance(e, GRep):
        return max(1, e.max if e.max is not None else e.min) * _repeat_copies(e.item)
    if isinstance(e, GSeq | GAlt):
        return max((_repeat_copies(it) for it in e.items), default=1)
    return 1


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

