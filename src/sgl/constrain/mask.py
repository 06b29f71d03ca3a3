"""Vectorised token masks: all tokens of the vocabulary walked through a lexer DFA at once.

A token is allowed from parser state P and lexer state s when its bytes can be read
starting there. The walk is split in two so that almost everything is cached:

1. ``walk(lexer, s, ids, offsets)`` runs the given tokens' bytes through one
   ``LexerDFA`` in numpy, one byte position per step for all tokens together. It returns
   the tokens that end inside the current lexeme (allowed whatever the parser says),
   and the "boundary" tokens whose current lexeme completes at some byte with the rest
   of the token still to read. This depends only on the lexer, so the walk of all
   tokens from each lexer state is cached on the ``LexerDFA``.
2. For boundary tokens the parser scans the completed lexeme(s) and the rest of each
   token is walked from the next lexer, recursively; there are few such tokens.

The final mask for (P, s) is cached on the Earley column P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .earley import EarleyParser, EarleySet
from .lexer import Lexer, LexerDFA


@dataclass
class WalkResult:
    inside: np.ndarray  # token ids read completely without leaving the current lexeme
    # (for whole-vocabulary walks: the same set as packed uint32 words)
    boundary_ids: np.ndarray  # token ids whose current lexeme completes before their end
    boundary_pos: np.ndarray  # byte offset in the token where the next lexeme starts
    boundary_state: np.ndarray  # the accepting lexer state the current lexeme ended in


class TokenTable:
    """The vocabulary as a padded byte matrix, the input of every walk."""

    def __init__(self, token_bytes: list[bytes | None], n_vocab: int):
        lengths = np.array([len(b) if b else 0 for b in token_bytes], dtype=np.int32)
        width = max(1, int(lengths.max(initial=0)))
        # one extra zero column so that reading at position == length never overflows
        mat = np.zeros((len(token_bytes), width + 1), dtype=np.uint8)
        for i, b in enumerate(token_bytes):
            if b:
                mat[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        self.bytes = mat
        self.lengths = lengths
        self.n_vocab = n_vocab
        self.n_words = (n_vocab + 31) // 32
        self.real_ids = np.nonzero(lengths > 0)[0].astype(np.int64)


def walk(tokens: TokenTable, lexer: LexerDFA, state: int, ids: np.ndarray, pos: np.ndarray) -> WalkResult:
    """Run tokens ``ids`` from byte offsets ``pos`` through ``lexer`` starting in ``state``."""
    table, accepting = lexer.table, lexer.accepting
    lengths, mat = tokens.lengths, tokens.bytes
    cur = np.full(ids.shape, state, dtype=np.int32)
    pos = pos.copy()
    inside, b_ids, b_pos, b_state = [], [], [], []
    while ids.size:
        done = pos >= lengths[ids]
        if done.any():
            inside.append(ids[done])
            keep = ~done
            ids, pos, cur = ids[keep], pos[keep], cur[keep]
            if not ids.size:
                break
        nxt = table[cur, mat[ids, pos]]
        dead = nxt < 0
        if dead.any():
            ends = dead & accepting[cur]
            if ends.any():
                b_ids.append(ids[ends])
                b_pos.append(pos[ends])
                b_state.append(cur[ends])
            live = ~dead
            ids, pos, nxt = ids[live], pos[live], nxt[live]
        cur = nxt
        pos += 1
    cat = _concat
    return WalkResult(cat(inside, np.int64), cat(b_ids, np.int64), cat(b_pos, np.int32), cat(b_state, np.int32))


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


class MaskComputer:
    """Computes (and caches) the allowed-token bitmask for a parser column and lexer state."""

    def __init__(self, tokens: TokenTable, lexer: Lexer, parser: EarleyParser, eos_ids: tuple[int, ...]):
        self.tokens = tokens
        self.lexer = lexer
        self.parser = parser
        self.eos_ids = np.array([i for i in eos_ids if i < tokens.n_vocab], dtype=np.int64)

    def lexer_for(self, col: EarleySet) -> LexerDFA:
        return self.lexer.for_lexemes(col.allowed)

    def full_walk(self, lexer: LexerDFA, state: int) -> WalkResult:
        res = lexer.walk_cache.get(state)
        if res is None:
            ids = self.tokens.real_ids
            res = walk(self.tokens, lexer, state, ids, np.zeros(ids.shape, dtype=np.int32))
            res.inside = self._pack(res.inside)
            lexer.walk_cache[state] = res
        return res

    def mask(self, col: EarleySet, state: int) -> np.ndarray:
        """The allowed tokens as uint32 words (bit i of word i//32 = token i)."""
        words = col.mask_cache.get(state)
        if words is None:
            lexer = self.lexer_for(col)
            res = self.full_walk(lexer, state)
            extra: list[np.ndarray] = []
            self._boundaries(col, lexer, res, extra)
            if self.eos_ids.size and self.can_end(col, lexer, state):
                extra.append(self.eos_ids)
            words = res.inside | self._pack(np.concatenate(extra)) if extra else res.inside
            col.mask_cache[state] = words
        return words

    def _boundaries(self, col: EarleySet, lexer: LexerDFA, res: WalkResult, extra: list) -> None:
        if not res.boundary_ids.size:
            return
        for acc_state in np.unique(res.boundary_state):
            sel = res.boundary_state == acc_state
            nxt_col = self.parser.scan(col, lexer.accepts[int(acc_state)])
            if nxt_col is None:
                continue
            nxt_lexer = self.lexer_for(nxt_col)
            sub = walk(self.tokens, nxt_lexer, 0, res.boundary_ids[sel], res.boundary_pos[sel])
            extra.append(sub.inside)
            self._boundaries(nxt_col, nxt_lexer, sub, extra)

    def _pack(self, ids: np.ndarray) -> np.ndarray:
        allowed = np.zeros(self.tokens.n_words * 32, dtype=bool)
        allowed[ids] = True
        return np.packbits(allowed, bitorder="little").view(np.uint32)

    def can_end(self, col: EarleySet, lexer: LexerDFA, state: int) -> bool:
        """May the text end here (EOS)?"""
        if state == 0:
            return col.accepting
        if not lexer.accepting[state]:
            return False
        nxt = self.parser.scan(col, lexer.accepts[state])
        return nxt is not None and nxt.accepting
