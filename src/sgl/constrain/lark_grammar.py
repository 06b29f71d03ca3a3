"""Lark grammar text -> the grammar IR.

Lark's own loader does the heavy lifting (``%import common.X``, ``%ignore``, ``?rule``,
``[..]``, ``*``/``+``/``?``, ranges ``"a".."z"``, templates, priorities): we read the
compiled BNF rules and terminal patterns it produces. Terminals stay lexemes, as in
Lark's lexer; priorities are dropped (the IR's weights are probabilities, Lark's
priorities are not), so every rule keeps weight 1.0.

Terminal regexes are Python ``re`` syntax. What a longest-match lexer cannot honour
is refused, naming the terminal: lookarounds, anchors, backreferences, lazy or
possessive quantifiers. A few common lazy idioms are rewritten instead of refused,
into a greedy regex that gives the same lexemes, e.g. ``common.ESCAPED_STRING``
(a lazy ``.*?`` and a lookbehind) becomes "quote, then non-quote-non-backslash
characters or backslash escapes, then quote".
"""

from __future__ import annotations

import re
import re._constants as sre_c
import re._parser as sre_parse

from lark.exceptions import GrammarError, LarkError, UnexpectedInput
from lark.lexer import PatternStr, TerminalDef
from lark.load_grammar import GrammarBuilder

from .errors import ConstraintError, line_col
from .grammar import Grammar, Rule, Terminal

# Lazy-quantifier idioms, rewritten into the longest-match regex that matches the same
# lexemes. Lark's lexer runs ``re.match``, so ``".*?"`` ends at the first closing quote;
# a longest-match lexer needs ``"[^"\n]*"`` instead. Each rewrite applies only where the
# idiom ends the pattern (up to closing groups and an optional ``(?:i)?`` flag suffix),
# so no later failure could make ``re`` backtrack the lazy part further.
_AT_END = r"(?=(?:\)|\(\?:i\)\?)*$)"


def _escaped_string(m: re.Match, dotall: bool) -> str:
    # a quote, then characters where a quote or backslash appears only escaped, a quote
    return r'"(?:[^"\\]|\\[\s\S])*"' if dotall else r'"(?:[^"\\\n]|\\[^\n])*"'


def _delimited(m: re.Match, dotall: bool) -> str:
    q = m.group(1)
    return f"{q}[^{q}]*{q}" if dotall else f"{q}[^{q}\\n]*{q}"


# (lazy idiom, rewrite) pairs applied by rewrite_lazy_idioms
LAZY_IDIOMS: list[tuple[re.Pattern, object]] = [
    # common.lark ESCAPED_STRING: ".*?(?<!\\)(\\\\)*?" (closing quote not escaped)
    (re.compile(r'(?<!")"\.\*\?\(\?<!\\\\\)\(\\\\\\\\\)\*\?"' + _AT_END), _escaped_string),
    # "(?:[^"\\]|\\.)*?" : the body cannot hold an unescaped quote, so lazy == greedy
    # wherever it stands (backtracking could never move the closing quote)
    (re.compile(r'"\(\?:\[\^"\\\\\]\|\\\\\.\)\*\?"'), lambda m, d: r'"(?:[^"\\]|\\.)*"'),
    # "...", `...`, '...' written with .*? : up to the first closing delimiter
    (re.compile(r'(?<![\'"`])([\'"`])\.\*\?\1' + _AT_END), _delimited),
    # C block comment /\*(.|\n)*?\*/ : up to the first */
    (
        re.compile(r"\\/\\\*\(\.\|\n\)\*\?\\\*\\/" + _AT_END),
        lambda m, d: r"\/\*(?:[^*]|\*+[^*/])*\*+\/",
    ),
]

_LOCATION_RE = re.compile(r"line (\d+),? column (\d+)")


def lark_grammar(text: str, start: str = "start") -> Grammar:
    """Compile Lark grammar ``text`` into the grammar IR, starting at rule ``start``.

    Raises ``ConstraintError`` (with ``line L, column C`` where Lark knows it) for a
    grammar Lark rejects, a missing start rule, a ``%declare``d terminal with no
    pattern, or a terminal regex a longest-match lexer cannot honour.
    """
    terminals, rules, ignore = _load(text, start)
    term_defs = {t.name: t for t in terminals}
    _check_declared(rules, ignore, term_defs, text)
    ir_terminals = {name: _terminal(td) for name, td in term_defs.items()}
    ir_rules = [Rule(r.origin.name, tuple(s.name for s in r.expansion)) for r in rules]
    if not any(r.lhs == start for r in ir_rules):
        raise ConstraintError(f"start rule {start!r} is not defined in the Lark grammar")
    g = Grammar(start, ir_rules, ir_terminals, list(ignore), source="lark")
    g.validate()
    return g


class _BundledImportsOnly(GrammarBuilder):
    """Lark's grammar loader, with ``%import`` limited to the bundled ``common`` grammar.

    A constraint comes from a request: it must never read files (``%import .evil``
    would read ``evil.lark`` next to the working directory, ``%import x.y`` would
    search ``x/y.lark``). Library imports of ``common`` are read from Lark's package.
    """

    def do_import(self, dotted_path, base_path, aliases, base_mangle=None) -> None:
        if base_path is not None or tuple(dotted_path) != ("common",):
            shown = ("." if base_path is not None else "") + ".".join(dotted_path)
            names = ", ".join(aliases)
            raise ConstraintError(
                f"%import {shown} ({names}) is not allowed: a grammar may only import Lark's "
                "bundled common grammar (e.g. %import common.NUMBER)"
            )
        super().do_import(dotted_path, base_path, aliases, base_mangle)


def _load(text: str, start: str):
    try:
        builder = _BundledImportsOnly(True, [])
        builder.load_grammar(text, "<grammar>")
        return builder.build().compile([start], set())
    except UnexpectedInput as e:
        raise ConstraintError(
            f"Lark grammar syntax error: {_first_line(e)}", f"line {e.line}, column {e.column}"
        ) from None
    except (GrammarError, LarkError, AssertionError) as e:  # Lark asserts on some bad grammars
        msg = str(e)
        m = _LOCATION_RE.search(msg)
        where = f"line {m.group(1)}, column {m.group(2)}" if m else _guess_location(msg, text)
        raise ConstraintError(f"Lark grammar error: {_first_line(e)}", where) from None


def _first_line(e: Exception) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0].strip() if lines else type(e).__name__


def _guess_location(msg: str, text: str) -> str | None:
    """Lark names the symbol in some errors but not its place: find its first use."""
    m = re.search(r"'([A-Za-z_][A-Za-z_0-9]*)'|: ([A-Za-z_][A-Za-z_0-9]*)\s*$", msg)
    return _locate(m.group(1) or m.group(2), text) if m else None


def _locate(name: str, text: str) -> str | None:
    m = re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text)
    return line_col(text, m.start()) if m else None


def _check_declared(rules, ignore, term_defs: dict[str, TerminalDef], text: str) -> None:
    used = {s.name for r in rules for s in r.expansion if s.is_term} | set(ignore)
    missing = sorted(used - set(term_defs))
    if missing:
        raise ConstraintError(
            f"terminal(s) {', '.join(missing)} have no pattern (declared with %declare for "
            "a postlexer such as Lark's Indenter, which a constraint cannot run)",
            _locate(missing[0], text),
        )


def _terminal(td: TerminalDef) -> Terminal:
    p = td.pattern
    if isinstance(p, PatternStr) and not p.flags:
        return Terminal(td.name, p.value, literal=True)
    regexp = rewrite_lazy_idioms(p.to_regexp(), dotall="s" in p.flags)
    _check_regex(td.name, regexp)
    return Terminal(td.name, regexp)


def rewrite_lazy_idioms(regexp: str, dotall: bool) -> str:
    """``regexp`` with each lazy idiom of ``LAZY_IDIOMS`` (Lark's shortest match) spelled
    as a greedy pattern that cuts the same lexemes (we lex longest-match)."""
    dotall = dotall or "(?s" in regexp
    for pattern, rewrite in LAZY_IDIOMS:
        regexp = pattern.sub(lambda m, f=rewrite: f(m, dotall), regexp)
    return regexp


# sre opcodes a longest-match lexer cannot honour, with the reason shown to the user.
_REFUSED_OPS = {
    sre_c.ASSERT: "a lookahead/lookbehind",
    sre_c.ASSERT_NOT: "a negative lookahead/lookbehind",
    sre_c.AT: "an anchor (^, $, \\b, \\A, \\Z)",
    sre_c.GROUPREF: "a backreference",
    sre_c.GROUPREF_EXISTS: "a conditional group",
    sre_c.MIN_REPEAT: "a lazy quantifier (*?, +?, ??) whose shortest-match meaning a longest-match lexer cannot keep",
}
for _name in ("POSSESSIVE_REPEAT", "ATOMIC_GROUP"):
    if hasattr(sre_c, _name):
        _REFUSED_OPS[getattr(sre_c, _name)] = "a possessive quantifier or atomic group"


def _check_regex(name: str, regexp: str) -> None:
    try:
        tree = sre_parse.parse(regexp)
    except re.error as e:
        raise ConstraintError(f"terminal {name}: invalid regex {regexp!r}: {e}") from None
    bad = _find_refused(tree)
    if bad:
        raise ConstraintError(f"terminal {name} uses {bad}, which is not supported: /{regexp}/")
    _check_with_regex_frontend(name, regexp)


def _find_refused(tree) -> str | None:
    for op, arg in tree:
        if op in _REFUSED_OPS:
            return _REFUSED_OPS[op]
        for sub in _subpatterns(op, arg):
            bad = _find_refused(sub)
            if bad:
                return bad
    return None


def _subpatterns(op, arg):
    if (
        op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT)
        or getattr(sre_c, "POSSESSIVE_REPEAT", None) == op
    ):
        return [arg[2]]
    if op == sre_c.SUBPATTERN:
        return [arg[3]]
    if op == sre_c.BRANCH:
        return list(arg[1])
    if op == getattr(sre_c, "ATOMIC_GROUP", None):
        return [arg]
    return []


def _check_with_regex_frontend(name: str, regexp: str) -> None:
    """Refuse now, naming the terminal, what the regex frontend would refuse later."""
    from .regex import parse_regex

    try:
        parse_regex(regexp)
    except ConstraintError as e:
        raise ConstraintError(f"terminal {name}: {e.message}", e.location) from None
