"""The lexeme of "any JSON object key but these", built as a DFA directly from a key trie.

``additionalProperties`` (and the other "keys not declared" members) need the JSON
strings whose decoded value is none of the declared property names. The frontend
describes that language over decoded characters as a complemented trie (see
``json_schema.emit_objects._not_in_set``); escaping it for JSON and determinising
it through ``automaton.to_dfa`` took 5-65 ms per object, a different one per schema,
most of a typical compile. ``KeyNotIn`` is the same lexeme as a regex node that
``to_dfa`` builds in one pass over the trie instead:

- every trie node is one state at a character boundary; it reads one *encoded*
  character by running, side by side, the automaton of all encoded characters
  (the "reader") and the automata of the encodings of the node's children (one per
  child character, from ``json_strings.json_chars``, so the spellings are exactly
  those of the regex path);
- a child's encoding completed leads to the child's state; any other character
  completed leads off the trie, into a copy of the any-string lexeme (every
  continuation is then another key); a closing quote is allowed where the prefix
  read is not a name;
- states are hash-consed by what they still read, so equal subtries are one state,
  and the part above the any-string copy is acyclic: merging equal rows until none
  are left (``dfa._minimize``) makes the result minimal, as ``to_dfa`` promises.

Which spellings a character has depends on the set it is read from (see
``json_strings``): where a node has a printable-ASCII child, the other characters
are read without ``\\u`` spellings for printable ASCII (the regex path's ``others``
class then lacks some of printable ASCII); elsewhere with all of them. Both readers
are built here from ``json_chars`` once. ``KeyNotIn.items`` is the regex path's node
(built only if someone walks it), so every other consumer sees the same language.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np

from .automaton import to_dfa
from .derivatives import ANY_CHAR, ANY_STRING
from .dfa import ByteDFA, _Dfa, _merge_equal_columns, _minimize, _too_many_states
from .regex_ast import NOTHING, Alt, Chars, Node, Seq, alt, literal, negate, normalize_ranges, seq

_QUOTE = 0x22
_PRINTABLE = (0x20, 0x7E)


class KeyNotIn(Seq):
    """JSON strings (quotes included) whose decoded value is not in ``names``.

    The trie of the names is cut where it would exceed ``max_nodes`` nodes: below
    the cut every string is excluded (``key_trie``). ``items`` is ``not_in_set``'s
    node escaped for JSON, built lazily (the regex path, for anyone who walks it);
    ``direct_byte_dfa`` builds the DFA from the trie. Compares and hashes by
    ``(names, max_nodes)``.
    """

    def __init__(self, names: tuple[str, ...], max_nodes: int):  # noqa: D107
        object.__setattr__(self, "names", tuple(names))
        object.__setattr__(self, "max_nodes", max_nodes)
        object.__setattr__(self, "cut", key_trie(self.names, max_nodes)[1])
        object.__setattr__(self, "_hash", hash(("KeyNotIn", self.names, max_nodes)))

    @property
    def decoded(self) -> Node:
        """The same language over decoded characters (``not_in_set``)."""
        return not_in_set(self.names, self.max_nodes)[0]

    @property
    def items(self) -> tuple[Node, ...]:  # type: ignore[override]
        # one lazy item: split_counters looks at a Seq's items but not inside an Alt
        return (_Escaped(self.decoded),)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if isinstance(other, KeyNotIn):
            return self.names == other.names and self.max_nodes == other.max_nodes
        return isinstance(other, Seq) and self.items == other.items

    def __repr__(self) -> str:
        return f"KeyNotIn({len(self.names)} names, cut={self.cut})"

    def direct_byte_dfa(self, max_states: int = 50_000) -> ByteDFA:
        """The minimal ``ByteDFA`` of this lexeme, built from the trie (see the module)."""
        trie, cut = key_trie(self.names, self.max_nodes)
        return _Builder(trie, cut, max_states).run()


@lru_cache(maxsize=1024)
def key_trie(names: tuple[str, ...], max_nodes: int) -> tuple[dict, int | None]:
    """The trie of ``names`` (``""`` marks a name's end) and the depth where it is
    cut (None: not cut): the deepest level that keeps it within ``max_nodes``."""
    trie: dict = {}
    for t in names:
        node = trie
        for ch in t:
            node = node.setdefault(ch, {})
        node[""] = True
    level, count, depth = [trie], 1, 0
    while level and depth < 60:
        nxt = [sub for nd in level for ch, sub in nd.items() if ch != ""]
        if count + len(nxt) > max_nodes:
            break
        count += len(nxt)
        level = nxt
        depth += 1
    cut = depth if level and any(len(nd) > ("" in nd) for nd in level) else None
    return trie, cut


@lru_cache(maxsize=1024)
def not_in_set(names: tuple[str, ...], max_nodes: int) -> tuple[Node, bool]:
    """Decoded strings other than ``names`` (a complemented trie, built directly).

    Returns ``(node, exact)``. The trie is cut as ``key_trie`` says: below the cut
    every string is excluded, which is sound (other keys that share a long prefix
    with a declared name are refused).
    """
    if not names:
        return ANY_STRING, True
    trie, cut = key_trie(names, max_nodes)

    def build(node: dict, d: int) -> Node:
        if cut is not None and d >= cut:
            return NOTHING
        kids = sorted(ch for ch in node if ch != "")
        parts = []
        if "" not in node:
            parts.append(seq())  # this prefix itself is not a name
        used = tuple((ord(c), ord(c)) for c in kids)
        others = negate(Chars(normalize_ranges(used)))
        if others.ranges:
            parts.append(seq(others, ANY_STRING))
        for ch in kids:
            rest = build(node[ch], d + 1)
            if rest != NOTHING:
                parts.append(seq(literal(ch), rest))
        return alt(*parts) if parts else NOTHING

    return build(trie, 0), cut is None


class _Escaped(Alt):
    """``json_string_node(decoded)`` as an Alt of one item, built on first use."""

    def __init__(self, decoded: Node):  # noqa: D107
        object.__setattr__(self, "decoded", decoded)

    @property
    def items(self) -> tuple[Node, ...]:  # type: ignore[override]
        got = self.__dict__.get("_items")
        if got is None:
            from .json_strings import json_string_node

            got = (json_string_node(self.decoded),)
            object.__setattr__(self, "_items", got)
        return got

    def __hash__(self) -> int:
        return hash(("_Escaped", self.decoded))

    def __eq__(self, other) -> bool:
        if isinstance(other, _Escaped):
            return self.decoded == other.decoded
        return isinstance(other, Alt) and self.items == other.items

    def __repr__(self) -> str:
        return "_Escaped(...)"


class _Reader:
    """One encoded character as a DFA (prefix-free: one accepting state, no way on)."""

    def __init__(self, dfa: ByteDFA):
        self.table = dfa.table.astype(np.int64)
        acc = np.flatnonzero(dfa.accepting)
        assert len(acc) == 1 and not (self.table[acc[0]] >= 0).any(), "an encoded character is prefix-free"
        self.sink = int(acc[0])


_lock = threading.Lock()
_shared: dict = {}


def _readers() -> dict:
    """The any-string lexeme and the two character readers, built once."""
    with _lock:
        if not _shared:
            from .json_strings import any_string_lexeme, json_chars

            # any set lacking part of printable ASCII reads it without \u spellings
            restricted = Alt((json_chars(Chars(((0, 0x1F), (0x7F, ANY_CHAR.ranges[0][1])))),
                              json_chars(Chars(((0x20, 0x4F),))), json_chars(Chars(((0x50, 0x7E),)))))
            _shared["any"] = to_dfa(any_string_lexeme())
            _shared["full"] = _Reader(to_dfa(json_chars(ANY_CHAR)))
            _shared["restricted"] = _Reader(to_dfa(restricted))
        return _shared


@lru_cache(maxsize=4096)
def _spellings(cp: int) -> _Reader:
    """The encodings of the one character ``cp``, as the regex path spells a trie edge."""
    from .json_strings import json_chars

    return _Reader(to_dfa(json_chars(Chars(((cp, cp),)))))


class _Builder:
    """One construction: rows appended as states are found, hash-consed by key."""

    def __init__(self, trie: dict, cut: int | None, max_states: int):
        self.trie, self.cut, self.max_states = trie, cut, max_states
        shared = _readers()
        any_dfa = shared["any"]
        self.full, self.res = shared["full"], shared["restricted"]
        g = any_dfa.table.astype(np.int64)
        self.body = int(g[0, _QUOTE])  # inside the string, at a character boundary
        self.end = int(g[self.body, _QUOTE])
        # a copy of the any-string lexeme but its start (never reached again), ids 1..
        keep = [s for s in range(len(g)) if s != 0]
        self.gmap = np.full(len(g) + 1, -1, dtype=np.int64)  # index -1 (dead) stays -1
        self.gmap[keep] = np.arange(1, len(keep) + 1)
        self.rows: list[np.ndarray] = [np.full(256, -1, dtype=np.int64)]  # 0: the start
        self.accepting: list[bool] = [False]
        for s in keep:
            self.rows.append(self.gmap[g[s]])
            self.accepting.append(bool(any_dfa.accepting[s]))
        self.memo: dict = {}
        self.f2a = _full_to_any_map()
        # the restricted reader's states, made on first use, each leading back into
        # the copy when its character is done
        self.res_map = np.full(len(self.res.table) + 1, -2, dtype=np.int64)
        self.res_map[-1] = -1
        self.res_map[self.res.sink] = self.gmap[self.body]

    def _res(self, targets: np.ndarray) -> np.ndarray:
        """The restricted reader's states ``targets`` as states here (made if new)."""
        for r in np.unique(targets[self.res_map[targets] == -2]).tolist():
            if self.res_map[r] == -2:  # not made meanwhile, as a shared descendant
                self.res_map[r] = self._add(self._res(self.res.table[r]), False)
        return self.res_map[targets]

    def _add(self, row: np.ndarray, accepting: bool) -> int:
        if len(self.rows) >= self.max_states:
            raise _too_many_states(self.max_states)
        self.rows.append(row)
        self.accepting.append(accepting)
        return len(self.rows) - 1

    def run(self) -> ByteDFA:
        root = self.node(self.trie, 0)
        if root < 0:  # cut at the root: no string at all
            return ByteDFA(np.full((1, 256), -1, dtype=np.int32), np.zeros(1, dtype=bool))
        self.rows[0][_QUOTE] = root
        table = np.stack(self.rows)
        d = _Dfa(table, self.accepting, np.arange(257), minimal=False, finite=False, acyclic_top=True)
        # the part above the any-string copy is acyclic and the copy minimal: merging
        # equal rows until none are left is exact (dfa._minimize)
        d = _merge_equal_columns(d)
        d.acyclic_top = True  # (the merge makes a new _Dfa without the flag)
        return _minimize(d).to_byte_dfa()

    def node(self, trie: dict, depth: int) -> int:
        """The state at a trie node (-1 below the cut: nothing goes on from there)."""
        if self.cut is not None and depth >= self.cut:
            return -1
        kids = sorted(ch for ch in trie if ch != "")
        live = tuple((ord(ch), 0, self.node(trie[ch], depth + 1)) for ch in kids)
        restricted = any(_PRINTABLE[0] <= ord(ch) <= _PRINTABLE[1] for ch in kids)
        return self.state(restricted, None, live, "" not in trie)

    def state(self, restricted: bool, r: int | None, live: tuple, closable: bool) -> int:
        """The state reading one character: the reader at ``r`` (None: at its start),
        children's spellings at ``live`` = ((code point, spelling state, target), ...)."""
        key = (restricted, r, live, closable)
        got = self.memo.get(key)
        if got is not None:
            return got
        reader = self.res if restricted else self.full
        at = 0 if r is None else r
        by_byte: dict[int, list] = {}  # bytes that go on in a child's spelling
        for cp, s, target in live:
            spell = _spellings(cp)
            for b in np.flatnonzero(spell.table[s] >= 0).tolist():
                by_byte.setdefault(b, []).append((cp, int(spell.table[s, b]), target))
        nxt = reader.table[at].copy()
        nxt[list(by_byte)] = -1  # set below (no state made for them here: unreachable)
        if restricted:
            row = self._res(nxt)
        else:  # the full reader is the copy's own: its end is the boundary
            row = np.where(nxt == reader.sink, self.gmap[self.body], -1)
            mid = (nxt >= 0) & (nxt != reader.sink)
            if mid.any():
                row[mid] = self.gmap[[self.f2a[s] for s in nxt[mid].tolist()]]
        if r is None:  # at a character boundary: the closing quote, where allowed
            row[_QUOTE] = self.gmap[self.end] if closable else -1
        for b, moved in by_byte.items():
            done = [t for cp, s, t in moved if s == _spellings(cp).sink]
            if done:  # encodings are prefix-free: one character completed, no other alive
                row[b] = done[0]
            else:
                row[b] = self.state(restricted, int(reader.table[at, b]), tuple(moved), True)
        got = self.memo[key] = self._add(row, False) if (row >= 0).any() else -1
        return got


@lru_cache(maxsize=1)
def _full_to_any_map() -> dict:
    """Full reader state -> any-string lexeme state reached by the same bytes from the
    boundary (the lexeme is quotes around a repeat of that reader)."""
    shared = _readers()
    f, g = shared["full"].table, shared["any"].table.astype(np.int64)
    body = int(g[0, _QUOTE])
    out, todo = {0: body}, [0]
    while todo:
        s = todo.pop()
        for b in np.flatnonzero(f[s] >= 0).tolist():
            t = int(f[s, b])
            if t not in out:
                out[t] = int(g[out[s], b])
                todo.append(t)
    return out
