"""Grammar emission: punctuation, terminals, value nonterminals, number and string lexemes."""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from ..automata.derivatives import ANY_CHAR as _ANY_CHAR
from ..automata.derivatives import (
    ANY_STRING,
    LAnd,
    has_boolean_ops,
    length_range,
    materialize,
    mk_and,
    restrict_length,
)
from ..automata.numbers import number_lexeme
from ..automata.ranges import number_regex, points_regex
from ..counters import CountedRepeat
from ..errors import CompileBudgetExceeded
from ..grammar import Terminal
from ..json_counted import CountedChars
from ..json_strings import json_string_node
from ..regex_ast import NOTHING, Node, Repeat, alt, chars, literal, optional, repeat, seq
from .common import MAX_EXACT_NUMBER_POINTS, MAX_LEXEME_LENGTH, MAX_RULES, STRING_CHUNK
from .refs import Sub
from .values import _CHUNKED


@lru_cache(maxsize=64)
def _fraction_cap(n: int) -> Node:
    """Number-like spellings with at most ``n`` digits between the point and the exponent
    (intersected with a number's exact regex; it need not be a number syntax itself)."""
    digit = chars((0x30, 0x39))
    sign_digits = repeat(chars((0x2B, 0x2B), (0x2D, 0x2D), (0x30, 0x39)), 0, None)
    return seq(repeat(chars((0x2D, 0x2D), (0x30, 0x39)), 0, None),
               alt(literal(""), seq(literal("."), repeat(digit, 0, n))),
               alt(literal(""), seq(chars((0x45, 0x45), (0x65, 0x65)), sign_digits)))


def _canonical_numbers() -> Node:
    """The shortest plain spelling of each number: ``0``, or an optional ``-``, no
    leading zero, no exponent and a fraction that ends in a non-zero digit (``25``,
    ``-0.5``, ``175``; not ``25.0``, ``1.75e2``, ``-0``). Every decimal value has exactly
    one, so intersecting a number's exact regex with it keeps every value."""
    digit, nonzero = chars((0x30, 0x39)), chars((0x31, 0x39))
    fraction = optional(seq(literal("."), repeat(digit, 0, None), nonzero))
    positive = alt(seq(nonzero, repeat(digit, 0, None), fraction),
                   seq(literal("0."), repeat(digit, 0, None), nonzero))
    return alt(literal("0"), seq(optional(literal("-")), positive))


class ScalarEmitter:
    """Value nonterminals and scalar lexemes (a mixin of ``JsonSchemaCompiler``)."""

    # -- grammar -----------------------------------------------------------------------
    def punct(self, which: str) -> str:
        """Punctuation lexemes, whitespace merged (after ``{ [ , :``, before ``} ] , :``)."""
        got = self._punct.get(which)
        if got is not None:
            return got
        if self.opts.whitespace == "compact":
            name = self.b.literal(which + " " if which in ",:" else which)  # json.dumps' separators
        else:
            name = self.b.terminal(_punct_node(which, self.opts.max_whitespace), hint=f"'{which}'")
        self._punct[which] = name
        return name

    def term(self, node: Node, hint: str) -> str:
        """A terminal for ``node``, deduplicated by identity (GrammarBuilder keys by repr,
        which is slow for big nodes; equal nodes from our caches are the same object)."""
        got = self._terms.get(id(node))
        if got is not None:
            return got[0]
        name = self.b.fresh(hint)
        self.b.terminals[name] = Terminal(name, node)
        self._terms[id(node)] = (name, node)
        return name

    def value_nt(self, ref) -> str | None:
        """The nonterminal for values of ``ref`` (None when no value is possible)."""
        key = ref.key
        if key in self.value_memo:
            return self.value_memo[key]
        name = self.b.fresh("value")
        self.value_memo[key] = name
        alts = self.value_alternatives(ref)
        if not alts:
            self.value_memo[key] = None
            return None
        for rhs in alts:
            self.b.rule(name, rhs)
        self._check_size()
        return name

    def spec_nt(self, kind: str, spec, ptr: str, rules) -> str | None:
        """The nonterminal of an ``ArraySpec``/``ObjectSpec`` (``kind`` "array"/"object"),
        its rules written by ``rules(name, spec, ptr)``; None when that finds no value."""
        key = (kind, spec)
        if key in self.value_memo:
            return self.value_memo[key]
        name = self.value_memo[key] = self.b.fresh(kind)
        first = len(self.b.rules)
        if not rules(name, spec, ptr):
            self.value_memo[key] = None
            # ``name`` is fresh, so its rules (and its ``name@...`` parts) all come after
            # ``first``: only that tail is filtered (the whole list was, per failed spec)
            part = name + "@"
            self.b.rules[first:] = [r for r in self.b.rules[first:] if r.lhs != name and not r.lhs.startswith(part)]
            return None
        return name

    def _check_size(self) -> None:
        if len(self.b.rules) > MAX_RULES:
            raise CompileBudgetExceeded(f"the grammar for this schema exceeds {MAX_RULES} rules")
        self.check_time()

    def value_alternatives(self, ref) -> list[tuple]:
        f = self.facets(ref)
        ptr = getattr(ref, "ptr", "") if isinstance(ref, Sub) else ""
        out: list[tuple] = []
        if f.null:
            out.append((self.b.literal("null"),))
        for v in (True, False):
            if v in f.bools:
                out.append((self.b.literal("true" if v else "false"),))
        if f.nums:
            node = self.number_node(f.nums, ptr)
            if node != NOTHING:
                out.append((self.term(node, "number"),))
        if f.strs is not None:
            pieces = f.strs.items if id(f.strs) in _CHUNKED else (f.strs,)
            for piece in pieces:
                counted = self.counted_string_nt(piece)
                if counted is not None:
                    out.append((counted,))
                    continue
                node = self.string_node(piece, ptr)
                if node != NOTHING:
                    out.append((self.term(node, "string"),))
        for kind, specs, rules in (("array", f.arrays, self.array_rules), ("object", f.objects, self.object_rules)):
            for spec in specs:
                nt = self.spec_nt(kind, spec, ptr, rules)
                if nt is not None:
                    out.append((nt,))
        for v in f.values:
            out.append((self.exact_nt(v),))
        return out

    def number_node(self, pieces: tuple, ptr: str) -> Node:
        canonical = self.opts.numbers == "canonical"  # plain spellings, intersected below
        points = [p.lo for p in pieces if p.lo is not None and p.lo == p.hi and p.kind == "any"]
        others = [p for p in pieces if not (p.lo is not None and p.lo == p.hi and p.kind == "any")]
        parts = [points_regex(points, MAX_EXACT_NUMBER_POINTS, canonical)] if points else []
        for p in others:
            try:
                parts.append(number_regex(p, canonical))
            except (ValueError, CompileBudgetExceeded) as e:
                self.refuse(f"multipleOf: {e}", ptr, "multipleOf")
                parts.append(number_regex(replace(p, kind="any") if p.scale else replace(p, mult=1)))
        node = alt(*parts) if parts else NOTHING
        cap = self.opts.max_fraction_digits
        if cap is not None and node != NOTHING:
            node = materialize(mk_and(node, _fraction_cap(cap)))
        if canonical and node != NOTHING:
            node = materialize(mk_and(node, _canonical_numbers()))
        return number_lexeme(node)  # the same language, its DFA built by automata.numbers

    def counted_string_nt(self, expr) -> str | None:
        """A string with only a length bound too large for one lexeme's automaton
        (``maxLength: 10**9``), exact; None for other strings.

        The opening quote, then chunk lexemes (``CountedChars``, built directly): full
        chunks of exactly ``STRING_CHUNK`` characters, counted in binary by the grammar
        (``CountedRepeat``), and a last one of up to ``STRING_CHUNK`` characters with the
        closing quote. A full chunk can not read on and the last one ends at the quote,
        so the greedy lexer cuts a string one way (see ``_chunked_lengths``); no chunk
        state accepts before its end, so a mask inside one walks the chunk's own states
        (shared by every chunk and bound) and continues only the tokens that cross its
        end (with one lexeme per character, ~140 boundary levels made the largest masks).

        The opening quote is a lexeme of its own, so another string lexeme allowed at the
        same place could make greedy lexing refuse a valid string; in a value position
        the only string lexemes are this value's own (``f.strs`` is one expression)."""
        if not is_counted_string(expr):
            return None
        lo, hi, _ = _length_parts(expr)
        key = ("counted string", lo, hi)
        got = self.value_memo.get(key)
        if got is None:
            got = self.value_memo[key] = self.b.fresh("string")
            body = self.b.fresh("chars")
            for rhs in self._chunked_lengths(got, lo, hi):
                self.b.rule(body, rhs)
            self.b.rule(got, (self.b.literal('"'), body))
        return got

    def _chunked_lengths(self, prefix: str, lo: int, hi: int | None) -> list[tuple[str, ...]]:
        """Right-hand sides deriving ``lo`` to ``hi`` characters and the closing quote as
        ``m - 1`` full chunks and a last chunk of ``r`` characters, ``1 <= r <= STRING_CHUNK``
        (``r = 0`` only for the empty string): a last chunk may read the quote after a full
        chunk's worth, so it does. Only the least ``m`` bounds ``r`` from below and only
        the most from above; elsewhere any ``r`` (one lexeme for every count)."""
        k = STRING_CHUNK
        chunks = CountedRepeat(self.b.rule, prefix, (self.term(_counted(k, k, closing=False), "chunk"),))

        def last(a: int, b: int) -> tuple[str, ...]:
            return (self.term(_counted(a, b, closing=True), "last"),)

        m_lo = max(-(-lo // k), 1)
        r_lo = lo - (m_lo - 1) * k  # 0 only for lo == 0 (m_lo == 1)
        if hi is None:
            return [chunks.exactly(m_lo - 1) + last(r_lo, k), chunks.between(m_lo, None) + last(1, k)]
        m_hi = max(-(-hi // k), 1)
        r_hi = hi - (m_hi - 1) * k
        if m_lo == m_hi:
            return [chunks.exactly(m_lo - 1) + last(r_lo, r_hi)]
        out = [chunks.exactly(m_lo - 1) + last(r_lo, k)]
        if m_hi - m_lo >= 2:
            out.append(chunks.between(m_lo, m_hi - 2) + last(1, k))
        return out + [chunks.exactly(m_hi - 1) + last(1, r_hi)]

    def string_node(self, expr, ptr: str) -> Node:
        """The lexeme for a string-language expression (length folded into the pattern)."""
        got = self._strings.get(expr)
        if got is None:
            got = self._strings[expr] = self._string_node(expr, ptr)
        return got

    def _string_node(self, expr, ptr: str) -> Node:
        lo, hi, rest = _length_parts(expr)
        if hi is not None and lo > hi:
            return NOTHING
        try:
            if len(rest) == 1 and not has_boolean_ops(rest[0]):
                if lo == 0 and hi is None:
                    node = rest[0]
                else:
                    node, exact = restrict_length(rest[0], lo, hi)
                    if not exact:
                        self.note("pattern/format combined with minLength/maxLength: long strings are restricted further", ptr)
                    length_range(node)
            elif not rest:
                if lo or hi is not None:
                    return _counted(lo, hi, True, True)  # the same lexeme, built directly
                node = Repeat(_ANY_CHAR, lo, hi)
            else:
                length = [Repeat(_ANY_CHAR, lo, hi)] if (lo or hi is not None) else []
                node = mk_and(*rest, *length)
            return json_string_node(node)
        except CompileBudgetExceeded as e:
            if e.budget == "seconds":
                raise  # the compile's time ran out: not this subschema's complexity
            self.refuse(f"string constraints too complex to combine: {e.message}", ptr, "pattern")
            return json_string_node(ANY_STRING)


def is_counted_string(expr) -> bool:
    """Is ``expr`` a plain length bound too large for one lexeme (``counted_string_nt``)?"""
    lo, hi, rest = _length_parts(expr)
    return not rest and max(lo, hi or 0) > MAX_LEXEME_LENGTH and (hi is None or lo <= hi)


def _length_parts(expr) -> tuple[int, int | None, list]:
    """A string expression as (min length, max length or None, the other constraints)."""
    items = list(expr.items) if isinstance(expr, LAnd) else [expr]
    lo, hi = 0, None
    rest = []
    for it in items:
        if isinstance(it, Repeat) and it.item == _ANY_CHAR:
            lo = max(lo, it.min)
            hi = it.max if hi is None else (hi if it.max is None else min(hi, it.max))
        else:
            rest.append(it)
    return lo, hi, rest


@lru_cache(maxsize=256)
def _counted(lo: int, hi: int | None, opening: bool = False, closing: bool = False) -> CountedChars:
    """One node per bounds: equal lexemes of later compiles find their DFA by identity."""
    return CountedChars(lo, hi, opening, closing)


@lru_cache(maxsize=64)
def _punct_node(which: str, n: int) -> Node:
    """A punctuation lexeme with the whitespace around it, one object per kind: equal
    lexemes of later compiles find their DFA in the cache by identity."""
    sp = repeat(chars((0x20, 0x20), (0x09, 0x09)), 0, n)
    ws = alt(sp, seq(sp, repeat(literal("\r"), 0, 1), literal("\n"), repeat(chars((0x20, 0x20), (0x09, 0x09)), 0, 4 * n)))
    c = literal(which)
    return {"{": seq(c, ws), "[": seq(c, ws), "}": seq(ws, c), "]": seq(ws, c), ",": seq(ws, c, ws), ":": seq(ws, c, ws)}[which]
