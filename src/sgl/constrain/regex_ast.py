"""The character-level regex AST every frontend lowers lexemes into.

Nodes are immutable and hashable. ``Chars`` holds Unicode code points (matched as
UTF-8 bytes by ``automata.compiler.to_dfa``); ``Bytes`` holds raw byte values for the rare
terminal that is defined on bytes. Anchors and lookarounds do not exist here: a
terminal always matches its whole text.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_CODEPOINT = 0x10FFFF


def _hash_ranges(self) -> int:
    """A node's hash, computed once and kept as ``_hash_once``: nodes are immutable and
    serve as cache keys all over the compiler (a lexeme's DFA, compiled items,
    derivatives), and the generated dataclass hash walked the whole tree at every lookup.
    The value is ``hash((class name, *fields))``, spelled out per shape (no generator, no
    getattr: fresh nodes are hashed by the thousand in derivatives); this one for
    ``Chars`` and ``Bytes`` (one field: ``ranges``)."""
    d = self.__dict__
    got = d.get("_hash_once")
    if got is None:
        got = d["_hash_once"] = hash((type(self).__name__, self.ranges))
    return got


def _hash_items(self) -> int:
    """``_hash_once`` of ``Seq`` and ``Alt`` (one field: ``items``)."""
    d = self.__dict__
    got = d.get("_hash_once")
    if got is None:
        got = d["_hash_once"] = hash((type(self).__name__, self.items))
    return got


def _hash_repeat(self) -> int:
    """``_hash_once`` of ``Repeat`` (fields ``item``, ``min``, ``max``)."""
    d = self.__dict__
    got = d.get("_hash_once")
    if got is None:
        got = d["_hash_once"] = hash((type(self).__name__, self.item, self.min, self.max))
    return got


def _state_without_hash(self) -> dict:
    """Pickled state without the cached hash: str hashes differ between processes."""
    state = dict(self.__dict__)
    state.pop("_hash_once", None)
    state.pop("_bool_ops", None)  # derivatives.has_boolean_ops's answer, kept on the node
    return state


@dataclass(frozen=True)
class Chars:
    """A set of code points as sorted, disjoint, non-adjacent inclusive ranges."""

    ranges: tuple[tuple[int, int], ...]
    __hash__ = _hash_ranges
    __getstate__ = _state_without_hash


@dataclass(frozen=True)
class Bytes:
    """A set of raw byte values (0..255) as sorted, disjoint inclusive ranges."""

    ranges: tuple[tuple[int, int], ...]
    __hash__ = _hash_ranges
    __getstate__ = _state_without_hash


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]
    __hash__ = _hash_items
    __getstate__ = _state_without_hash


@dataclass(frozen=True)
class Alt:
    items: tuple[Node, ...]
    __hash__ = _hash_items
    __getstate__ = _state_without_hash


@dataclass(frozen=True)
class Repeat:
    item: Node
    min: int
    max: int | None  # None = unbounded
    __hash__ = _hash_repeat
    __getstate__ = _state_without_hash


Node = Chars | Bytes | Seq | Alt | Repeat

EMPTY = Seq(())  # matches the empty string
NOTHING = Alt(())  # matches no string at all


def nullable(node: Node) -> bool:
    """Does ``node`` match the empty string?"""
    words = getattr(node, "words", None)  # automata.compiler.LiteralAlt: don't expand its items
    if words is not None:
        return "" in words
    if isinstance(node, Seq):
        return all(nullable(i) for i in node.items)
    if isinstance(node, Alt):
        return any(nullable(i) for i in node.items)
    if isinstance(node, Repeat):
        return node.min == 0 or nullable(node.item)
    return False


def normalize_ranges(ranges) -> tuple[tuple[int, int], ...]:
    """Sort and merge overlapping or adjacent ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def chars(*ranges: tuple[int, int]) -> Chars:
    return Chars(normalize_ranges(ranges))


def char_class(text: str) -> Chars:
    """The set of the given characters (no range syntax)."""
    return Chars(normalize_ranges((ord(c), ord(c)) for c in text))


def negate(cs: Chars) -> Chars:
    out, lo = [], 0
    for a, b in cs.ranges:
        if a > lo:
            out.append((lo, a - 1))
        lo = b + 1
    if lo <= MAX_CODEPOINT:
        out.append((lo, MAX_CODEPOINT))
    return Chars(tuple(out))


def literal(text: str) -> Node:
    """A node matching exactly ``text``."""
    if len(text) == 1:
        return Chars(((ord(text), ord(text)),))
    return Seq(tuple(Chars(((ord(c), ord(c)),)) for c in text))


def seq(*items: Node) -> Node:
    """Concatenation; an empty alternative (NOTHING) anywhere makes the whole NOTHING."""
    flat: list[Node] = []
    for it in items:
        if isinstance(it, Alt) and not it.items:
            return NOTHING
        if isinstance(it, Seq):
            flat.extend(it.items)
        else:
            flat.append(it)
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def alt(*items: Node) -> Node:
    flat: list[Node] = []
    for it in items:
        if isinstance(it, Alt):
            flat.extend(it.items)
        elif it not in flat:
            flat.append(it)
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))


def repeat(item: Node, lo: int = 0, hi: int | None = None) -> Node:
    return Repeat(item, lo, hi)


def optional(item: Node) -> Node:
    return Repeat(item, 0, 1)
