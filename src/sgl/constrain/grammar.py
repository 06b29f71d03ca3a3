"""The grammar IR: rules over lexemes, each lexeme a regex. Every frontend emits this.

A ``Grammar`` is a (weighted) context-free grammar whose terminals are lexemes.
Symbols in a rule's right-hand side are names: a name in ``terminals`` is a
terminal, any other name must be a nonterminal with at least one rule.
Weights are relative: the probability of a rule is its weight divided by the sum
of the weights of the rules with the same left-hand side (Stolcke's PCFG reading).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from operator import attrgetter

from . import analysis
from .errors import ConstraintError
from .regex_ast import Node


@dataclass(frozen=True)
class Terminal:
    """A lexeme. ``pattern`` is a regex in Python ``re`` syntax or a ready ``regex_ast`` node.

    ``literal=True`` means ``pattern`` is plain text, matched exactly.
    """

    name: str
    pattern: str | Node
    literal: bool = False


@dataclass(frozen=True)
class Rule:
    lhs: str
    rhs: tuple[str, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class UniqueKeys:
    """Which lexemes spell JSON structure, for the parser's duplicate-key check
    (``EarleyParser``): a key lexeme in ``keys`` read before a ``colon`` of the innermost
    open object cannot come again as a key of that object.

    Frontends use it for members their grammar lets repeat (a grammar that forbids
    repeats in any order needs states exponential in the members): the JSON Schema
    frontend's optional members (docs/json_schema_objects.md). Names missing from the
    final grammar are ignored.
    """

    open_object: tuple[str, ...]
    open_array: tuple[str, ...]
    close: tuple[str, ...]  # ``}`` and ``]``
    comma: tuple[str, ...]
    colon: tuple[str, ...]
    keys: frozenset[str]
    # every key lexeme of the objects (declared, other keys, pattern keys): JSON strings,
    # so no two read the same text and none is a prefix of another (masks inside a key
    # are the union of the alive keys', mask.MaskComputer._key_parts)
    strings: frozenset[str] = frozenset()


@dataclass
class Grammar:
    start: str
    rules: list[Rule]
    terminals: dict[str, Terminal]
    ignore: list[str] = field(default_factory=list)  # terminals allowed between any two lexemes
    source: str = ""  # what it was compiled from, for messages
    unique_keys: UniqueKeys | None = None  # keys the parser keeps from repeating (see UniqueKeys)

    def mark_trimmed(self) -> None:
        """Record that every rule is productive and reachable (``prune`` does), so later
        steps skip re-checking it; any change to the rules or terminals voids it."""
        self._trimmed = self._shape()

    def is_trimmed(self) -> bool:
        """Did ``prune`` (or ``mark_trimmed``) vouch for these very rules and terminals?"""
        return getattr(self, "_trimmed", None) == self._shape()

    def _shape(self) -> tuple:
        return (id(self.rules), len(self.rules), id(self.terminals), len(self.terminals), self.start)

    def validate(self) -> None:
        """Raise ``ConstraintError`` for undefined symbols or a missing start rule."""
        lhs = {r.lhs for r in self.rules}
        if self.start not in lhs:
            raise ConstraintError(f"start symbol {self.start!r} has no rule")
        for r in self.rules:
            if r.lhs in self.terminals:
                raise ConstraintError(f"{r.lhs!r} is both a terminal and a rule")
            if r.weight < 0:
                raise ConstraintError(f"rule {r.lhs!r} has a negative weight")
            for s in r.rhs:
                if s not in lhs and s not in self.terminals:
                    raise ConstraintError(f"rule {r.lhs!r} uses undefined symbol {s!r}")
        for name in self.ignore:
            if name not in self.terminals:
                raise ConstraintError(f"ignored terminal {name!r} is undefined")

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(repr((self.start, self.rules, sorted(self.terminals.items()), self.ignore)).encode())
        if self.unique_keys is not None:
            h.update(repr(self.unique_keys).encode())
        return h.hexdigest()


class GrammarBuilder:
    """Small helper for frontends: fresh names, literal terminals shared by text."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.terminals: dict[str, Terminal] = {}
        self._literal_names: dict[tuple, str] = {}
        self._counter = 0

    def fresh(self, hint: str = "r") -> str:
        self._counter += 1
        return f"{hint}#{self._counter}"

    def rule(self, lhs: str, rhs: tuple[str, ...] | list[str], weight: float = 1.0) -> None:
        self.rules.append(Rule(lhs, tuple(rhs), weight))

    def terminal(self, pattern: str | Node, hint: str = "T", literal: bool = False) -> str:
        key = (literal, pattern)  # nodes are hashable; repr() of a big node would be slow
        if key in self._literal_names:
            return self._literal_names[key]
        name = self.fresh(hint)
        self.terminals[name] = Terminal(name, pattern, literal)
        self._literal_names[key] = name
        return name

    def literal(self, text: str) -> str:
        return self.terminal(text, hint=repr(text), literal=True)

    def build(self, start: str, ignore: list[str] | None = None, source: str = "") -> Grammar:
        g = Grammar(start, self.rules, self.terminals, ignore or [], source)
        g.validate()
        return g


_weight = attrgetter("weight")
_NEGATIVE = (0.0).__gt__  # w < 0 (a weight of another type may answer NotImplemented: validated then)


def prune(g: Grammar, dead: frozenset[str] = frozenset(), refusal: ConstraintError | None = None) -> Grammar:
    """Drop rules that cannot derive text (e.g. ``false`` subschemas, or a terminal in
    ``dead``: one whose language is empty) and unreachable ones.

    Raises ``refusal`` (default: "the grammar matches no text") when the start symbol
    derives no text: such a constraint could only dead-end generation. Linear time:
    each rule counts its not-yet-productive symbols (worklist). The rules come out
    bottom-up (dependencies first), so a one-pass fixpoint downstream (the parser's
    productivity and nullability checks) converges at once.
    """
    terminals_of = g.terminals
    live_terms = terminals_of.keys() - dead
    pairs = analysis.pairs(g.rules)
    found = analysis.productive(pairs, live_terms)
    productive = set(found)
    if g.start not in productive:
        raise refusal or ConstraintError(f"the grammar matches no text (its start symbol {g.start!r} derives none)")
    alive = productive | live_terms
    # the rules over live symbols by left-hand side, then a walk from the start that
    # also collects the terminals used (one pass each; this ran per compile)
    by_lhs: dict[str, list[int]] = {}
    for i, (lhs, rhs) in enumerate(pairs):
        if lhs in productive and alive.issuperset(rhs):
            got = by_lhs.get(lhs)
            if got is None:
                by_lhs[lhs] = [i]
            else:
                got.append(i)
    reach, todo, used = {g.start}, [g.start], set()
    while todo:
        for i in by_lhs[todo.pop()]:
            for s in pairs[i][1]:
                if s in by_lhs:
                    if s not in reach:
                        reach.add(s)
                        todo.append(s)
                elif s in terminals_of:
                    used.add(s)
    # bottom-up: each left-hand side's rules (in their order) where it was found
    rules = [g.rules[i] for sym in found if sym in reach for i in by_lhs[sym]]
    ignore = [n for n in g.ignore if n not in dead]
    used.update(ignore)
    terminals = {k: v for k, v in terminals_of.items() if k in used}
    out = Grammar(g.start, rules, terminals, ignore, g.source, g.unique_keys)
    # every symbol used is defined (a kept rule's symbols are productive, so have kept
    # rules, and reachable through it); what validate() checks besides, checked here,
    # and validate() names the first fault as before
    if (not reach.isdisjoint(terminals_of) or any(map(_NEGATIVE, map(_weight, rules)))
            or not terminals.keys() >= set(ignore)):
        used |= {s for r in rules for s in r.rhs if s in terminals_of}  # a name both ways
        out.terminals = {k: v for k, v in terminals_of.items() if k in used}
        out.validate()
    out.mark_trimmed()
    return out
