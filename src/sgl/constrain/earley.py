"""An Earley parser over lexemes, with persistent (immutable, shared) parse states.

Every ``EarleySet`` is one chart column. Scanning a set of lexemes from a column gives
a new column whose items point back at older columns, so a column is a complete parse
state: matchers keep a stack of columns for rollback, copies share them, and masks can
be cached on the column. Nullable nonterminals are handled the Aycock-Horspool way
(predicting a nullable symbol also advances over it), so completions never have to
look into the column being built.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

from . import analysis
from .errors import ConstraintError
from .grammar import Grammar
from .native import _native, native_enabled

START = "<start>"


@dataclass
class ParserTables:
    """The grammar as integer tables. Terminal ids are the compiled grammar's lexeme ids."""

    lhs: list[int]  # rule -> nonterminal id
    rhs: list[tuple[int, ...]]  # rule -> symbols; a symbol >= 0 is a nonterminal, ~lexeme otherwise
    rules_of: list[list[int]]  # nonterminal -> its rules
    nullable: list[bool]
    start_rule: int
    ignore: frozenset[int]
    unique_keys: KeyLexemes | None = None  # the duplicate-key check (grammar.UniqueKeys), as ids


@dataclass(frozen=True)
class KeyLexemes:
    """``grammar.UniqueKeys`` as lexeme ids."""

    open_object: frozenset[int]
    open_array: frozenset[int]
    close: frozenset[int]
    comma: frozenset[int]
    colon: frozenset[int]
    keys: frozenset[int]
    strings: frozenset[int]  # keys and every other key lexeme (JSON strings, see UniqueKeys)


def _key_lexemes(grammar: Grammar, lexeme_ids: dict[str, int]) -> KeyLexemes | None:
    u = grammar.unique_keys
    if u is None:
        return None

    def ids(names) -> frozenset[int]:
        return frozenset(lexeme_ids[n] for n in names if n in lexeme_ids)

    keys = ids(u.keys)
    if not keys:
        return None
    return KeyLexemes(ids(u.open_object), ids(u.open_array), ids(u.close), ids(u.comma), ids(u.colon), keys,
                      keys | ids(u.strings))


def build_tables(grammar: Grammar, lexeme_ids: dict[str, int], ignore: frozenset[int]) -> ParserTables:
    """Index the grammar, dropping rules that cannot derive any text or are unreachable."""
    if grammar.is_trimmed() and all(t in lexeme_ids for t in grammar.terminals):
        keep = list(range(len(grammar.rules)))  # pruned already (grammar.prune)
    else:
        keep = analysis.trim(analysis.pairs(grammar.rules), grammar.start, lexeme_ids.__contains__)
    if not keep:
        raise ConstraintError(f"the grammar's start symbol {grammar.start!r} derives no text")
    rules = grammar.rules if len(keep) == len(grammar.rules) else [grammar.rules[i] for i in keep]
    lhs_names = [r.lhs for r in rules]
    names = [START] + sorted(set(lhs_names))
    nt_id = {n: i for i, n in enumerate(names)}
    sym_id = {s: ~i for s, i in lexeme_ids.items()}  # lexemes negative, nonterminals from 0
    sym_id.update(nt_id)
    lhs = [0, *map(nt_id.__getitem__, lhs_names)]
    rhs: list[tuple[int, ...]] = [(nt_id[grammar.start],)]
    ids = sym_id.__getitem__
    rhs += [tuple(map(ids, r.rhs)) for r in rules]  # (map: no comprehension frame per rule)
    rules_of: list[list[int]] = [[] for _ in names]
    for i, a in enumerate(lhs):
        rules_of[a].append(i)
    # a rule with a lexeme (a negative id) never derives the empty string: left out; with
    # no empty rule nothing derives it (JSON Schema grammars mostly have none)
    null: set = set()
    if () in rhs:
        null = analysis.nullable([(a, r) for a, r in zip(lhs, rhs, strict=True) if not r or min(r) >= 0])
    nullable = [a in null for a in range(len(names))]
    return ParserTables(lhs, rhs, rules_of, nullable, 0, ignore, _key_lexemes(grammar, lexeme_ids))


class EarleySet:
    """One chart column: the parse state after some sequence of lexemes."""

    __slots__ = ("parent", "lexemes", "items", "waiting", "scannable", "allowed", "accepting",
                 "children", "mask_cache", "uid", "keys", "wide", "__weakref__")

    def __init__(self, parent: EarleySet | None, lexemes: frozenset[int] | None, uid: int = 0):
        # Items are (rule, dot, origin uid): tuples of ints only, which the garbage
        # collector stops tracking, so millions of cached items cost no GC pauses.
        self.uid = uid  # index in the parser's ``columns``
        self.parent = parent  # the column this one was scanned from (None for the first)
        self.lexemes = lexemes  # the lexeme ids scanned to get here
        self.items: set = set()
        self.waiting: dict[int, list] = {}  # nonterminal -> items whose next symbol it is
        self.scannable: dict[int, list] = {}  # lexeme id -> items whose next symbol it is
        self.allowed: frozenset[int] = frozenset()  # lexemes that may come next (incl. ignored)
        self.accepting = False  # the lexemes so far form a complete sentence
        self.children: dict[frozenset[int], EarleySet | None] = {}
        self.mask_cache: dict = {}
        # with the duplicate-key check: (innermost open container, at a key position);
        # a container is (is an object, its key lexemes read so far, the one around it).
        # Python parser only (a native column's check state lives in C: Earley.keys_of)
        self.keys: tuple | None = None
        # at a key position with used keys: ``allowed`` before they were dropped. The
        # column's text is lexed with this wider set (one lexer for every set of used
        # keys, see ``lexing``); scans refuse the used ones, masks drop tokens ending
        # inside them only (``key_masks.used_key_tokens``)
        self.wide: frozenset[int] | None = None

    @property
    def lexing(self) -> frozenset[int]:
        """The lexemes whose lexer reads this column's text (``wide`` where set)."""
        return self.allowed if self.wide is None else self.wide


# key positions lex their text with the used keys too (``EarleySet.wide``: one lexer and
# one walk cache for every set of used keys); False lexes with the filtered ``allowed``
# (a lexer per set of used keys), the reference the tests compare masks with
WIDE_KEYS = True
# ... for objects of at least this many such keys: a small object has few sets of used
# keys, whose filtered lexers cost less than the used-key filter of the masks
WIDE_MIN_KEYS = 8


def _wide_min() -> int:
    """The compiled key check's threshold for wide key positions (-1: none)."""
    return WIDE_MIN_KEYS if WIDE_KEYS else -1


class EarleyParser:
    def __init__(self, tables: ParserTables):
        self.t = tables
        self._predictions: dict[int, tuple[tuple[tuple[int, int], ...], frozenset[int]]] = {}
        self.columns: list[EarleySet | None] = []  # by uid; an item's origin is an index here
        # allowed-lexeme sets by content: columns share one frozenset object, whose hash is
        # then computed once (the lexer cache is keyed by it on every mask miss)
        self._allowed_sets: dict[tuple[int, ...], frozenset[int]] = {}
        self._filtered: dict[tuple, frozenset[int]] = {}  # (allowed, used keys) -> the rest
        # the compiled closure keeps the items itself; the Python one below is its twin
        self._c = _native_tables(tables) if native_enabled() else None
        self._wide_min = _wide_min()
        u = tables.unique_keys
        if self._c is not None and u is not None:
            # the duplicate-key check runs in the compiled scan (its twin of _track_keys):
            # the boundary recursion then scans by itself, and native columns take their
            # allowed/wide from there
            self._c.set_keys(sorted(u.open_object), sorted(u.open_array), sorted(u.close), sorted(u.comma),
                             sorted(u.colon), sorted(u.keys), sorted(tables.ignore), self._wide_min)

    def _native_column(self, parent: EarleySet | None, lexemes, found) -> EarleySet:
        uid, allowed, accepting, wide = found
        # columns the boundary recursion (or the key check's look-ahead) scanned in C
        # (mask.py, _native.Boundaries) have no Python object until Python scans them:
        # their places stay None
        if uid < len(self.columns) and self.columns[uid] is not None:
            return self.columns[uid]  # a scan the compiled side made once (its map by set)
        col = EarleySet(parent, lexemes, uid)
        col.allowed = self.allowed_set(tuple(allowed))
        col.accepting = accepting
        if wide is not None:
            col.wide = self.allowed_set(tuple(wide))
        if uid >= len(self.columns):
            self.columns.extend([None] * (uid + 1 - len(self.columns)))
        self.columns[uid] = col
        return col

    @property
    def native(self):
        """The compiled ``Earley`` (the columns' items live there), or None."""
        return self._c

    def allowed_set(self, allowed: tuple[int, ...]) -> frozenset[int]:
        """The ``allowed`` of a native column whose scannable lexemes are ``allowed``
        (ascending), with the ignored ones: one frozenset object per content."""
        got = self._allowed_sets.get(allowed)
        if got is None:
            got = self._allowed_sets[allowed] = frozenset(allowed) | self.t.ignore
        return got

    def _new_column(self, parent: EarleySet | None, lexemes: frozenset[int] | None) -> EarleySet:
        col = EarleySet(parent, lexemes, len(self.columns))
        self.columns.append(col)
        return col

    def _add_prediction(self, col: EarleySet, sym: int, predicted: set[int]) -> None:
        """Add the prediction set of ``sym`` to ``col`` (items with origin ``col``)."""
        pred_items, pred_syms = self._prediction(sym)
        predicted |= pred_syms
        rhs_of, items, waiting, scannable = self.t.rhs, col.items, col.waiting, col.scannable
        uid = col.uid
        for r, d in pred_items:
            item = (r, d, uid)
            if item in items:
                continue
            items.add(item)
            rhs = rhs_of[r]
            if d == len(rhs):
                continue  # nullable completion: already advanced over at prediction time
            s = rhs[d]
            if s < 0:
                scannable.setdefault(~s, []).append(item)
            else:
                waiting.setdefault(s, []).append(item)

    def initial(self) -> EarleySet:
        if self._c is not None:
            return self._native_column(None, None, self._c.initial())
        col = self._new_column(None, None)
        self._close(col, [(self.t.start_rule, 0, col.uid)])
        return col

    def scan(self, col: EarleySet, lexemes: frozenset[int]) -> EarleySet | None:
        """The column after ``lexemes`` (one span read as any of them), or None if impossible."""
        hit = col.children.get(lexemes, False)
        if hit is not False:
            return hit
        if col.wide is not None and not lexemes <= col.allowed:  # a used key read again
            kept = lexemes & col.allowed
            nxt = col.children[lexemes] = self.scan(col, kept) if kept else None
            return nxt
        if self._c is not None:
            if self.t.unique_keys is not None and self._wide_min != _wide_min():  # (tests switch it)
                self._wide_min = _wide_min()
                self._c.set_wide_min(self._wide_min)
            found = self._c.scan(col.uid, tuple(lexemes))  # the key check included
            if found is not None:
                nxt = self._native_column(col, lexemes, found)
            else:
                nxt = col if lexemes & self.t.ignore else None
            col.children[lexemes] = nxt
            return nxt
        kernel = [(r, d + 1, o) for lex in lexemes for (r, d, o) in col.scannable.get(lex, ())]
        if kernel:
            nxt = self._new_column(col, lexemes)
            self._close(nxt, kernel)
            if self.t.unique_keys is not None:
                self._track_keys(col, nxt, lexemes)
        elif lexemes & self.t.ignore:
            nxt = col  # an ignored lexeme (e.g. whitespace) leaves the parse state as it was
        else:
            nxt = None
        col.children[lexemes] = nxt
        return nxt

    def _track_keys(self, col: EarleySet, nxt: EarleySet, lexemes: frozenset[int]) -> None:
        """The duplicate-key check (``grammar.UniqueKeys``): follow the open objects and
        arrays through ``lexemes``, record a key lexeme of the innermost object when its
        ``:`` is read, and at a key position drop the ones read from ``nxt.allowed``.

        The pure-Python twin: a native parser runs the same check inside the compiled scan
        (``_native.Earley.set_keys``, _native_earley.c's ``earley_track``), and its columns
        take ``allowed``/``wide`` from there.

        Exact for what the text says, whatever the grammar: a key position (after ``{``
        or after ``,`` inside an object) and the keys of the open object are the text's,
        so every item of the column agrees on them. Only ``allowed`` changes, which every
        lexer, mask and walk reads, in the compiled and the Python parser alike; masks
        stay cached per column. A value lexeme spelled like a used key (``{"a": "a"}``)
        is not affected: values are not at key positions.
        """
        u = self.t.unique_keys
        box, _ = col.keys or (None, False)
        at_key = False
        if lexemes & u.open_object:
            box, at_key = (True, frozenset(), box), True
        elif lexemes & u.open_array:
            box = (False, frozenset(), box)
        elif lexemes & u.close:
            box = box[2] if box is not None else None
        elif lexemes & u.comma:
            at_key = box is not None and box[0]
        elif lexemes & u.colon and box is not None and box[0] and col.lexemes:
            read = col.lexemes & u.keys
            if read:
                box = (True, box[1] | read, box[2])
        nxt.keys = (box, at_key)
        if box is None or not box[0] or not box[1]:
            return
        if at_key:
            wide = nxt.allowed
            self._drop(nxt, wide & box[1])
            if nxt.allowed is not wide and WIDE_KEYS and len(wide & u.keys) >= WIDE_MIN_KEYS:
                nxt.wide = wide
            return
        # a ``,`` after which every key the grammar allows is used would be a dead end:
        # look one lexeme ahead (the column is cached, and the next mask needs it anyway)
        for comma in nxt.allowed & u.comma:
            after = self.scan(nxt, frozenset((comma,)))
            if after is None or (not after.allowed - self.t.ignore and not after.accepting):
                self._drop(nxt, frozenset((comma,)))

    def _drop(self, col: EarleySet, lexemes: frozenset[int]) -> None:
        """Remove ``lexemes`` from ``col.allowed`` (one shared frozenset per result)."""
        if not lexemes:
            return
        key = (col.allowed, lexemes)
        got = self._filtered.get(key)
        if got is None:
            got = self._filtered[key] = col.allowed - lexemes
        col.allowed = got

    def _prediction(self, sym: int) -> tuple[tuple[tuple[int, int], ...], frozenset[int]]:
        """What predicting ``sym`` adds to any column: its (rule, dot) items (origin: that
        column), nullable symbols stepped over, and the nonterminals predicted on the way.

        The same for every column, so computed once per symbol: a column's closure then
        adds whole prediction sets instead of deriving them item by item.
        """
        hit = self._predictions.get(sym)
        if hit is not None:
            return hit
        t = self.t
        seen: set[tuple[int, int]] = set()
        order: list[tuple[int, int]] = []
        syms = {sym}
        agenda = [(r, 0) for r in t.rules_of[sym]]
        while agenda:
            item = agenda.pop()
            if item in seen:
                continue
            seen.add(item)
            order.append(item)
            rule, dot = item
            rhs = t.rhs[rule]
            if dot == len(rhs) or rhs[dot] < 0:
                continue
            nxt = rhs[dot]
            if nxt not in syms:
                syms.add(nxt)
                agenda.extend((r, 0) for r in t.rules_of[nxt])
            if t.nullable[nxt]:
                agenda.append((rule, dot + 1))
        hit = self._predictions[sym] = (tuple(order), frozenset(syms))
        return hit

    def _close(self, col: EarleySet, kernel: list) -> None:
        t = self.t
        rhs_of, lhs_of, nullable, columns = t.rhs, t.lhs, t.nullable, self.columns
        items, waiting, scannable = col.items, col.waiting, col.scannable
        predicted: set[int] = set()
        agenda = list(kernel)
        while agenda:
            item = agenda.pop()
            if item in items:
                continue
            items.add(item)
            rule, dot, origin = item
            rhs = rhs_of[rule]
            if dot == len(rhs):
                for r2, d2, o2 in columns[origin].waiting.get(lhs_of[rule], ()):
                    agenda.append((r2, d2 + 1, o2))
                continue
            sym = rhs[dot]
            if sym < 0:
                scannable.setdefault(~sym, []).append(item)
                continue
            waiting.setdefault(sym, []).append(item)
            if sym not in predicted:
                self._add_prediction(col, sym, predicted)
            if nullable[sym]:
                agenda.append((rule, dot + 1, origin))
        # the start rule is only ever predicted in the first column, so any completed
        # start item spans the whole text
        col.accepting = any(r == t.start_rule and d == 1 for (r, d, _o) in items)
        col.allowed = frozenset(scannable) | t.ignore


def _native_tables(t: ParserTables):
    """The grammar tables as the arrays of the compiled ``Earley``; None when they exceed
    its item packing (2^21 rules, 1,022 symbols in a rule), which the Python parser handles."""
    import numpy as np

    lens = list(map(len, t.rhs))
    if len(t.lhs) >= 1 << 21 or max(lens, default=0) >= 1022:
        return None
    rhs_off = np.zeros(len(t.rhs) + 1, dtype=np.int32)
    rhs_off[1:] = np.cumsum(lens)
    rhs = np.fromiter(chain.from_iterable(t.rhs), dtype=np.int32, count=int(rhs_off[-1]))
    rules_off = np.zeros(len(t.rules_of) + 1, dtype=np.int32)
    rules_off[1:] = np.cumsum(list(map(len, t.rules_of)))
    rules = np.fromiter(chain.from_iterable(t.rules_of), dtype=np.int32, count=int(rules_off[-1]))
    return _native.Earley(np.asarray(t.lhs, dtype=np.int32), rhs_off, rhs, rules_off, rules,
                          np.asarray(t.nullable, dtype=np.uint8), t.start_rule)
