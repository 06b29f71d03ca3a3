"""Masks at the keys of objects with the duplicate-key check (``grammar.UniqueKeys``).

Helpers of ``MaskComputer`` (mask.py): which alive lexemes of a product state are key
lexemes (``alive_keys``, for masks composed from each key's own walk), and at a key
position lexed with its used keys too (``EarleySet.wide``) the tokens that end where only
used keys are alive (``used_key_tokens``), which the mask drops. The boundary
recursion's sub-walks into a column the check filtered (``FilteredLexer``) go through
the lexer of its unfiltered set, with the same post-filter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .native import _native

if TYPE_CHECKING:
    from .earley import EarleyParser, EarleySet
    from .lexer import Lexer, LexerDFA
    from .mask import MaskComputer, TokenTable, WalkResult

# the boundary recursion's sub-walks into filtered columns use the unfiltered set's
# lexer (``FilteredLexer``); off: one product lexer per filtered set, as before (tests)
FILTERED_SUB_WALKS = True


def word_ids(words) -> np.ndarray:
    """The token ids set in ``words`` (dense uint32 words, or compact (indices, values)),
    ascending; only the nonzero words are unpacked."""
    if type(words) is tuple:
        idx, vals = words
    else:
        idx = np.flatnonzero(words)
        vals = words[idx]
    bits = np.unpackbits(np.ascontiguousarray(vals, dtype="<u4").view(np.uint8), bitorder="little")
    row, col = np.nonzero(bits.reshape(-1, 32))
    return idx.astype(np.int64)[row] * 32 + col


def clear_bits(words: np.ndarray, ids: np.ndarray | None) -> None:
    """Clear the bits of token ``ids`` (if any) in ``words``."""
    if ids is not None:
        np.bitwise_and.at(words, ids >> 5, ~np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))


def alive_keys(mc: MaskComputer, lexer: LexerDFA, state: int, keys: frozenset[int]) -> list | None:
    """(lexeme, its own lexer, its state there) of each lexeme alive in ``state``, when
    at least two are and all are in ``keys`` and the state does not accept; else None."""
    if lexer.accepting[state]:
        return None  # a complete key: the one-lexeme path (it may end the lexeme here)
    core, order = lexer.core, lexer.order
    comp = core.components(state)
    alive = np.nonzero(comp != core._dead)[0].tolist()
    if len(alive) < 2 or not all(order[j] in keys for j in alive):
        return None
    out = []
    for j in alive:
        single = mc.lexer.for_lexemes(frozenset((order[j],)))
        out.append((order[j], single, single.core.state_of_local(int(comp[j]) - int(core._offsets[j]))))
    return out


def used_key_tokens(mc: MaskComputer, col: EarleySet, lexer: LexerDFA, state: int) -> np.ndarray | None:
    """At a key position whose column lexes its ``wide`` set (used keys included, so
    that one lexer serves every set of used keys): the tokens read from ``state`` that
    end where only used keys are still alive. The rest of the mask is already exact:
    a token that completes a used key is refused by the scan, and key lexemes (JSON
    strings: prefix-free, read greedily) end at the same byte with or without the
    used ones. The candidates are the tokens inside each used key that is alive in
    ``state`` (that key's own walk, shared by every grammar); each is checked by its
    end state in ``lexer``, once per (state, key)."""
    used = col.wide - col.allowed
    core, order = lexer.core, lexer.order
    comp = core.components(state)
    alive = np.nonzero(comp != core._dead)[0].tolist()
    used_alive = [j for j in alive if order[j] in used]
    if not used_alive:
        return None
    cache = lexer.key_tokens
    dead: list[int] = []
    for j in used_alive:
        cands = cache.get((state, j))
        if cands is None:
            cands = cache[(state, j)] = key_candidates(mc, lexer, state, j, int(comp[j]))
        dead.extend(t for t, ends_in in cands if ends_in <= used)
    return np.array(dead, dtype=np.int64) if dead else None


def key_candidates(mc: MaskComputer, lexer: LexerDFA, state: int, j: int, q: int) -> list[tuple[int, frozenset[int]]]:
    """(token, lexemes alive where it ends) for the tokens that stay inside lexeme
    ``order[j]`` (component state ``q``) when read from ``state`` of ``lexer``."""
    core, order, tokens = lexer.core, lexer.order, mc.tokens
    single = mc.lexer.for_lexemes(frozenset((order[j],)))
    res = mc.full_walk(single, single.core.state_of_local(q - int(core._offsets[j])))
    out = []
    for t in word_ids(res.inside).tolist():
        off = int(tokens.tok_off[t])
        s = state
        for b in tokens.tok_bytes[off:off + int(tokens.lengths[t])].tolist():
            s = core.row(s)[b]
        comp = core.components(s)
        out.append((t, frozenset(order[k] for k in np.nonzero(comp != core._dead)[0].tolist())))
    return out


class FilteredLexer:
    """The lexer of a filtered allowed set ``lexemes`` (F: a key position without its
    used keys) for the boundary recursion's sub-walks, seen through ``wide``, the lexer
    of the column's unfiltered set W. Every F of one object (one per set of used keys) then walks in W's product: its rows and
    walks are shared, and no product is built per set (``make_core`` and its first rows
    were ~15-25% of the slowest 1% of masks).

    Exact where ``sub_walk_lexer`` checked: each excluded lexeme (W minus F) is a key
    whose texts start with ``"``, W's start state does not accept, and after a ``"`` only
    key lexemes (JSON strings) are alive. Then an F lexeme never ends where an excluded
    one reads on (it would have read a complete JSON string, which no JSON string
    extends), so W's walk ends lexemes where F's does, and: a token read inside W is
    inside F unless only excluded lexemes are alive at its end (dropped: ``filtered``);
    a boundary where only excluded lexemes end is dropped (its group; ``accepts`` are
    W's less the excluded ones). (A value's end whose dead ``,`` was dropped keeps its
    own product: the ``,`` lexeme reads the whitespace around it, so the argument fails.)
    """

    def __init__(self, wide: LexerDFA, lexemes: frozenset[int], tokens: TokenTable, lexer: Lexer, group: Callable):
        self.wide, self.lexemes = wide, lexemes
        self.core, self.order = wide.core, wide.order
        self.excluded = wide.lexemes - lexemes
        self.accepts = _FilteredAccepts(wide.accepts, lexemes)
        self._keep = np.array([o in lexemes for o in wide.order], dtype=bool)
        self._live: dict[int, bool] = {}  # W state -> is some lexeme of F alive there
        self._tokens, self._lexer, self._group = tokens, lexer, group

    def sub_walk(self, res: WalkResult, group: tuple, sel, walk_rest: Callable, check_budget: Callable) -> WalkResult:
        """The walk of ``res``'s boundary subtrees ``sel`` (group ``group``) from F's
        start: W's walk (shared by every F of W), filtered; cached in ``res.subs``."""
        key = (group, self.core.uid, self.lexemes)
        got = res.subs.get(key)
        if got is None:
            wkey = (group, self.core.uid)
            wide = res.subs.get(wkey)
            if wide is None:
                check_budget()
                wide = res.subs[wkey] = walk_rest(self.wide, res, sel)
            got = res.subs[key] = self.filtered(wide, res, group, sel, walk_rest)
        return got

    def filtered(self, wide: WalkResult, res: WalkResult, group: tuple, sel, walk_rest: Callable) -> WalkResult:
        """``wide`` (W's walk of the subtrees) as F's: the tokens that end where only
        excluded lexemes are alive dropped, the groups that end only excluded ones too."""
        from .mask import SPARSE_WORDS, WalkResult  # (mask imports this module)

        dead = self._dead_tokens(res, group, sel, walk_rest)
        inside = wide.inside
        if dead.size:
            words = np.zeros(self._tokens.n_words, dtype=np.uint32)
            if type(inside) is tuple:
                words[inside[0]] = inside[1]
            else:
                words[:] = inside
            clear_bits(words, dead)
            taken = _native.take_words(words, SPARSE_WORDS)
            if type(taken) is tuple:
                inside = (np.frombuffer(taken[0], dtype=np.int64), np.frombuffer(taken[1], dtype=np.uint32))
            else:
                inside = np.frombuffer(taken, dtype=np.uint32)
        groups = []
        if wide.boundary_ids.size:
            if wide.groups is None:
                wide.groups = self._group(self.core, wide)
            # (a scan of no lexemes finds no column anyway: these need no C entries)
            groups = [(g, s) for g, s in wide.groups if self.accepts[g[0]]]
        # the boundaries themselves are W's (a group's selection indexes them), and so
        # are the walks below them: the same subtrees from the same next lexers
        return WalkResult(inside, wide.boundary_ids, wide.boundary_pos, wide.boundary_state, subs=wide.subs,
                          groups=groups, by_node=wide.by_node)

    def _dead_tokens(self, res: WalkResult, group: tuple, sel, walk_rest: Callable) -> np.ndarray:
        """The tokens of the subtrees that W reads inside with only excluded lexemes alive
        at their end. Candidates: those each excluded lexeme reads inside on its own
        (its walk, shared by every F without it); each is checked by its end state in W."""
        cands: set[int] = set()
        for x in self.excluded:
            single = self._lexer.for_lexemes(frozenset((x,)))
            skey = (group, single.core.uid)
            sx = res.subs.get(skey)
            if sx is None:
                sx = res.subs[skey] = walk_rest(single, res, sel)
            cands.update(word_ids(sx.inside).tolist())
        if not cands:
            return np.zeros(0, dtype=np.int64)
        ids = np.array(sorted(cands), dtype=np.int64)
        pos = self._rest_offsets(res, sel, ids)
        tokens, row, dead = self._tokens, self.core.row, []
        for t, p in zip(ids.tolist(), pos.tolist(), strict=True):
            off = int(tokens.tok_off[t])
            s = 0
            for b in tokens.tok_bytes[off + p:off + int(tokens.lengths[t])].tolist():
                s = row(s)[b]
            if not self._alive_in_f(s):
                dead.append(t)
        return np.array(dead, dtype=np.int64)

    def _rest_offsets(self, res: WalkResult, sel, ids: np.ndarray) -> np.ndarray:
        """Where the rest of each token ``ids`` (below the boundaries ``sel`` of ``res``) starts."""
        where, at = res.boundary_ids[sel], res.boundary_pos[sel]
        if not res.by_node:  # token ids with their offsets
            order = np.argsort(where, kind="stable")
            return at[order][np.searchsorted(where[order], ids)]
        # trie nodes: each token lies below exactly one (their subtrees are disjoint ranges
        # of the tokens sorted by bytes), and its rest starts at that node's byte
        _, _, end, tok, _ = self._tokens.trie
        starts = tok[where].astype(np.int64)
        order = np.argsort(starts, kind="stable")
        k = order[np.searchsorted(starts[order], self._tokens.token_rank[ids], side="right") - 1]
        return at[k]

    def _alive_in_f(self, state: int) -> bool:
        got = self._live.get(state)
        if got is None:
            comp = self.core.components(state)
            got = self._live[state] = bool(np.any((comp >= 0) & self._keep))
        return got


class _FilteredAccepts(dict):
    """``accepts[state]`` of a ``FilteredLexer``: W's, less the excluded lexemes."""

    def __init__(self, wide: dict, lexemes: frozenset[int]):
        super().__init__()
        self._wide, self._lexemes = wide, lexemes

    def __missing__(self, state: int) -> frozenset[int]:
        out = self[state] = self._wide[state] & self._lexemes
        return out


def sub_walk_lexer(tokens: TokenTable, parser: EarleyParser, lexer: Lexer, group: Callable,
                   lexemes: frozenset[int], col: int) -> LexerDFA | FilteredLexer:
    """The lexer the boundary recursion walks column ``col`` (native uid) in, given its
    allowed ``lexemes``: theirs, or a ``FilteredLexer`` over the column's unfiltered set
    where the duplicate-key check filtered it and the conditions ``FilteredLexer``
    needs hold (then no product of ``lexemes`` is built)."""
    u = parser.t.unique_keys
    raw = parser.native.scannable(col) if FILTERED_SUB_WALKS and u is not None and lexemes else None
    if raw is None:
        return lexer.for_lexemes(lexemes)
    wide = lexer.for_lexemes(parser.allowed_set(tuple(raw)))
    excluded = wide.lexemes - lexemes
    if not excluded or not lexemes < wide.lexemes or not hasattr(wide.core, "product") or wide.accepting[0]:
        return lexer.for_lexemes(lexemes)
    if not all(x in u.strings and _reads_quote_first(lexer, x) for x in excluded):
        return lexer.for_lexemes(lexemes)
    comp = wide.core.components(wide.core.row(0)[0x22])  # (an excluded key reads `"`: alive)
    if not all(wide.order[j] in u.strings for j in np.flatnonzero(comp >= 0).tolist()):
        return lexer.for_lexemes(lexemes)
    return FilteredLexer(wide, lexemes, tokens, lexer, group)


def _reads_quote_first(lexer: Lexer, x: int) -> bool:
    """Does every text of lexeme ``x`` start with ``"`` (a key: no whitespace before)?"""
    row = lexer.for_lexemes(frozenset((x,))).core.row(0)
    return all(row[b] < 0 for b in range(256) if b != 0x22)
