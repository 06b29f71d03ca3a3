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


@dataclass
class Grammar:
    start: str
    rules: list[Rule]
    terminals: dict[str, Terminal]
    ignore: list[str] = field(default_factory=list)  # terminals allowed between any two lexemes
    source: str = ""  # what it was compiled from, for messages

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
