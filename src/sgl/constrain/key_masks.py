"""Masks at the keys of objects with the duplicate-key check (``grammar.UniqueKeys``).

Helpers of ``MaskComputer`` (mask.py): which alive lexemes of a product state are key
lexemes (``alive_keys``, for masks composed from each key's own walk), and at a key
position lexed with its used keys too (``EarleySet.wide``) the tokens that end where only
used keys are alive (``used_key_tokens``), which the mask drops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import lexer as lexer_module
from .bitmask import word_ids

if TYPE_CHECKING:
    from .earley import EarleySet
    from .lexer import LexerDFA
    from .mask import MaskComputer


def alive_keys(mc: MaskComputer, lexer: LexerDFA, state: int, keys: frozenset[int]) -> list | None:
    """(lexeme, its own lexer, its state there) of each lexeme alive in ``state``, when
    at least two are and all are in ``keys`` and the state does not accept; else None."""
    if lexer.accepting[state]:
        return None  # a complete key: the one-lexeme path (it may end the lexeme here)
    core, order = lexer.core, lexer.order
    comp = core.components(state)
    alive = _alive(core, comp)
    if len(alive) < 2 or not all(order[j] in keys for j in alive):
        return None
    out = []
    local, offsets, for_lexemes = comp.tolist(), core._offsets.tolist(), mc.lexer.for_lexemes
    for j in alive:
        single = for_lexemes(frozenset((order[j],)))
        out.append((order[j], single, single.core.state_of_local(local[j] - offsets[j])))
    return out


def used_key_tokens(mc: MaskComputer, col: EarleySet, lexer: LexerDFA, state: int) -> np.ndarray | None:
    """At a key position whose column lexes its ``wide`` set (used keys included, so
    that one lexer serves every set of used keys): the tokens read from ``state`` that
    end where only used keys are still alive. The rest of the mask is already exact:
    a token that completes a used key is refused by the scan, and key lexemes (JSON
    strings: prefix-free, read greedily) end at the same byte with or without the
    used ones. The candidates are the tokens inside each used key that is alive in
    ``state`` (that key's own walk, shared by every grammar); each is checked by its
    end state in ``lexer``, once per (state, key); the result once per (state, used
    keys), for the next object at this state with the same keys used."""
    used = col.wide - col.allowed
    got = lexer.used_dead.get((state, used), False)  # (another object with these keys used)
    if got is not False:
        return got
    core, order = lexer.core, lexer.order
    comp = core.components(state)
    alive = _alive(core, comp)
    used_alive = [j for j in alive if order[j] in used]
    got = None
    if used_alive:
        cache = lexer.key_tokens
        dead: list[int] = []
        for j in used_alive:
            cands = cache.get((state, j))
            if cands is None:
                cands = cache[(state, j)] = key_candidates(mc, lexer, state, j, int(comp[j]))
            dead.extend(t for t, ends_in in cands if ends_in <= used)
        if dead:
            got = np.array(dead, dtype=np.int64)
            got.flags.writeable = False
    if len(lexer.used_dead) >= lexer_module.MAX_KEY_SETS:
        lexer.used_dead.clear()  # a cache: bounded, whatever the objects generated
    lexer.used_dead[(state, used)] = got
    return got


def key_candidates(mc: MaskComputer, lexer: LexerDFA, state: int, j: int, q: int) -> list[tuple[int, frozenset[int]]]:
    """(token, lexemes alive where it ends) for the tokens that stay inside lexeme
    ``order[j]`` (component state ``q``) when read from ``state`` of ``lexer``.

    Made once per (state, key) on a first visit, for ~2 tokens on average (MaskBench):
    the tokens come from the walk's few compact words without numpy, and each end state's
    alive lexemes are read once (tokens inside one key end in few states)."""
    core, order, tokens = lexer.core, lexer.order, mc.tokens
    single = mc.lexer.for_lexemes(frozenset((order[j],)))
    res = mc.full_walk(single, single.core.state_of_local(q - int(core._offsets[j])))
    raw, off = tokens.tok_bytes, tokens.tok_off
    rows: dict[int, list[int]] = {}  # this call's rows as lists (not kept on the shared core)
    alive_at: dict[int, frozenset[int]] = {}
    out = []
    for t in _ids(res.inside):
        s = state
        for b in raw[int(off[t]):int(off[t + 1])].tolist():  # it stays inside
            row = rows.get(s)
            if row is None:
                row = rows[s] = core.table_row(s).tolist()
            s = row[b]
        ends_in = alive_at.get(s)
        if ends_in is None:
            ends_in = alive_at[s] = frozenset([order[k] for k in _alive(core, core.components(s))])
        out.append((t, ends_in))
    return out


def _alive(core, comp: np.ndarray) -> list[int]:
    """The indices of the alive components ``comp`` of a product state: for a few
    components by a Python loop (numpy's compare and nonzero cost ~2.5 µs whatever the
    size; the loop is cheaper below ~50 components, MaskBench's median here)."""
    if comp.size > 48:
        return np.nonzero(comp != core._dead)[0].tolist()
    dead = core._dead
    return [j for j, c in enumerate(comp.tolist()) if c != dead]


def _ids(words) -> list[int]:
    """``word_ids(words)`` as a list; a compact part of a few words (a key's walk) is
    read bit by bit, ~10x cheaper than the numpy unpacking for ~2 tokens."""
    if type(words) is not tuple or words[0].size > 8:
        return word_ids(words).tolist()
    out = []
    for i, v in zip(words[0].tolist(), words[1].tolist(), strict=True):
        base = i << 5
        while v:
            low = v & -v
            out.append(base + low.bit_length() - 1)
            v ^= low
    return out
