"""Grammar analyses shared by the parsers and frontends: productive, nullable and
reachable nonterminals, FIRST and FOLLOW sets.

Rules are given as ``(lhs, rhs)`` pairs (anything with ``.lhs``/``.rhs`` goes through
``pairs``). Every analysis is a worklist, linear in the grammar's size (FIRST/FOLLOW:
in its size times the number of terminals), so a grammar of 10^5 rules analyses in
well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import TypeVar

S = TypeVar("S", bound=Hashable)
RulePair = tuple[S, Sequence[S]]

END = "$end"  # the FOLLOW marker of the end of the text


def pairs(rules: Iterable) -> list[tuple]:
    """``(lhs, rhs)`` of rule objects with ``.lhs`` and ``.rhs`` (``grammar.Rule``)."""
    return [(r.lhs, r.rhs) for r in rules]


def derivable(rules: Sequence[RulePair], ground: Callable[[S], bool] | AbstractSet[S]) -> list[S]:
    """Nonterminals that derive a string of ``ground`` symbols, in the order found.

    ``ground = is_terminal`` gives the productive nonterminals (they derive some text);
    ``ground = lambda s: False`` the nullable ones (they derive the empty string).
    ``ground`` may also be the set of those symbols (faster: no call per symbol).
    Each rule counts its occurrences of symbols not yet known to derive (a repeated
    symbol counts, and is counted down, once per occurrence: no set per rule); a
    nonterminal is found when one of its rules reaches zero. The order is bottom-up: a
    rule's symbols are found before its left-hand side.
    """
    missing: list[int] = []
    users: dict[S, list[int]] = {}
    found: list[S] = []
    done: set[S] = set()
    if not isinstance(ground, AbstractSet):
        is_ground = ground
        ground = {s for _, rhs in rules for s in rhs if is_ground(s)}
    users_of = users.get
    for i, (lhs, rhs) in enumerate(rules):
        need = 0
        for s in rhs:
            if s not in ground:
                need += 1
                got = users_of(s)
                if got is None:
                    users[s] = [i]
                else:
                    got.append(i)
        missing.append(need)
        if not need and lhs not in done:
            done.add(lhs)
            found.append(lhs)
    k = 0
    while k < len(found):
        sym = found[k]
        k += 1
        for i in users.get(sym, ()):
            missing[i] -= 1
            if missing[i] == 0:
                lhs = rules[i][0]
                if lhs not in done:
                    done.add(lhs)
                    found.append(lhs)
    return found


def productive(rules: Sequence[RulePair], is_terminal: Callable[[S], bool] | AbstractSet[S]) -> list[S]:
    """Nonterminals that derive some string of terminals, bottom-up (see ``derivable``)."""
    return derivable(rules, is_terminal)


def nullable(rules: Sequence[RulePair]) -> set:
    """Nonterminals that derive the empty string."""
    return set(derivable(rules, frozenset()))


def reachable(rules: Iterable[RulePair], start: S) -> set[S]:
    """Left-hand sides reachable from ``start`` (``start`` included when it has rules)."""
    by_lhs: dict[S, list[Sequence[S]]] = {}
    for lhs, rhs in rules:
        by_lhs.setdefault(lhs, []).append(rhs)
    if start not in by_lhs:
        return set()
    seen, todo = {start}, [start]
    while todo:
        for rhs in by_lhs[todo.pop()]:
            for s in rhs:
                if s in by_lhs and s not in seen:
                    seen.add(s)
                    todo.append(s)
    return seen


def trim(rules: Sequence[RulePair], start: S, is_terminal: Callable[[S], bool]) -> list[int]:
    """Indexes of the rules that use only productive symbols and are reachable from
    ``start``, in their order; empty when ``start`` derives no text."""
    prod = set(productive(rules, is_terminal))
    keep = [i for i, (lhs, rhs) in enumerate(rules)
            if lhs in prod and all(s in prod or is_terminal(s) for s in rhs)]
    seen = reachable([rules[i] for i in keep], start)
    return [i for i in keep if rules[i][0] in seen]


def first_follow(
    rules: Sequence[RulePair], start: S, is_terminal: Callable[[S], bool]
) -> tuple[dict[S, set[S]], dict[S, set[S]]]:
    """FIRST sets of the nonterminals and FOLLOW sets of the terminals.

    FOLLOW holds the terminals that may come right after a terminal, and ``END``
    where the text may end after it.
    """
    null = nullable([(lhs, rhs) for lhs, rhs in rules])
    first: dict[S, set[S]] = {lhs: set() for lhs, _ in rules}
    changed = True
    while changed:
        changed = False
        for lhs, rhs in rules:
            f = first[lhs]
            before = len(f)
            for s in rhs:
                if is_terminal(s):
                    f.add(s)
                    break
                f |= first[s]
                if s not in null:
                    break
            changed = changed or len(f) != before
    follow_nt: dict[S, set] = {nt: set() for nt in first}
    follow_nt.setdefault(start, set()).add(END)
    follow_t: dict[S, set] = {}
    changed = True
    while changed:
        changed = False
        for lhs, rhs in rules:
            # right to left, carrying FIRST of the suffix
            suffix: set = set(follow_nt[lhs])
            for s in reversed(rhs):
                target = follow_t.setdefault(s, set()) if is_terminal(s) else follow_nt[s]
                if not suffix <= target:
                    target |= suffix
                    changed = True
                if is_terminal(s):
                    suffix = {s}
                else:
                    suffix = first[s] | suffix if s in null else set(first[s])
    return first, follow_t
