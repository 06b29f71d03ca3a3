"""The lexeme of "any JSON object key but these", built as a DFA directly from a key trie.

``additionalProperties`` (and the other "keys not declared" members) need the JSON
strings whose decoded value is none of the declared property names. The frontend
describes that language over decoded characters as a complemented trie (see
``not_in_set`` below); escaping it for JSON and determinising
it through ``automata.compiler.to_dfa`` took 5-65 ms per object, a different one per schema,
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

Where every name is spelled in one byte a character (printable ASCII but ``"``, ``\\``
and ``/``: all 725 key sets of the MaskBench sample), ``_one_byte_dfa`` builds the same
table in one pass over the trie (each node hash-consed by (is a name, its children's
states), the rows written together by numpy), about 2.5x faster than the per-state
construction (``_Builder``, used elsewhere).
"""

from __future__ import annotations

import hashlib
import threading
from functools import lru_cache

import numpy as np

from .automata.compiler import to_dfa
from .automata.derivatives import ANY_CHAR, ANY_STRING
from .automata.dfa import ByteDFA, _too_many_states, equal_rows
from .regex_ast import NOTHING, Alt, Chars, Node, Seq, alt, literal, negate, normalize_ranges, seq

_QUOTE = 0x22
_PRINTABLE = (0x20, 0x7E)
# the characters a key spells in one byte only, as itself: printable ASCII but " \\ and /
# (JSON spells / also as \/); checked against ``json_chars`` by tests/test_json_keys.py
_ONE_BYTES = [b for b in range(_PRINTABLE[0], _PRINTABLE[1] + 1) if b not in (_QUOTE, 0x5C, 0x2F)]
ONE_BYTE_KEY_CHARS = frozenset(map(chr, _ONE_BYTES))


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

    @property
    def decoded(self) -> Node:
        """The same language over decoded characters (``not_in_set``)."""
        return not_in_set(self.names, self.max_nodes)[0]

    @property
    def items(self) -> tuple[Node, ...]:  # type: ignore[override]
        # one lazy item: split_counters looks at a Seq's items but not inside an Alt
        return (_Escaped(self),)

    def __hash__(self) -> int:  # not stored: str hashes differ between processes (pickling)
        return hash(("KeyNotIn", self.names, self.max_nodes))

    def __eq__(self, other) -> bool:
        if isinstance(other, KeyNotIn):
            return self.names == other.names and self.max_nodes == other.max_nodes
        return isinstance(other, Seq) and self.items == other.items

    def __repr__(self) -> str:
        return f"KeyNotIn({len(self.names)} names, cut={self.cut})"

    def direct_byte_dfa(self, max_states: int = 50_000, batched: bool = True) -> ByteDFA:
        """The minimal ``ByteDFA`` of this lexeme, built from the trie (see the module).
        ``batched=False``: by the general construction (``_Builder``) even where every
        name is spelled in one byte a character (the same table; for tests)."""
        trie, cut = key_trie(self.names, self.max_nodes)
        dfa = _one_byte_dfa(self.names, trie, cut, max_states) if batched else None
        if dfa is None:
            dfa = _Builder(trie, cut, max_states).run()
        # the lexer's content key, from what the table follows from: nothing leads back
        # to state 0 (the bottom's ids start at 1) and it does not accept, so the table
        # is its own fresh-start form; scanning and hashing its ~60 KB was ~70 us a set
        dfa.content_key = hashlib.sha256(repr(("KeyNotIn", self.names, self.max_nodes)).encode()).digest()[:16]
        return dfa


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
    """``json_string_node(key.decoded)`` as an Alt of one item, built on first use."""

    def __init__(self, key: KeyNotIn):  # noqa: D107
        object.__setattr__(self, "key", key)

    @property
    def items(self) -> tuple[Node, ...]:  # type: ignore[override]
        got = self.__dict__.get("_items")
        if got is None:
            from .json_strings import json_string_node

            got = (json_string_node(self.key.decoded),)
            object.__setattr__(self, "_items", got)
        return got

    def __hash__(self) -> int:
        return hash(("_Escaped", self.key))

    def __eq__(self, other) -> bool:
        if isinstance(other, _Escaped):
            return self.key == other.key
        return isinstance(other, Alt) and self.items == other.items

    def __repr__(self) -> str:
        return f"_Escaped({self.key!r})"


class _Reader:
    """One encoded character as a DFA (prefix-free: one accepting state, no way on)."""

    def __init__(self, dfa: ByteDFA):
        self.table = dfa.table.astype(np.int64)
        acc = np.flatnonzero(dfa.accepting)
        assert len(acc) == 1 and not (self.table[acc[0]] >= 0).any(), "an encoded character is prefix-free"
        self.sink = int(acc[0])


class _Bottom:
    """What every construction shares, built once: the any-string lexeme without its
    start and the restricted reader's states (each leading back into it when its
    character is done), merged where equivalent into one minimal DFA ("the bottom").

    ``table`` holds its rows (ids 1.., id 0 left for the start of a construction);
    ``start_rows[restricted]`` is the row of a character boundary inside a key before
    the closing quote is decided; ``extra`` marks the restricted reader's own states,
    kept in a result only where it reaches them.
    """

    def __init__(self) -> None:
        from .json_strings import any_string_lexeme, json_chars

        g_dfa = to_dfa(any_string_lexeme())
        # any set lacking part of printable ASCII reads it without \u spellings
        restricted = Alt((json_chars(Chars(((0, 0x1F), (0x7F, ANY_CHAR.ranges[0][1])))),
                          json_chars(Chars(((0x20, 0x4F),))), json_chars(Chars(((0x50, 0x7E),)))))
        full, res = _Reader(to_dfa(json_chars(ANY_CHAR))), _Reader(to_dfa(restricted))
        g = g_dfa.table.astype(np.int64)
        assert not (g == 0).any(), "the any-string lexeme never comes back to its start"
        body = int(g[0, _QUOTE])
        self.end_g = int(g[body, _QUOTE])
        # ids: 0 unused (a construction's start), G states 1..ng-1 (G's start dropped),
        # then the restricted reader's states but its start and end
        ng = len(g)
        gid = np.arange(ng + 1)  # G state s -> id s (s >= 1); index -1 -> -1
        gid[-1] = -1
        res_states = [r for r in range(len(res.table)) if r not in (0, res.sink)]
        rid = np.full(len(res.table) + 1, -1, dtype=np.int64)
        rid[res_states] = ng + np.arange(len(res_states))
        rid[res.sink] = body
        n = ng + len(res_states)
        table = np.full((n, 256), -1, dtype=np.int64)
        table[1:ng] = gid[g[1:]]
        table[ng:] = rid[res.table[res_states]]
        accepting = np.zeros(n, dtype=bool)
        accepting[:ng] = g_dfa.accepting
        accepting[0] = False
        # the reader's states on top of the (minimal) lexeme: merging equal rows is exact
        canon = np.arange(n)
        while True:
            sig = np.column_stack([accepting, np.where(table >= 0, canon[table.clip(0)], -1)])
            # each row's first equal row (as np.unique(axis=0) gave, ~13 ms once a process
            # for its 257-field structured sort): equal_rows hashes the rows instead
            first, inv = equal_rows(sig)
            new = first[inv]
            new[0] = 0  # row 0 is a placeholder, kept apart
            if (new == canon).all():
                break
            canon = new
        keep = np.flatnonzero(canon == np.arange(n))
        renum = np.full(n + 1, -1, dtype=np.int64)
        renum[keep] = np.arange(len(keep))
        to_id = renum[canon]  # old id -> new id
        to_id = np.append(to_id, -1)
        self.table = to_id[np.where(table[keep] >= 0, table[keep], -1)]
        self.accepting = accepting[keep]
        self.body, self.end = int(to_id[body]), int(to_id[self.end_g])
        # a class keeps its first member: the lexeme's states come first, so the
        # reader's own states are the ones after them
        self.extra = keep >= ng
        # a character boundary: the full reader is the lexeme's own body state; the
        # restricted one, its start's row into the bottom
        f2a = _full_to_any(full, g, body)
        full_row = np.where(full.table[0] == full.sink, body, -1)
        mid = (full.table[0] >= 0) & (full.table[0] != full.sink)
        full_row[mid] = [f2a[x] for x in full.table[0][mid].tolist()]
        self.start_rows = {False: to_id[np.where(full_row >= 0, full_row, -1)],
                           True: to_id[rid[res.table[0]]]}
        self.start_rows[False][_QUOTE] = -1  # the closing quote: decided per state
        self.start_rows[True][_QUOTE] = -1
        self.start_stack = np.stack([self.start_rows[False], self.start_rows[True]])
        assert (self.start_stack[:, _ONE_BYTES] >= 0).all(), "the one-byte spellings are read"
        assert not self.extra[self.start_stack[:, _ONE_BYTES + [_QUOTE]].clip(0)].any()
        assert not self.extra[self.end]
        self.pruned = {has_plain: self._pruned(has_plain) for has_plain in (False, True)}
        self.live = (self.table >= 0).any(axis=1).tolist()  # rows with a way on
        self.start_live = {r: bool((row >= 0).any()) for r, row in self.start_rows.items()}

    def reach(self, used: np.ndarray) -> np.ndarray:
        """``used`` (a flag per row, from id 0; index -1 for "dead") with the restricted
        reader's own states reached from those flagged added, in place."""
        extra = np.flatnonzero(self.extra)
        count = -1
        while count != used[extra].sum():  # a few states deep: \\ u hex hex ...
            count = used[extra].sum()
            used[self.table[extra[used[extra]]].ravel()] = True
        return used

    def _pruned(self, has_plain: bool) -> tuple:
        """The bottom as a construction of one-byte rows leaves it (``_one_byte_dfa``):
        its restricted reader's states that no row reaches dropped, as ``_Builder.run``
        does; rows at a boundary with a child are restricted, and ``has_plain``: some are
        not (names' ends without children). Returns (table with row 0 a placeholder,
        accepting, the two boundary rows, the closing quote's target), renumbered."""
        n = len(self.accepting)
        used = np.zeros(n + 1, dtype=bool)
        used[self.start_stack[1]] = True
        if has_plain:
            used[self.start_stack[0]] = True
        used[self.end] = True
        keep = np.flatnonzero(~(self.extra & ~self.reach(used)[:n]))
        renum = np.full(n + 1, -1, dtype=np.int64)
        renum[keep] = np.arange(len(keep))
        return (renum[self.table[keep]].astype(np.int32), self.accepting[keep],
                renum[self.start_stack].astype(np.int32), int(renum[self.end]), int(renum[self.body]))


def _one_byte_dfa(names: tuple[str, ...], trie: dict, cut: int | None, max_states: int) -> ByteDFA | None:
    """``_Builder(trie, cut, max_states).run()`` where every name is spelled in one byte
    a character (``_ONE_BYTES``), the common case, in one pass over the
    trie: a state is a trie node hash-consed by (is a name, ((child, its state), ...)),
    its row the boundary's with the children's bytes (and the closing quote) written, all
    rows at once. The same table (the states, their order and the bottom's pruning are
    ``_Builder``'s); None where it does not apply."""
    if cut == 0 or len(trie) <= ("" in trie) or not ONE_BYTE_KEY_CHARS.issuperset("".join(names)):
        return None
    memo: dict = {}
    order: list = []
    root = _hash_cons(trie, 0, 1 << 30 if cut is None else cut, memo, order)
    has_plain = memo.get((True, ())) is not None  # a name's end without children
    table_b, accepting_b, start, end, body = _bottom().pruned[has_plain]
    off, n = len(table_b), len(order)
    if off + n > max_states:
        raise _too_many_states(max_states)
    restricted = np.fromiter((len(m) > 0 for _, m in order), dtype=np.intp, count=n)
    rows = start[restricted]
    rows[:, _QUOTE] = np.where(np.fromiter((not e for e, _ in order), dtype=bool, count=n), end, -1)
    moves = np.array([(i, ord(ch), t) for i, (_, m) in enumerate(order) for ch, t in m], dtype=np.int64)
    t = moves[:, 2]
    rows[moves[:, 0], moves[:, 1]] = np.where(t >= 0, t + off, -1)
    table = np.concatenate([table_b, rows])
    table[0] = -1
    table[0, _QUOTE] = root + off
    accepting = np.concatenate([accepting_b, np.zeros(n, dtype=bool)])
    dfa = ByteDFA(table, accepting)
    # this table's any-string body state and the end after the closing quote: a walk
    # from a trie state is the body's walk (the same in every such table, but for the
    # end's id) less where the key dies (``mask.MaskComputer._key_body_walk``)
    dfa.string_body = (body, end)
    return dfa


def _hash_cons(node: dict, depth: int, limit: int, memo: dict, order: list) -> int:
    """The state of a trie node in ``_one_byte_dfa`` (-1 at the cut), numbered in
    ``order`` as ``_Builder`` numbers it (children first, in character order). A module
    function, not a closure: a recursive closure is a reference cycle, which keeps its
    memo alive as frozen garbage until a full collection (see ``gc_policy``)."""
    if depth >= limit:
        return -1
    d = depth + 1
    if len(node) == 1:  # a chain's node, or a leaf (a name's end)
        (ch,) = node
        moves = ((ch, _hash_cons(node[ch], d, limit, memo, order)),) if ch else ()
    else:
        moves = tuple([(ch, _hash_cons(node[ch], d, limit, memo, order)) for ch in sorted(node) if ch])
    key = ("" in node, moves)
    got = memo.get(key)
    if got is None:
        got = memo[key] = len(order)
        order.append(key)
    return got


def _full_to_any(full: _Reader, g: np.ndarray, body: int) -> dict:
    """Full reader state -> any-string lexeme state reached by the same bytes from the
    body (the lexeme is quotes around a repeat of that reader)."""
    out, todo = {0: body}, [0]
    while todo:
        s = todo.pop()
        for b in np.flatnonzero(full.table[s] >= 0).tolist():
            t = int(full.table[s, b])
            if t not in out:
                out[t] = int(g[out[s], b])
                todo.append(t)
    out[full.sink] = body
    return out


_lock = threading.Lock()


@lru_cache(maxsize=1)
def _bottom() -> _Bottom:
    with _lock:
        return _Bottom()


class _Spellings:
    """Rests of spellings of trie-edge characters, interned by their language.

    A rest is a finite set of byte strings; id ``DONE`` is {""} (the character is
    complete: encodings are prefix-free, so nothing else is in a set with it). Each
    other id has its ``edges``: (byte, rest) pairs. Unions are interned too, so two
    local states that read the same rests into the same targets get the same key.
    """

    DONE = 0

    def __init__(self) -> None:
        self.ids: dict[tuple, int] = {(): self.DONE}
        self.edges: list[tuple] = [()]
        self.unions: dict[tuple[int, int], int] = {}
        self.lock = threading.Lock()

    def intern(self, edges: tuple) -> int:
        got = self.ids.get(edges)
        if got is None:
            with self.lock:
                got = self.ids.get(edges)
                if got is None:
                    got = self.ids[edges] = len(self.edges)
                    self.edges.append(edges)
        return got

    @lru_cache(maxsize=4096)  # noqa: B019 (one instance, alive as long as the module)
    def of_char(self, cp: int) -> int | None:
        """All spellings of the character ``cp``, as the regex path spells a trie edge
        (None for a lone surrogate: JSON text cannot hold one)."""
        from .json_strings import json_chars

        dfa = to_dfa(json_chars(Chars(((cp, cp),))))
        if not dfa.accepting.any():
            return None
        d = _Reader(dfa)
        memo: dict[int, int] = {}

        def rest(s: int) -> int:
            got = memo.get(s)
            if got is None:
                if s == d.sink:
                    got = self.DONE
                else:
                    row = d.table[s]
                    got = self.intern(tuple((b, rest(int(row[b]))) for b in np.flatnonzero(row >= 0).tolist()))
                memo[s] = got
            return got

        return rest(0)

    def union(self, a: int, b: int) -> int:
        if a == b:
            return a
        key = (a, b) if a < b else (b, a)
        got = self.unions.get(key)
        if got is None:
            merged: dict[int, int] = dict(self.edges[a])
            for byte, r in self.edges[b]:
                merged[byte] = self.union(merged[byte], r) if byte in merged else r
            got = self.unions[key] = self.intern(tuple(sorted(merged.items())))
        return got


_SPELLINGS = _Spellings()


class _Builder:
    """One construction: the bottom's rows, then one row per state found, hash-consed
    by what the state still reads (so the result is minimal by construction: equal
    subtries are one state, and a state's key decides its language)."""

    def __init__(self, trie: dict, cut: int | None, max_states: int):
        self.trie, self.cut, self.max_states = trie, cut, max_states
        self.bottom = _bottom()
        self.rows: list[np.ndarray] = []
        self.memo: dict = {}

    def _add(self, row: np.ndarray) -> int:
        if len(self.bottom.accepting) + len(self.rows) >= self.max_states:
            raise _too_many_states(self.max_states)
        self.rows.append(row)
        return len(self.bottom.accepting) + len(self.rows) - 1

    def run(self) -> ByteDFA:
        bot = self.bottom
        root = self.node(self.trie, 0)
        if root < 0:  # cut at the root: no string at all
            return ByteDFA(np.full((1, 256), -1, dtype=np.int32), np.zeros(1, dtype=bool))
        table = np.concatenate([bot.table] + ([np.stack(self.rows)] if self.rows else []))
        table[0] = -1
        table[0, _QUOTE] = root
        accepting = np.concatenate([bot.accepting, np.zeros(len(self.rows), dtype=bool)])
        # the restricted reader's own states where no key reaches them: dropped
        n_bot = len(bot.accepting)
        used = np.zeros(len(accepting), dtype=bool)
        used[table[n_bot:].ravel()] = True  # (index -1: the last row, kept anyway)
        used[root] = True
        drop = bot.extra & ~bot.reach(used)[:n_bot]
        if drop.any():
            keep = np.flatnonzero(~np.concatenate([drop, np.zeros(len(self.rows), dtype=bool)]))
            renum = np.full(len(accepting) + 1, -1, dtype=np.int64)
            renum[keep] = np.arange(len(keep))
            table = renum[table[keep]]
            accepting = accepting[keep]
        return ByteDFA(table.astype(np.int32), accepting)

    def node(self, trie: dict, depth: int) -> int:
        """The state at a trie node (-1 below the cut: nothing goes on from there)."""
        if self.cut is not None and depth >= self.cut:
            return -1
        body = self.bottom.body
        of_char = _SPELLINGS.of_char
        pairs = []
        restricted = False  # a printable-ASCII child: the others read without \u spellings
        for ch in sorted(trie):  # children in order ("" sorts first: a name ends here)
            if ch == "":
                continue
            cp = ord(ch)
            rest = of_char(cp)
            if rest is None:  # a lone surrogate: no JSON text spells it
                continue
            if _PRINTABLE[0] <= cp <= _PRINTABLE[1]:
                restricted = True
            t = self.node(trie[ch], depth + 1)
            if t != body:  # a child from which any string goes on is what the reader does anyway
                pairs.append((t, rest))
        live = ((pairs[0],) if len(pairs) == 1 else _group(pairs))
        if not live and not restricted and "" not in trie:  # nothing excluded: any string
            return body
        return self.state((restricted,), live, "" not in trie)

    def state(self, at: tuple | int, live: tuple, closable: bool) -> int:
        """The state reading one character from ``at`` (a bottom id, or ``(restricted,)``
        at a boundary); ``live``: ((target, rest of the spellings leading there), ...)
        from ``_group``; ``closable``: a closing quote may come here."""
        key = (at, live, closable)
        got = self.memo.get(key)
        if got is not None:
            return got
        bot = self.bottom
        boundary = isinstance(at, tuple)
        base = bot.start_rows[at[0]] if boundary else bot.table[at]
        row = base.copy()
        # whether the row has a way on, kept as we go (a numpy test per state was a
        # fifth of the construction): the base row's or a target written; tested on
        # the row only where a dead target (-1: below a cut) overwrote an entry
        alive = bot.start_live[at[0]] if boundary else bot.live[at]
        killed = False
        if boundary and closable:
            row[_QUOTE] = bot.end
            alive = True
        by_byte: dict[int, list] = {}  # bytes that go on in a child's spelling
        edges = _SPELLINGS.edges
        for target, rest in live:
            for b, nxt in edges[rest]:
                if nxt == _Spellings.DONE:  # a child's character read: on to the child
                    row[b] = target
                    if target >= 0:
                        alive = True
                    else:
                        killed = True
                else:
                    by_byte.setdefault(b, []).append((target, nxt))
        for b, moved in by_byte.items():
            t = row[b] = self.state(int(base[b]), _group(moved), True)
            if t >= 0:
                alive = True
            else:
                killed = True
        if killed:
            alive = bool((row >= 0).any())
        got = self.memo[key] = self._add(row) if alive else -1
        return got


def _group(pairs) -> tuple:
    """(target, spelling rest) pairs as one canonical key: one union per target."""
    by_target: dict[int, int] = {}
    for target, rest in pairs:
        got = by_target.get(target)
        by_target[target] = rest if got is None else _SPELLINGS.union(got, rest)
    return tuple(sorted(by_target.items()))
