"""Exact regexes for JSON numbers inside numeric bounds.

``number_regex(NumPiece(...))`` builds a ``regex_ast`` node that matches the JSON
spellings of exactly the numbers in an interval (``minimum``, ``maximum``,
``exclusiveMinimum``, ``exclusiveMaximum``), optionally restricted to multiples of
``10**-scale`` (``type: integer`` is scale 0, ``multipleOf: 0.01`` is scale 2) or to
non-integers (what ``not: {type: integer}`` leaves).

What is matched, exactly:

* plain decimals ``-?(0|[1-9][0-9]*)(\\.[0-9]+)?``: every spelling whose value is in
  the set, trailing zeros included (``5``, ``5.0``, ``5.000`` are all 5);
* exponent forms: with no bound at all, or a bound of 0 only, every JSON exponent form
  of the right sign; with other bounds only normalised mantissas ``[1-9](\\.[0-9]+)?``
  (what ``json.dumps``/``repr`` write, e.g. ``1e-05``, ``1.5e+16``) plus zero mantissas,
  each exactly when its value is in the set. ``12e3`` (non-normalised) is refused when
  a non-zero bound is present;
* with a scale (integers, ``multipleOf: 10**-k``) an exponent form ``m e E`` (normalised
  ``m``) is accepted when its value is a multiple, i.e. ``m`` has at most ``E + scale``
  significant fraction digits, for mantissas of up to 16 of them (``1e5``, ``1.5e+16``,
  ``1E-2`` under ``0.01`` yes; ``1e-3`` under ``0.01`` and a 40-digit mantissa no).
  The fraction as written (trailing zeros included) must fit in ``E + scale`` digits
  (``1.50e1`` is refused for an integer): allowing trailing zeros would make the DFA of
  every unbounded integer remember two digit counts (204 states instead of 84);
* every exponent-form mantissa has at most 16 fraction digits as written (what
  ``json.dumps`` writes): unbounded trailing zeros would trap a sampler that wrote
  ``1.75`` for an integer in ``[50, 250]`` (only ``0`` or ``e2`` may follow);
* non-integers accept exponent forms only with negative exponents (``1.5e-05``).

Numbers are compared exactly as decimals (``decimal.Decimal``), never as floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from ..regex_ast import EMPTY, NOTHING, Alt, Node, chars, literal, optional, repeat, seq


def alt(*items: Node) -> Node:
    """Union; drops NOTHING, flattens, dedups by identity only."""
    flat: list[Node] = []
    seen: set[int] = set()
    for it in items:
        subs = it.items if isinstance(it, Alt) else (it,)
        for x in subs:
            if id(x) not in seen:
                seen.add(id(x))
                flat.append(x)
    if not flat:
        return NOTHING
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))

# Significant fraction digits of a mantissa checked for integrality in exponent form
# (json.dumps writes at most 17 significant digits).
# Multiples of 10**-scale (integers: scale 0) accept an exponent spelling with exponent
# e when its mantissa has at most e + scale fraction digits (one branch per exponent
# below 16 - scale), and at most 16 significant ones from there on: every multiple
# json.dumps writes in exponent form (1e+16, 1.2345e+20, 1e-05 under multipleOf 1e-5).
EXP_INTEGRAL_FROM = 16
MAX_EXP_DIGITS = EXP_INTEGRAL_FROM

DIGIT = chars((0x30, 0x39))
NONZERO = chars((0x31, 0x39))
DOT = literal(".")
EXP_MARK = chars((0x45, 0x45), (0x65, 0x65))  # e | E
EXPONENT = seq(EXP_MARK, optional(chars((0x2B, 0x2B), (0x2D, 0x2D))), repeat(DIGIT, 1, None))


def digits(lo: int, hi: int) -> Node:
    """One decimal digit in ``lo..hi``."""
    return chars((0x30 + lo, 0x30 + hi))


# ---------------------------------------------------------------------------
# Number sets: a union of pieces, each an interval with a kind


@dataclass(frozen=True)
class NumPiece:
    """Numbers in an interval: ``lo``/``hi`` are ``Decimal`` or None (unbounded).

    ``kind`` is ``"any"``, ``"scale"`` (multiples of ``10**-scale``; scale 0 = integers)
    or ``"nonint"`` (numbers with a non-zero fractional part).
    """

    lo: Decimal | None = None
    hi: Decimal | None = None
    lo_open: bool = False
    hi_open: bool = False
    kind: str = "any"
    scale: int = 0
    mult: int = 1  # with kind "scale": multiples of mult * 10**-scale

    def is_empty(self) -> bool:
        if self.lo is not None and self.hi is not None:
            if self.lo > self.hi or (self.lo == self.hi and (self.lo_open or self.hi_open)):
                return True
            if self.kind == "scale":
                q = Decimal(self.mult).scaleb(-self.scale)
                first = _ceil_to(self.lo, q, self.lo_open)
                return first > self.hi or (first == self.hi and self.hi_open)
            if self.kind == "nonint" and self.lo == self.hi:
                return self.lo == self.lo.to_integral_value()
        return False

    def contains(self, x: Decimal) -> bool:
        """Is the number ``x`` in this piece? (used by tests and enum filtering)"""
        if self.lo is not None and (x < self.lo or (x == self.lo and self.lo_open)):
            return False
        if self.hi is not None and (x > self.hi or (x == self.hi and self.hi_open)):
            return False
        if self.kind == "scale":
            y = x.scaleb(self.scale)
            return (y % 1) == 0 and (y % self.mult) == 0
        if self.kind == "nonint":
            return (x % 1) != 0
        return True


def _ceil_to(x: Decimal, q: Decimal, strict: bool) -> Decimal:
    """The smallest multiple of ``q`` that is >= x (> x when strict)."""
    n = (x / q).to_integral_value(rounding="ROUND_CEILING")
    if strict and n * q == x:
        n += 1
    return n * q


def intersect_pieces(a: NumPiece, b: NumPiece) -> NumPiece | None:
    """The intersection of two pieces, or None when it is empty or not representable."""
    lo, lo_open = _tighter(a.lo, a.lo_open, b.lo, b.lo_open, lower=True)
    hi, hi_open = _tighter(a.hi, a.hi_open, b.hi, b.hi_open, lower=False)
    kinds = {a.kind, b.kind}
    if kinds == {"any"}:
        kind, scale = "any", 0
    elif "nonint" in kinds and "scale" in kinds:
        sc = a.scale if a.kind == "scale" else b.scale
        if sc <= 0:
            return None  # integers and non-integers: disjoint
        raise ValueError("non-integer multiples of 10**-k are not supported")
    elif "nonint" in kinds:
        kind, scale = "nonint", 0
    else:
        kind = "scale"
        scaled = [p for p in (a, b) if p.kind == "scale"]
        scale = max(p.scale for p in scaled)
        # multiples of both: lcm over the common denominator 10**scale
        mult = 1
        for p in scaled:
            m = p.mult * 10 ** (scale - p.scale)
            mult = mult * m // math.gcd(mult, m)
        while scale > 0 and mult % 10 == 0:
            mult //= 10
            scale -= 1
        p = NumPiece(lo, hi, lo_open, hi_open, kind, scale, mult)
        return None if p.is_empty() else p
    p = NumPiece(lo, hi, lo_open, hi_open, kind, scale)
    return None if p.is_empty() else p


def _tighter(x, xo, y, yo, lower: bool):
    """The tighter of the bounds ``(x, xo)`` and ``(y, yo)`` (value or None, open): the
    larger of two ``lower`` bounds, else the smaller."""
    if x is None:
        return y, yo
    if y is None:
        return x, xo
    if x != y:
        return (x, xo) if (x > y) == lower else (y, yo)
    return x, xo or yo


def complement_piece(p: NumPiece) -> list[NumPiece]:
    """All numbers not in ``p``, as pieces (raises ValueError for scales other than 0)."""
    out: list[NumPiece] = []
    if p.lo is not None:
        out.append(NumPiece(None, p.lo, False, not p.lo_open))
    if p.hi is not None:
        out.append(NumPiece(p.hi, None, not p.hi_open, False))
    if p.kind == "scale":
        if p.scale != 0 or p.mult != 1:
            raise ValueError("the complement of a multipleOf constraint is not supported")
        out.append(NumPiece(p.lo, p.hi, p.lo_open, p.hi_open, "nonint"))
    elif p.kind == "nonint":
        out.append(NumPiece(p.lo, p.hi, p.lo_open, p.hi_open, "scale", 0))
    return [q for q in out if not q.is_empty()]


def to_decimal(x: int | float | Decimal) -> Decimal:
    """A JSON number as an exact decimal (floats through their shortest repr)."""
    if isinstance(x, Decimal):
        return x
    if isinstance(x, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(x, int):
        return Decimal(x)
    return Decimal(repr(float(x)))


# ---------------------------------------------------------------------------
# Unsigned integers


def _same_length_range(s: str, t: str) -> Node:
    """Digit strings of len(s) == len(t) between s and t (inclusive), leading zeros allowed."""
    if s == t:
        return literal(s)
    n = len(s)
    if n == 1:
        return digits(int(s), int(t))
    if s[1:] == "0" * (n - 1) and t[1:] == "9" * (n - 1):
        return seq(digits(int(s[0]), int(t[0])), repeat(DIGIT, n - 1, n - 1))
    if s[0] == t[0]:
        return seq(literal(s[0]), _same_length_range(s[1:], t[1:]))
    # s's first digit then at least s[1:], whole first digits between, t's first then at most t[1:]
    low_all, high_all = s[1:] == "0" * (n - 1), t[1:] == "9" * (n - 1)  # no bound on the rest
    head = NOTHING if low_all else seq(literal(s[0]), _same_length_range(s[1:], "9" * (n - 1)))
    tail = NOTHING if high_all else seq(literal(t[0]), _same_length_range("0" * (n - 1), t[1:]))
    lo_mid, hi_mid = int(s[0]) + (not low_all), int(t[0]) - (not high_all)
    mid = seq(digits(lo_mid, hi_mid), repeat(DIGIT, n - 1, n - 1)) if lo_mid <= hi_mid else NOTHING
    return alt(head, mid, tail)


@lru_cache(maxsize=4096)
def uint_range(lo: int, hi: int | None) -> Node:
    """Canonical decimal spellings (no leading zeros) of the integers in ``[lo, hi]``.

    ``lo >= 0``; ``hi=None`` means unbounded.
    """
    if hi is not None and lo > hi:
        return NOTHING
    parts = []
    if lo == 0:
        parts.append(literal("0"))
        lo = 1
        if hi is not None and hi < 1:
            return parts[0]
    length = len(str(lo))
    while True:
        top = 10**length - 1
        if hi is not None and hi <= top:
            parts.append(_same_length_range(str(lo), str(hi)))
            break
        parts.append(_same_length_range(str(lo), str(top)))
        lo = top + 1
        length += 1
        if hi is None:
            parts.append(seq(NONZERO, repeat(DIGIT, length - 1, None)))
            break
    return alt(*parts)


# ---------------------------------------------------------------------------
# Fraction digits


@lru_cache(maxsize=4096)
def frac_range(
    lo: str | None, lo_open: bool, hi: str | None, hi_open: bool, max_sig: int | None,
    strict: bool = False,
) -> tuple[Node, bool]:
    """Digit strings ``s`` with ``lo <= 0.s <= hi`` (``<`` where open).

    ``lo``/``hi`` are fraction digit strings without trailing zeros ("" = 0) or None
    (unbounded). ``max_sig`` (or None) requires every digit after position ``max_sig``
    to be 0; with ``strict`` there is no digit after it at all (trailing zeros count).
    Returns ``(node for the non-empty strings, whether "" is in the set)``.
    """
    if lo == "" and not lo_open:
        lo = None
    zeros = repeat(literal("0"), 0, 0 if strict else None)  # the tail after max_sig
    if max_sig == 0:
        # only zeros: the value is 0
        ok = (lo is None) and not (hi == "" and hi_open)
        return (repeat(literal("0"), 1, None) if ok and not strict else NOTHING), ok
    if lo is None and hi is None:
        if max_sig is None:
            return repeat(DIGIT, 1, None), True
        return alt(seq(repeat(DIGIT, 1, max_sig), zeros)), True
    if lo == "" and hi is None:
        # strictly positive: some digit within the first max_sig positions is non-zero
        if max_sig is None:
            return seq(repeat(literal("0"), 0, None), NONZERO, repeat(DIGIT, 0, None)), False
        opts = [
            seq(repeat(literal("0"), k, k), NONZERO, repeat(DIGIT, 0, max_sig - k - 1), zeros)
            for k in range(max_sig)
        ]
        return alt(*opts), False
    if hi == "":
        if hi_open or lo is not None:
            return NOTHING, False  # 0 <= 0.s < 0, or 0 < 0.s <= 0
        return repeat(literal("0"), 1, max_sig if strict else None), True
    empty_ok = lo is None  # "" is 0: fits iff 0 >= lo; hi is non-empty here so 0 < hi
    groups: dict[tuple, list[int]] = {}
    for c in range(10):
        if lo is None:
            nlo: str | None = None
        elif lo == "":  # strict > 0
            nlo = None if c > 0 else ""
        else:
            d = int(lo[0])
            if c < d:
                continue
            nlo = None if c > d else lo[1:]
        nlo_open = lo_open if nlo is not None else False
        if hi is None:
            nhi: str | None = None
        else:
            d = int(hi[0])
            if c > d:
                continue
            nhi = None if c < d else hi[1:]
        nhi_open = hi_open if nhi is not None else False
        groups.setdefault((nlo, nlo_open, nhi, nhi_open), []).append(c)
    nxt = None if max_sig is None else max_sig - 1
    parts = []
    for (nlo, nlo_open, nhi, nhi_open), cs in groups.items():
        node, empty = frac_range(nlo, nlo_open, nhi, nhi_open, nxt, strict)
        rest = alt(node, EMPTY) if empty else node
        if rest == NOTHING:
            continue
        for a, b in _runs(cs):
            parts.append(seq(digits(a, b), rest))
    return alt(*parts), empty_ok


def _runs(values: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for v in values:
        if out and out[-1][1] + 1 == v:
            out[-1][1] = v
        else:
            out.append([v, v])
    return [(a, b) for a, b in out]


def _fraction(node: Node, empty_ok: bool) -> Node:
    """The optional ``.digits`` part of a number from a ``frac_range`` result."""
    dotted = seq(DOT, node) if node != NOTHING else NOTHING
    if empty_ok:
        return optional(dotted) if dotted != NOTHING else EMPTY
    return dotted


def _split(x: Decimal) -> tuple[int, str]:
    """A non-negative decimal as (integer part, fraction digits without trailing zeros)."""
    ip = int(x.to_integral_value(rounding="ROUND_FLOOR"))
    frac = x - ip
    if frac == 0:
        return ip, ""
    text = format(frac, "f")  # "0.0075"
    return ip, text.split(".", 1)[1].rstrip("0")


# ---------------------------------------------------------------------------
# Positive decimals without exponent


@lru_cache(maxsize=8192)
def _positive_plain(
    lo: Decimal, lo_open: bool, hi: Decimal | None, hi_open: bool, max_sig: int | None, nonint: bool,
    strict: bool = False,
) -> Node:
    """Plain spellings of the numbers in the interval, where ``lo >= 0``.

    With ``nonint`` the fraction must contain a non-zero digit; with ``strict`` it has
    at most ``max_sig`` digits as written (``frac_range``).
    """
    ia, fa = _split(lo)
    if nonint and fa == "":
        fa_open = True  # > ia.0 : fraction non-zero
    else:
        fa_open = lo_open
    if hi is not None:
        ib, fb = _split(hi)
        if ia == ib:
            node, empty = frac_range(fa, fa_open, fb, hi_open, max_sig, strict)
            return seq(literal(str(ia)), _fraction(node, empty))
        if fb == "" and not hi_open and not nonint:
            # x <= ib: the ib part is ib with an all-zero fraction
            top = seq(literal(str(ib)), _fraction(*frac_range(None, False, "", False, max_sig, strict)))
        else:
            top = seq(literal(str(ib)), _fraction(*frac_range("" if nonint else None, nonint, fb, hi_open, max_sig, strict)))
        mid = uint_range(ia + 1, ib - 1) if ib - 1 >= ia + 1 else NOTHING
    else:
        top = NOTHING
        mid = uint_range(ia + 1, None)
    bottom = seq(literal(str(ia)), _fraction(*frac_range(fa, fa_open, None, False, max_sig, strict)))
    # the middle part: a fraction > 0 when non-integers only
    middle = _fraction(*frac_range("" if nonint else None, nonint, None, False, max_sig, strict))
    return alt(bottom, seq(mid, middle), top)  # seq and alt drop NOTHING


# ---------------------------------------------------------------------------
# Exponents


@lru_cache(maxsize=8192)
def exponent_range(lo: int | None, hi: int | None) -> Node:
    """Spellings of the signed exponents in ``[lo, hi]``: ``[+-]?[0-9]+``, leading zeros ok."""
    if lo is not None and hi is not None and lo > hi:
        return NOTHING
    zeros = repeat(literal("0"), 0, None)
    parts = []
    # non-negative part
    nlo = 0 if lo is None else max(lo, 0)
    if hi is None or hi >= nlo:
        plus = optional(literal("+"))
        if nlo == 0:
            parts.append(seq(plus, repeat(literal("0"), 1, None)))
            nlo = 1
        if hi is None or hi >= nlo:
            parts.append(seq(plus, zeros, uint_range(nlo, hi)))
    # negative part: -k with k in [max(1, -hi), -lo]
    klo = 1 if hi is None else max(1, -hi)
    khi = None if lo is None else -lo
    if khi is None or khi >= klo:
        parts.append(seq(literal("-"), zeros, uint_range(klo, khi)))
    if (lo is None or lo <= 0) and (hi is None or hi >= 0):
        parts.append(seq(literal("-"), repeat(literal("0"), 1, None)))
    return alt(*parts)


def _norm(x: Decimal) -> tuple[Decimal, int]:
    """x > 0 as (mantissa in [1, 10), exponent)."""
    e = x.adjusted()
    return x.scaleb(-e), e


@lru_cache(maxsize=8192)
def _mantissa(lo: Decimal | None, lo_open: bool, hi: Decimal | None, hi_open: bool, max_sig: int | None) -> Node:
    """Normalised mantissas ``[1-9](\\.[0-9]+)?`` in the given bounds, with at most
    ``max_sig`` (else ``MAX_EXP_DIGITS``) fraction digits as written, trailing zeros
    included: what ``json.dumps`` writes. An unbounded run of trailing zeros would be a
    trap for a sampler: after ``1.75`` under ``minimum: 50, maximum: 250`` a model that
    does not pick ``e2`` could write zeros forever (seen with SmolLM2 on the example)."""
    lo_ = Decimal(1) if lo is None else lo
    hi_ = Decimal(10) if hi is None else hi
    sig = MAX_EXP_DIGITS if max_sig is None else min(max_sig, MAX_EXP_DIGITS)
    return _positive_plain(lo_, lo_open if lo is not None else False, hi_, hi_open if hi is not None else True, sig, False, True)


@lru_cache(maxsize=8192)
def _positive_exp(lo: Decimal, lo_open: bool, hi: Decimal | None, hi_open: bool, kind: str, scale: int) -> Node:
    """Normalised exponent spellings of the numbers in the interval, ``lo >= 0``."""
    if hi == 0:
        return NOTHING
    ma, ea = (None, None) if lo == 0 else _norm(lo)
    mb, eb = (None, None) if hi is None else _norm(hi)

    def sig(e: int) -> int | None:
        """max significant fraction digits for exponent e, or -1 when impossible."""
        if kind == "any":
            return None
        if kind == "nonint":
            return None if e < 0 else -1
        return min(e + scale, MAX_EXP_DIGITS) if e + scale >= 0 else -1

    parts = []

    def add(e: int, mlo, mlo_open, mhi, mhi_open):
        s = sig(e)
        if s is None or s >= 0:  # seq and alt drop an empty mantissa set
            m = _mantissa(mlo, mlo_open, mhi, mhi_open, s)
            parts.append(seq(m, EXP_MARK, exponent_range(e, e)))

    # boundary exponents, with bounded mantissas
    if ea is not None and ea == eb:
        add(ea, ma, lo_open, mb, hi_open)
        return alt(*parts)
    if ea is not None:
        add(ea, ma, lo_open, None, False)
    if eb is not None:
        add(eb, None, False, mb, hi_open)
    # interior exponents (ea, eb): any mantissa
    ilo = None if ea is None else ea + 1
    ihi = None if eb is None else eb - 1
    parts.append(_interior_exp(ilo, ihi, kind, scale))
    return alt(*parts)


@lru_cache(maxsize=64)
def _short_mantissa(k: int) -> Node:
    """Normalised mantissas with at most ``k`` fraction digits, trailing zeros included."""
    return NONZERO if k == 0 else seq(NONZERO, optional(seq(DOT, repeat(DIGIT, 1, k))))


@lru_cache(maxsize=4096)
def _interior_exp(ilo: int | None, ihi: int | None, kind: str, scale: int) -> Node:
    """Exponent spellings with exponent in ``[ilo, ihi]`` and any normalised mantissa."""
    if kind == "any":
        return seq(_mantissa(None, False, None, False, None), EXP_MARK, exponent_range(ilo, ihi))
    if kind == "nonint":
        top = -1 if ihi is None else min(ihi, -1)
        return seq(_mantissa(None, False, None, False, None), EXP_MARK, exponent_range(ilo, top))
    # below EXP_INTEGRAL_FROM - scale, one branch per exponent e: a mantissa with at most
    # e + scale significant fraction digits (1e5, 1.25e1 under multipleOf 0.01)
    parts = []
    low = -scale if ilo is None else max(ilo, -scale)
    first = EXP_INTEGRAL_FROM - scale if ilo is None else max(ilo, EXP_INTEGRAL_FROM - scale)
    for e in range(low, first if ihi is None else min(first, ihi + 1)):
        parts.append(seq(_short_mantissa(e + scale), EXP_MARK, exponent_range(e, e)))
    if ihi is None or first <= ihi:
        parts.append(seq(_mantissa(None, False, None, False, MAX_EXP_DIGITS), EXP_MARK, exponent_range(first, ihi)))
    return alt(*parts)


# ---------------------------------------------------------------------------
# Whole pieces


def _zero_forms(kind: str) -> Node:
    """Every JSON spelling of zero (not allowed for non-integers)."""
    if kind == "nonint":
        return NOTHING
    return seq(
        optional(literal("-")),
        literal("0"),
        optional(seq(DOT, repeat(literal("0"), 1, None))),
        optional(EXPONENT),
    )


PLAIN_NUMBER = seq(
    optional(literal("-")),
    alt(literal("0"), seq(NONZERO, repeat(DIGIT, 0, None))),
    optional(seq(DOT, repeat(DIGIT, 1, None))),
)
FULL_NUMBER = seq(PLAIN_NUMBER, optional(EXPONENT))


def _positive_any_exponent() -> Node:
    """Every exponent spelling with a non-zero mantissa (normalised or not)."""
    mant = alt(
        seq(NONZERO, repeat(DIGIT, 0, None), optional(seq(DOT, repeat(DIGIT, 1, None)))),
        seq(literal("0"), DOT, repeat(literal("0"), 0, None), NONZERO, repeat(DIGIT, 0, None)),
    )
    return seq(mant, EXPONENT)


@lru_cache(maxsize=8192)
def _positive(lo: Decimal, lo_open: bool, hi: Decimal | None, hi_open: bool, kind: str, scale: int,
              no_exponent: bool = False) -> Node:
    """Spellings of the positive (> 0) numbers of a piece; ``lo >= 0``."""
    if lo == 0:
        lo_open = True
    max_sig = scale if kind == "scale" else None
    if kind == "scale" and scale < 0:
        raise ValueError("multipleOf above 1 is not supported here")
    plain = _positive_plain(lo, lo_open, hi, hi_open, max_sig, kind == "nonint")
    if no_exponent:
        exp = NOTHING
    elif kind == "any" and lo == 0 and hi is None:
        exp = _positive_any_exponent()  # only the sign matters: every spelling works
    else:
        exp = _positive_exp(lo, lo_open, hi, hi_open, kind, scale)
    return alt(plain, exp)


@lru_cache(maxsize=4096)
def number_regex(piece: NumPiece, no_exponent: bool = False) -> Node:
    """A regex for the JSON spellings of exactly the numbers in ``piece``.

    Multiples of an integer other than a power of ten (``multipleOf: 5``, ``1.5``)
    accept plain spellings only (no exponent form); raises ``CompileBudgetExceeded``
    when the divisibility automaton makes the regex too large. ``no_exponent`` leaves
    out the exponent spellings of non-zero numbers (every value keeps its plain ones):
    the base of ``numbers="canonical"``, cheap to intersect.
    """
    if piece.is_empty():
        return NOTHING
    if piece.kind == "scale" and piece.mult > 1:
        return _multiples_regex(piece, no_exponent)
    if piece.kind == "any" and piece.lo is None and piece.hi is None:
        return PLAIN_NUMBER if no_exponent else FULL_NUMBER
    zero = _zero_forms(piece.kind) if piece.contains(Decimal(0)) else NOTHING
    return alt(zero, _signed(piece, lambda *b: _positive(*b, piece.kind, piece.scale, no_exponent)))


def _signed(piece: NumPiece, positive: Callable[..., Node]) -> Node:
    """The spellings of the non-zero numbers of ``piece``: ``positive(lo, lo_open, hi,
    hi_open)`` for the positive ones (``lo >= 0``), and for the negative ones ``-x`` with
    ``x`` from it over the mirrored interval."""
    parts = []
    lo, hi = piece.lo, piece.hi
    if hi is None or hi > 0:
        plo, plo_open = (lo, piece.lo_open) if lo is not None and lo > 0 else (Decimal(0), True)
        parts.append(positive(plo, plo_open, hi, piece.hi_open))
    if lo is None or lo < 0:
        nlo, nlo_open = (-hi, piece.hi_open) if hi is not None and hi < 0 else (Decimal(0), True)
        nhi = None if lo is None else -lo
        parts.append(seq(literal("-"), positive(nlo, nlo_open, nhi, piece.lo_open)))
    return alt(*parts)


# ---------------------------------------------------------------------------
# multipleOf other than a power of ten

MAX_ENUMERATED_MULTIPLES = 1000
MAX_DIVISIBILITY_REGEX = 6000
MAX_DIVISIBILITY_STATES = 400


def points_regex(values: list[Decimal], exact_limit: int = 64, no_exponent: bool = False) -> Node:
    """The spellings of a finite set of numbers.

    Up to ``exact_limit`` values every spelling (``number_regex``); beyond, a trie of the
    plain decimal spellings (with trailing zeros), which stays small for big enums.
    """
    values = sorted(set(values))
    if len(values) <= exact_limit:
        return alt(*(number_regex(NumPiece(v, v), no_exponent) for v in values))
    from ..json_strings import string_set

    texts = (format(v.normalize(), "f") for v in values)
    spell = {"0" if text == "-0" else text for text in texts}
    ints = sorted(t for t in spell if "." not in t)
    decs = sorted(t for t in spell if "." in t)
    # integers may be followed by ".0*", decimals by more zeros (string_set([]) is NOTHING)
    return alt(seq(string_set(ints), optional(seq(DOT, repeat(literal("0"), 1, None)))),
               seq(string_set(decs), repeat(literal("0"), 0, None)))


def _multiples_regex(piece: NumPiece, no_exponent: bool = False) -> Node:
    """Multiples of ``mult * 10**-scale``: enumerated when the interval is small, else
    plain spellings through a divisibility automaton (sign bounds only)."""
    q = Decimal(piece.mult).scaleb(-piece.scale)
    if piece.lo is not None and piece.hi is not None:
        first = _ceil_to(piece.lo, q, piece.lo_open)
        count = int((piece.hi - first) / q) + 1 if first <= piece.hi else 0
        if count <= MAX_ENUMERATED_MULTIPLES:
            vals = [first + i * q for i in range(count)]
            vals = [v for v in vals if piece.contains(v)]
            if len(vals) <= 64 or no_exponent:
                return points_regex(vals, no_exponent=no_exponent)  # every spelling, exponent forms included
            return alt(points_regex(vals), _exponent_multiples(piece))
    if piece.lo not in (None, Decimal(0)) or piece.hi not in (None, Decimal(0)):
        raise ValueError("multipleOf (other than 10**-k) together with bounds other than 0 is not supported")
    if piece.mult * (piece.scale + 3) > MAX_DIVISIBILITY_STATES:
        raise ValueError(f"multipleOf {q} needs too large a divisibility automaton")
    zero = _zero_forms("scale") if piece.contains(Decimal(0)) else NOTHING
    positive = positive_multiples(piece.mult, piece.scale)  # bounds are 0 or None here
    exponent = NOTHING if no_exponent else _exponent_multiples(piece)
    return alt(zero, _signed(piece, lambda *_: positive), exponent)


def _exponent_multiples(piece: NumPiece) -> Node:
    """Normalised exponent spellings of some multiples in ``piece``: with ``mult`` a
    product of 2s and 5s (``multipleOf: 0.5, 0.25, 2, 20``), which divides
    ``10**k``, those whose value is a multiple of ``10**(k - scale)`` (``1.5e2`` under
    ``0.5``, ``2e16`` under ``2``); ``5e-1`` under ``0.5`` and every exponent form under
    other ``mult`` (``3``, ``1.5``) are not accepted."""
    m, k = piece.mult, 0
    while m % 10 == 0 or m % 2 == 0 or m % 5 == 0:
        m //= 10 if m % 10 == 0 else (2 if m % 2 == 0 else 5)
        k += 1  # ends as max(a, b) for mult = 2**a * 5**b: the least k with mult | 10**k
    if m != 1:
        return NOTHING
    return _signed(piece, lambda *bounds: _positive_exp(*bounds, "scale", piece.scale - k))


@lru_cache(maxsize=64)
def positive_multiples(c: int, s: int) -> Node:
    r"""Plain unsigned spellings ``(0|[1-9][0-9]*)(\.[0-9]+)?`` of the positive multiples
    of ``c * 10**-s``, via a remainder automaton turned into a regex.

    States: ("z",) integer part "0"; ("i", r) integer part with remainder r; ("f", r, j, nz)
    after j fraction digits (j <= s); ("t", r, nz) past s fraction digits, zeros only.
    ``nz`` = a non-zero digit was seen (zero itself is spelled elsewhere).
    """
    from .derivatives import CharDFA, dfa_to_node

    index: dict = {}
    edges: list = []
    accepting: list = []
    todo: list = []

    def ok(r: int, pending: int) -> bool:
        return (r * 10**pending) % c == 0

    def sid(st) -> int:
        if st not in index:
            index[st] = len(edges)
            edges.append([])
            kind = st[0]
            if kind == "i":
                acc = ok(st[1], s)
            elif kind == "f":
                acc = st[2] >= 1 and st[3] and ok(st[1], s - st[2])
            elif kind == "t":
                acc = st[2] and st[1] % c == 0
            else:
                acc = False
            accepting.append(acc)
            todo.append(st)
        return index[st]

    sid(("start",))
    while todo:
        st = todo.pop()
        out = edges[index[st]]
        kind = st[0]
        if kind == "start":
            out.append((digits(0, 0), sid(("z",))))
            for d in range(1, 10):
                out.append((digits(d, d), sid(("i", d % c))))
        elif kind == "z":
            out.append((DOT, sid(("f", 0, 0, False))))
        elif kind == "i":
            for d in range(10):
                out.append((digits(d, d), sid(("i", (10 * st[1] + d) % c))))
            out.append((DOT, sid(("f", st[1], 0, True))))
        elif kind == "f":
            _, r, j, nz = st
            for d in range(10):
                if j < s:
                    out.append((digits(d, d), sid(("f", (10 * r + d) % c, j + 1, nz or d > 0))))
                elif d == 0:
                    out.append((digits(0, 0), sid(("t", r, nz))))
        elif kind == "t":
            out.append((digits(0, 0), sid(("t", st[1], st[2]))))
    dfa = CharDFA([list(e) for e in edges], accepting)
    return dfa_to_node(dfa, max_size=MAX_DIVISIBILITY_REGEX)
