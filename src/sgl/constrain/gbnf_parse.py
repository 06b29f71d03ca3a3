"""GBNF / EBNF text to its own AST (``GChars``, ``GRef``, ``GSeq``, ``GAlt``, ``GRep``),
with line and column in every syntax error. The lowering to the grammar IR is in
``gbnf_lower.py``; ``gbnf.py`` is the entry point."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConstraintError, line_col
from .regex_ast import MAX_CODEPOINT, Chars, negate, normalize_ranges

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

_MAX_REPEAT = 10_000_000  # a {m,n} bound beyond this is surely a mistake; large regular ones are counted by rules (counters.py)


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------

_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "f": "\f", "v": "\v", "0": "\0", "a": "\a", "b": "\b"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_QUANTIFIERS = {"*": (0, None), "+": (1, None), "?": (0, 1)}  # (min, max) of each


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
            line_col(self.text, self.pos if pos is None else pos),
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
            first = line_col(self.text, self.defined_at[name])
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
                        f"expected ')' to close the '(' at {line_col(self.text, open_pos)}, got {self.describe()}"
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
        return items[0] if len(items) == 1 else GSeq(tuple(items))

    def parse_repetition(self, item: GExpr) -> GExpr:
        c = self.peek()
        self.pos += 1
        if c in _QUANTIFIERS:
            return GRep(item, *_QUANTIFIERS[c])
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
        return items[0] if len(items) == 1 else GSeq(tuple(items))

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
                    raise self.error(f"bad range {chr(lo)!r}-{chr(hi)!r} in character class", open_pos)
            ranges.append((lo, hi))
        self.pos += 1
        norm = normalize_ranges(ranges)
        if negated:
            norm = negate(Chars(norm)).ranges
        return GChars(norm)

    def check_references(self) -> None:
        for body in self.rules.values():
            for ref in _refs(body):
                if ref.name not in self.rules:
                    raise self.error(f"undefined rule {ref.name!r}", ref.pos)


def _refs(e: GExpr):
    if isinstance(e, GRef):
        yield e
    elif isinstance(e, (GSeq, GAlt)):
        for it in e.items:
            yield from _refs(it)
    elif isinstance(e, GRep):
        yield from _refs(e.item)
