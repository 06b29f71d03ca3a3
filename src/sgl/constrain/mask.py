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

Both walks have a compiled twin in ``_native.c`` (a depth-first walk of a byte trie of
the vocabulary, which skips a whole subtree at its first dead byte); the numpy
functions here are the fallback when the extension is not built, and the reference
the tests compare it with. ``SGL_NATIVE=0`` forces the fallback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import boundary
from . import lexer as lexer_module
from .bitmask import clear_bits, pack_ids
from .boundary import NativeBoundaries
from .earley import EarleyParser, EarleySet
from .errors import CompileBudgetExceeded
from .key_masks import alive_keys, used_key_tokens
from .lexer import Lexer, LexerDFA, single_live
from .native import _native, native_enabled
from .token_trie import TokenTable

# wall time one mask may take (``CompileBudget.mask_seconds``): generous, because the
# pure-Python fallback (SGL_NATIVE=0) takes seconds for the first masks of large grammars
DEFAULT_MASK_SECONDS = 20.0


# a walk's words with at most this many nonzero words are kept as (indices, words) pairs:
# most walks (boundary continuations, keys, punctuation) allow a few tokens, and their
# results are cached for the process; as full 16 KB arrays (Llama-3) they made most of
# the page faults of mask misses (~2 us each here), more than the OR-ing they save
SPARSE_WORDS = 64

Words = np.ndarray | tuple  # dense uint32 words, or (indices, words) of the nonzero ones
# (a mask's parts may also be ("&", a, b): the words of a & b, see ``or_into``)


def or_into(acc: np.ndarray, part: Words) -> None:
    """``acc |= part`` in place, for dense or compact ``part``, or ``("&", a, b)`` (``a & b``)."""
    if type(part) is tuple and len(part) == 3:
        acc |= part[1] & part[2]
    elif type(part) is tuple:
        if part[0].size:
            acc[part[0]] |= part[1]
    else:
        np.bitwise_or(acc, part, out=acc)


def or_parts(acc: np.ndarray, parts: list[Words]) -> None:
    """``acc |= part`` for every part, in place (``_native.or_parts``'s twin): pairwise, as
    ``np.bitwise_or.reduce`` of a list first stacks it into a new 2-D array."""
    for part in parts:
        or_into(acc, part)


@dataclass
class WalkResult:
    inside: Words  # packed uint32 words (maybe compact): tokens read completely inside the current lexeme
    boundary_ids: np.ndarray  # token ids whose current lexeme completes before their end
    boundary_pos: np.ndarray  # byte offset in the token where the next lexeme starts
    boundary_state: np.ndarray  # the accepting lexer state the current lexeme ended in
    starts_next: np.ndarray | None = None  # words: tokens that begin the next lexeme (if state accepts)
    # walks of the boundary tokens' rest, by (boundary states, next lexer): they depend on
    # lexers only, so columns with the same lexers share them
    subs: dict = field(default_factory=dict)
    groups: list | None = None  # boundary states grouped by the lexemes they complete
    # native walks report trie nodes in boundary_ids (all tokens below the node go on
    # from its byte, boundary_pos = its depth - 1); numpy walks report token ids
    by_node: bool = False


def _group_boundaries(core, res: WalkResult) -> list[tuple[tuple[int, ...], np.ndarray | slice]]:
    """Boundary states that complete the same lexemes lead to the same column: one group
    each, with the selection of its tokens (computed once per walk, then cached)."""
    bs = res.boundary_state
    if len(core._offsets) == 1:
        # one lexeme: every boundary state is one of its accepting states and completes it,
        # so there is one group, keyed by any member (the key only tells a walk's groups
        # apart); most walks are in one-lexeme lexers (keys, punctuation, string bodies)
        return [((int(bs[0]),), slice(None))]
    states = np.flatnonzero(np.bincount(bs))  # states are small ints: cheaper than np.unique
    by_lexemes: dict[tuple[int, ...], list[int]] = {}
    for st in states.tolist():
        by_lexemes.setdefault(tuple(core.accepts[st]), []).append(st)
    if len(by_lexemes) == 1:
        return [(tuple(states.tolist()), slice(None))]
    group_of = np.empty(int(states[-1]) + 1, dtype=np.int32)
    for g, members in enumerate(by_lexemes.values()):
        group_of[members] = g
    of_token = group_of[bs]
    return [(tuple(members), of_token == g) for g, members in enumerate(by_lexemes.values())]


def walk(tokens: TokenTable, lexer: LexerDFA, state: int, ids: np.ndarray, pos: np.ndarray) -> WalkResult:
    """Run tokens ``ids`` from byte offsets ``pos`` through ``lexer`` starting in ``state``."""
    # flat 1-D ``take`` is several times faster than 2-D fancy indexing here
    table, accepting = lexer.core.flat_table, lexer.core.accepting_array()
    lengths, flat_bytes, n = tokens.lengths, tokens.flat_bytes, tokens.n_tokens
    cur = np.full(ids.shape, state, dtype=np.int64)
    pos = pos.astype(np.int64)
    inside, b_ids, b_pos, b_state = [], [], [], []
    while ids.size:
        done = pos >= lengths.take(ids)
        if done.any():
            inside.append(ids[done])
            keep = ~done
            ids, pos, cur = ids[keep], pos[keep], cur[keep]
            if not ids.size:
                break
        nxt = table.take(cur * 256 + flat_bytes.take(pos * n + ids))
        dead = nxt < 0
        if dead.any():
            ends = dead & accepting.take(cur)
            if ends.any():
                b_ids.append(ids[ends])
                b_pos.append(pos[ends])
                b_state.append(cur[ends])
            live = ~dead
            ids, pos, nxt = ids[live], pos[live], nxt[live]
        cur = nxt
        pos += 1
    return _walk_result(inside, b_ids, b_pos, b_state)


def walk_from_start(tokens: TokenTable, lexer: LexerDFA, state: int, ids: np.ndarray) -> WalkResult:
    """``walk`` for tokens read from their first byte, given longest first.

    All tokens are at the same byte position, and those still unread form a prefix of
    ``ids``, so each step is a few ``take`` calls and a truncation.
    """
    table, accepting = lexer.core.flat_table, lexer.core.accepting_array()
    neg_len = -tokens.lengths.take(ids)  # ascending
    cur = np.full(ids.shape, state, dtype=np.int64)
    inside, b_ids, b_pos, b_state = [], [], [], []
    for k in range(tokens.max_len + 1):
        active = int(np.searchsorted(neg_len, -k, side="left"))  # tokens longer than k
        if active < ids.size:
            inside.append(ids[active:])
            ids, cur, neg_len = ids[:active], cur[:active], neg_len[:active]
        if not active:
            break
        nxt = table.take(cur * 256 + tokens.byte_row(k).take(ids))
        dead = nxt < 0
        if dead.any():
            ends = dead & accepting.take(cur)
            if ends.any():
                b_ids.append(ids[ends])
                b_pos.append(np.full(int(ends.sum()), k, dtype=np.int64))
                b_state.append(cur[ends])
            live = ~dead
            ids, nxt, neg_len = ids[live], nxt[live], neg_len[live]
        cur = nxt
    return _walk_result(inside, b_ids, b_pos, b_state)


_NO_IDS = np.zeros(0, dtype=np.int64)  # the boundaries of a walk with none (shared: read-only)
_NO_IDS.flags.writeable = False


def _is_native(core) -> bool:
    """Is ``core`` the C product (walked by the C kernel)?"""
    return hasattr(core, "product")


def _walk_result(*found: list[np.ndarray]) -> WalkResult:
    """A numpy walk's result from the pieces of its (inside, boundary ids, offsets, states)."""
    return WalkResult(*(np.concatenate(p).astype(np.int64, copy=False) if p else np.zeros(0, dtype=np.int64)
                        for p in found))


def _node_walk(nodes: np.ndarray) -> WalkResult:
    """A walk result whose boundaries are trie ``nodes`` (all of one group): what
    ``_walk_rest`` continues, for the sub-walks of C groups that Python makes."""
    return WalkResult(_NO_IDS, nodes, nodes, nodes, by_node=True)


# the boundary recursion makes its sub-walks in C (``NativeBoundaries``' ``trie``); False
# makes them in Python as before (tests compare the two)
C_SUB_WALKS = True

# walks of "other keys" lexemes from the key's trie states as the shared walk of the
# string body less where the key dies (``MaskComputer._key_body_walk``); False walks each
# (tests compare the two)
KEY_BODY_WALKS = True
MAX_KEY_BODY_WALKS = 256  # kept per token table (16 KB each at most)

# compact parts whose mask alone is kept (``MaskComputer._alone_mask``), at most
MAX_ALONE = 4096

# masks inside keys composed from each key's own walk (``MaskComputer._key_parts``);
# False walks the product of the alive keys instead (the reference of the tests)
KEY_PARTS = True


@dataclass
class KeyParts:
    """The walks a mask inside keys is the union of (``MaskComputer._key_parts``)."""

    insides: list  # each alive unused key's tokens read inside it (Words)
    bounded: list  # (key lexer, walk) of the keys whose walk has boundary subtrees
    native: bool  # every key lexer is a C product (the C boundary recursion runs them)
    first: LexerDFA | None  # a key lexer (None: every alive key is used)
    # without boundaries, the mask is the union of ``insides`` whatever the column: kept
    # here once made (shared like the walks; read-only)
    words: np.ndarray | None = None


class MaskComputer:
    """Computes (and caches) the allowed-token bitmask for a parser column and lexer state."""

    def __init__(self, tokens: TokenTable, lexer: Lexer, parser: EarleyParser, eos_ids: tuple[int, ...],
                 max_seconds: float = DEFAULT_MASK_SECONDS):
        self.tokens = tokens
        self.lexer = lexer
        self.parser = parser
        self.eos_ids = np.array([i for i in eos_ids if i < tokens.n_vocab], dtype=np.int64)
        self._eos_words = pack_ids(self.eos_ids, self.tokens.n_words)
        self.max_seconds = max_seconds
        self._deadline: float | None = None  # of the mask being computed (callers hold the grammar's lock)
        self._scratch: np.ndarray | None = None  # the native walks' words (see _native_walk)
        self._native: NativeBoundaries | None = None  # the C boundary recursion, made on first use
        self._mask_scratch: np.ndarray | None = None  # a native mask is built here, then interned
        self._interned: dict[int, np.ndarray] = {}  # kept masks by digest (native path)
        self._zero_bytes: np.ndarray | None = None  # _mask_scratch as bytes (zeroed as such)
        self._alone: dict[int, tuple] = {}  # id(compact part) -> (part, its mask): see _alone_mask
        self._all_words: np.ndarray | None = None  # every real token (see first_byte_words)
        # one C call for all parts; numpy (one OR per part) in the pure-Python fallback
        self._or_parts = _native.or_parts if native_enabled() else or_parts

    def lexer_for(self, col: EarleySet) -> LexerDFA:
        return self.lexer.for_lexemes(col.lexing)

    def full_walk(self, lexer: LexerDFA, state: int) -> WalkResult:
        """The walk of the whole vocabulary from ``state``, cached on the shared lexer core."""
        # lexer cores are shared across grammars *and vocabularies*: key by both
        key = (self.tokens, state)
        res = lexer.walk_cache.get(key)
        if res is None:
            res = self._walk_vocabulary(lexer, state)
            lexer.walk_cache[key] = res
        return res

    def _walk_vocabulary(self, lexer: LexerDFA, state: int) -> WalkResult:
        tokens = self.tokens
        if _is_native(lexer.core) and tokens.max_len < 1024:
            res = None
            if lexer.core.string_body is not None and KEY_BODY_WALKS:
                res = self._key_body_walk(lexer.core, state)
            if res is None:
                res = self._native_walk(lexer.core, None, state)  # from the trie's roots
        else:
            res = self._numpy_walk_vocabulary(lexer, state)
        if lexer.accepting[state]:
            # The current lexeme may end right here; tokens starting with a dead byte then
            # start the next lexeme, which is exactly the next column's own mask.
            res.starts_next = self.first_byte_words(lexer.table_row(state) < 0)
        return res

    def _key_body_walk(self, core, state: int) -> WalkResult | None:
        """The walk from ``state`` of an "other keys" lexeme (``core.string_body``) as the
        any-string body's walk less the token subtrees where the key dies (None: not
        that case). Every such table reads like the body from its trie states but for
        those (``_native.trie_kills`` finds them), and the body's walk is the same in all
        of them but for the id of the end state in their boundaries: so the walks are kept
        per token table by their killed subtrees (``TokenTable.key_body_walks``; few
        differ: e.g. every name's node kills the tokens from its closing quote alike),
        not once per object and state."""
        body, end, table, acc = core.string_body
        q = int(core.components(state)[0])
        tokens = self.tokens
        if q < 0:
            return None
        kills = _native.trie_kills(tokens.packed_trie, table, acc, q, body)
        if kills is None:
            return None
        end_state = core.state_of_local(end)
        walks = tokens.key_body_walks
        got = walks.get(kills)
        if got is None:
            base = walks.get(b"")
            if base is None:
                res = self._native_walk(core, None, core.state_of_local(body))
                if res.boundary_ids.size and (res.boundary_state != end_state).any():
                    return None  # (not a table of that kind)
                base = walks[b""] = (res.inside, res.boundary_ids, res.boundary_pos)
            got = self._less_subtrees(base, np.frombuffer(kills, dtype=np.int32)) if kills else base
            if len(walks) >= MAX_KEY_BODY_WALKS:
                walks.clear()
                walks[b""] = base
            walks[kills] = got
        inside, ids, pos = got
        if not ids.size:
            return WalkResult(inside, _NO_IDS, _NO_IDS, _NO_IDS, by_node=True)
        return WalkResult(inside, ids, pos, np.full(ids.size, end_state, dtype=np.int64), by_node=True)

    def _less_subtrees(self, base: tuple, kills: np.ndarray) -> tuple:
        """``base`` (inside, boundary nodes, offsets) less the trie subtrees ``kills``
        (in preorder, disjoint)."""
        inside, ids, pos = base
        _, _, node_end, tok, tok_ids = self.tokens.trie
        ends = node_end[kills]
        dead = np.concatenate([tok_ids[a:b] for a, b in zip(tok[kills].tolist(), tok[ends].tolist(), strict=True)])
        if dead.size:
            words = np.zeros(self.tokens.n_words, dtype=np.uint32)
            or_into(words, inside)
            clear_bits(words, dead)
            words.flags.writeable = False
            inside = words
        if ids.size:
            j = np.searchsorted(kills, ids, side="right") - 1
            hit = (j >= 0) & (ids < ends[np.maximum(j, 0)])
            if hit.any():
                ids, pos = ids[~hit], pos[~hit]
        return inside, ids, pos

    def first_byte_words(self, dead: np.ndarray) -> np.ndarray:
        """The real tokens whose first byte is ``dead`` (bool per byte), as words.

        Usually most bytes are dead (the state ends a lexeme and little continues it):
        then all real tokens less those of the few live first bytes, which are contiguous
        runs (``with_first_byte``), instead of selecting ~120k ids one by one (~1 ms)."""
        tokens = self.tokens
        dead_bytes, live_bytes = np.flatnonzero(dead), np.flatnonzero(~dead)
        if live_bytes.size >= dead_bytes.size:
            return pack_ids(tokens.with_first_byte(dead_bytes), tokens.n_words)
        if self._all_words is None:
            self._all_words = pack_ids(tokens.real_ids, tokens.n_words)
        return self._all_words & ~pack_ids(tokens.with_first_byte(live_bytes), tokens.n_words)

    def _numpy_walk_vocabulary(self, lexer: LexerDFA, state: int) -> WalkResult:
        tokens, row = self.tokens, lexer.table_row(state)
        ids = tokens.by_length
        ids = ids[(row >= 0).take(tokens.first_byte.take(ids))]
        inside = []
        # bytes that loop on this state (e.g. a string body): tokens made only of them stay here
        loop = np.nonzero(row == state)[0]
        if loop.size >= 16 and ids.size:
            stays = tokens.only_bytes(ids, loop)
            inside.append(ids[stays])
            ids = ids[~stays]
        res = walk_from_start(tokens, lexer, state, ids)
        res.inside = pack_ids(np.concatenate([res.inside, *inside]), self.tokens.n_words)
        return res

    def _walk_rest(self, lexer: LexerDFA, res: WalkResult, sel) -> WalkResult:
        """The boundary tokens ``sel`` of ``res``, from where their lexeme ended, through
        ``lexer`` from its start state."""
        where = res.boundary_ids[sel]
        if res.by_node and _is_native(lexer.core):  # whole subtrees, walked in the trie
            nodes = np.ascontiguousarray(where, dtype=np.int32)
            return self._native_walk(lexer.core, nodes, np.zeros(nodes.shape, dtype=np.int32))
        # token ids: a numpy walk's result, or a lexer of the other kind (SGL_NATIVE changed)
        ids, pos = self.tokens.subtree_tokens(where) if res.by_node else (where, res.boundary_pos[sel])
        sub = walk(self.tokens, lexer, 0, ids, pos)
        sub.inside = pack_ids(sub.inside, self.tokens.n_words)
        return sub

    def _native_walk(self, core, nodes: np.ndarray | None, states: np.ndarray | int) -> WalkResult:
        """Trie subtrees ``nodes`` from lexer ``states`` (the C product builds rows on the way);
        ``nodes`` None: the whole vocabulary from state ``states`` (the trie's roots whose
        byte is live there, ``walk_roots``)."""
        tokens = self.tokens
        # one zeroed scratch per computer (masks run under the grammar's lock), which
        # take_words hands back compacted and clears: no 16 KB array per walk
        words = self._scratch
        if words is None:
            words = self._scratch = np.zeros(tokens.n_words, dtype=np.uint32)
        try:
            if nodes is None:
                found = _native.walk_roots(tokens.packed_trie, tokens.subtree_bytes, tokens.max_chars, tokens.trie[4],
                                           core.product, tokens.root_of_byte, states, words, tokens.loop_memo_args)
                if found[3] is not None:  # a loopy state's signature without a memo yet
                    tokens.add_loop_memo(found[3])
            else:
                found = _native.walk_trie(tokens.packed_trie, tokens.subtree_bytes, tokens.max_chars,
                                          tokens.trie[4], core.product, nodes, states, words)
        except OverflowError as e:
            words[:] = 0
            raise core._budget(e) from e
        except BaseException:
            words[:] = 0
            raise
        taken = _native.take_words(words, SPARSE_WORDS)
        if type(taken) is tuple:
            inside = (np.frombuffer(taken[0], dtype=np.int64), np.frombuffer(taken[1], dtype=np.uint32))
        else:
            inside = np.frombuffer(taken, dtype=np.uint32)
        if not found[0]:  # no boundaries (most walks): no arrays to make
            return WalkResult(inside, _NO_IDS, _NO_IDS, _NO_IDS, by_node=True)
        ids, pos, st = found[:3]
        frombuffer = np.frombuffer
        return WalkResult(inside, frombuffer(ids, dtype=np.int64), frombuffer(pos, dtype=np.int64),
                          frombuffer(st, dtype=np.int64), by_node=True)

    def mask(self, col: EarleySet, state: int) -> np.ndarray:
        """The allowed tokens as uint32 words (bit i of word i//32 = token i)."""
        words = col.mask_cache.get(state)
        if words is None:
            if self._deadline is None:  # the outermost call: the budget starts here
                self._deadline = time.monotonic() + self.max_seconds
                try:
                    return self.mask(col, state)
                finally:
                    self._deadline = None
            self._check_budget()
            lexer, state_key = self.lexer_for(col), state
            parts = self._key_parts(col, lexer, state)
            if parts is not None:
                words = col.mask_cache[state_key] = self._keys_mask(col, parts)
                return words
            dead = None if col.wide is None else used_key_tokens(self, col, lexer, state)
            lexer, state = self._one_lexeme(lexer, state)
            res = self.full_walk(lexer, state)
            extra: list[Words] = [res.inside]
            # first the parts that recurse into mask(): the words below may be a scratch
            if res.starts_next is not None:
                nxt_col = self.parser.scan(col, lexer.accepts[state])
                if nxt_col is not None:
                    extra.append(("&", self.mask(nxt_col, 0), res.starts_next))  # OR-ed without a temporary
            if self.eos_ids.size and can_end(self.parser, col, lexer, state):
                extra.append(self._eos_words)
            native = self._native_boundaries(lexer)
            if native is None:
                words = np.zeros(self.tokens.n_words, dtype=np.uint32)
                self._boundaries(col, lexer, res, extra)
                self._or_parts(words, extra)
                clear_bits(words, dead)
            elif dead is None and len(extra) == 1 and not res.boundary_ids.size:
                words = self._alone_mask(extra[0])  # one walk's tokens (a string body, a key)
            else:  # the same recursion in one C call, OR-ed into the scratch
                words = self._mask_words()
                if res.boundary_ids.size:
                    native.run(col, lexer, res, words, self._deadline, self._check_budget, self._walk_rest)
                self._or_parts(words, extra)
                clear_bits(words, dead)
                words = self._intern(words)
            if words.flags.writeable:
                words.flags.writeable = False  # shared by every matcher in this state
            col.mask_cache[state_key] = words
        return words

    def _mask_words(self) -> np.ndarray:
        """The native path's zeroed scratch for one mask (see ``_intern``)."""
        words = self._mask_scratch
        if words is None:
            words = self._mask_scratch = np.zeros(self.tokens.n_words, dtype=np.uint32)
            self._zero_bytes = words.view(np.uint8)
        else:
            self._zero_bytes.fill(0)  # as bytes: a memset, ~2x faster than filling words
        return words

    def _alone_mask(self, part: Words) -> np.ndarray:
        """The native path's mask made of one walk's ``part`` alone (no boundaries, no
        other part, nothing to clear): a read-only dense part is that mask as it is; a
        compact one gives the same interned mask each time (kept by the part, which the
        walk caches keep alive: no zeroing, OR, digest or compare on its next miss)."""
        if type(part) is not tuple:
            if not part.flags.writeable:  # (walk results from the C kernel; never written)
                return part
        else:
            got = self._alone.get(id(part))
            if got is not None and got[0] is part:
                return got[1]
        words = self._mask_words()
        self._or_parts(words, [part])
        words = self._intern(words)
        if type(part) is tuple:
            if len(self._alone) >= MAX_ALONE:
                self._alone.clear()  # a cache, bounded
            self._alone[id(part)] = (part, words)
        return words

    def _intern(self, scratch: np.ndarray) -> np.ndarray:
        """The kept mask equal to ``scratch``, or a new copy of it: most masks of a grammar
        repeat (~1 distinct in 8 on MaskBench), and a fresh 16 KB array per mask miss cost
        its page faults (and the memory) each time."""
        key = _native.words_digest(scratch)
        kept = self._interned.get(key)
        if kept is not None and _native.words_equal(kept, scratch):
            return kept
        words = scratch.copy()
        words.flags.writeable = False
        if kept is None:  # (a digest collision keeps the first: the copy is still right)
            self._interned[key] = words
        return words

    def _native_boundaries(self, lexer: LexerDFA) -> NativeBoundaries | None:
        """The C boundary recursion, where the parser and ``lexer`` are native (else the
        Python ``_boundaries``; lexers of both kinds mix when ``SGL_NATIVE`` changes)."""
        if self._native is None:
            if not (native_enabled() and self.parser.native is not None):
                return None
            # the duplicate-key check (``ParserTables.unique_keys``) filters columns inside
            # the compiled scan, so the C loop scans by itself on those grammars too; the
            # python_scans mode (every new scan through ``EarleyParser.scan``) stays for tests
            python_scans = boundary.FORCE_PYTHON_SCANS
            tokens, trie = self.tokens, None
            if tokens.max_len < 1024 and C_SUB_WALKS:  # the C walk's trie: sub-walks made in C
                trie = (tokens.packed_trie, tokens.subtree_bytes, tokens.max_chars, tokens.trie[4])
            self._native = NativeBoundaries(self.parser, self.lexer, tokens.n_words, _group_boundaries,
                                            python_scans, trie, _node_walk)
        return self._native if _is_native(lexer.core) else None

    def _key_parts(self, col: EarleySet, lexer: LexerDFA, state: int) -> KeyParts | None:
        """Inside a key where every lexeme still alive is a key of the duplicate-key check
        (JSON strings: no two read the same text, none is a prefix of another), the walks
        of each alive key not used yet, each from its state in that key's own lexer: the
        mask is then the union of theirs (a token stays inside the product iff it stays
        inside one key, and ends a key where that key alone ends it). Their walks are
        shared by every object and grammar with those keys, whatever the keys beside
        them or used before. None elsewhere.

        Kept per (state, used keys) on ``lexer`` (``LexerDFA.key_walks``): another object
        at the same key state (the next item of an array, the same rule object in another
        place) finds its parts without a walk lookup per key."""
        u = self.parser.t.unique_keys
        if u is None or state == 0 or not KEY_PARTS:
            return None
        known = lexer.key_parts.get(state, False)
        if known is False:
            known = lexer.key_parts[state] = alive_keys(self, lexer, state, u.strings)
        if known is None:
            return None
        used = None if col.wide is None else col.wide - col.allowed
        key = (self.tokens, state, used)
        got = lexer.key_walks.get(key)
        if got is None:
            singles = [(single, q) for lex, single, q in known if used is None or lex not in used]
            got = KeyParts([], [], all(_is_native(single.core) for single, _q in singles),
                           singles[0][0] if singles else None)
            for single, q in singles:
                res = self.full_walk(single, q)
                got.insides.append(res.inside)
                if res.boundary_ids.size:
                    got.bounded.append((single, res))
            if len(lexer.key_walks) >= lexer_module.MAX_KEY_SETS:
                lexer.key_walks.clear()  # a cache: bounded, whatever the objects generated
            lexer.key_walks[key] = got
        return got

    def _keys_mask(self, col: EarleySet, parts: KeyParts) -> np.ndarray:
        """The mask of ``col`` inside keys: the union of each key's (see ``_key_parts``);
        none of the states accepts, so no lexeme ends here and nothing starts."""
        native = self._native_boundaries(parts.first) if parts.first is not None and parts.native else None
        if native is not None and not parts.bounded:  # the same mask in every column
            if len(parts.insides) == 1:
                return self._alone_mask(parts.insides[0])  # one key alive (or left)
            words = parts.words
            if words is None:
                words = self._mask_words()
                self._or_parts(words, parts.insides)
                words = parts.words = self._intern(words)
            return words
        extra: list[Words] = list(parts.insides)
        words = self._mask_words() if native is not None else np.zeros(self.tokens.n_words, dtype=np.uint32)
        for single, res in parts.bounded:
            if native is None:
                self._boundaries(col, single, res, extra)
            else:
                native.run(col, single, res, words, self._deadline, self._check_budget, self._walk_rest)
        self._or_parts(words, extra)
        if native is not None:
            words = self._intern(words)
        if words.flags.writeable:
            words.flags.writeable = False
        return words

    def _one_lexeme(self, lexer: LexerDFA, state: int) -> tuple[LexerDFA, int]:
        """Where only one lexeme is still alive, the same state in that lexeme's own lexer.

        Its future bytes, boundaries and lexemes are the same, and that lexer is shared
        by every grammar and lexeme set containing the lexeme, so its vocabulary walks
        (e.g. inside a string) are done once, not once per combination of lexemes.
        """
        if len(lexer.order) < 2 or state == 0:
            return lexer, state
        known = lexer.one_lexeme.get(state, False)
        if known is False:
            one = single_live(lexer.core, state)
            known = None  # (not the lexer itself: no reference cycle)
            if one is not None:
                j, q = one
                single = self.lexer.for_lexemes(frozenset((lexer.order[j],)))
                known = (single, single.core.state_of_local(q))
            lexer.one_lexeme[state] = known
        return (lexer, state) if known is None else known

    def _boundaries(self, col: EarleySet, lexer: LexerDFA, res: WalkResult, extra: list) -> None:
        """Tokens whose current lexeme ends inside them: scan it, walk the rest from there.

        The hot loop of mask misses (a few groups per level, a few levels per token):
        attribute lookups are hoisted, and the budget is checked once per level and
        before each walk rather than per group."""
        if not res.boundary_ids.size:
            return
        groups = res.groups
        if groups is None:
            groups = res.groups = _group_boundaries(lexer.core, res)
        self._check_budget()
        scan, accepts, for_lexemes, subs = self.parser.scan, lexer.accepts, self.lexer.for_lexemes, res.subs
        children = col.children
        for group, sel in groups:
            lexemes = accepts[group[0]]
            nxt_col = children.get(lexemes, False)  # the scan's own cache, without its call
            if nxt_col is False:
                nxt_col = scan(col, lexemes)
            if nxt_col is None:
                continue
            nxt_lexer = for_lexemes(nxt_col.allowed)
            key = (group, nxt_lexer.core.uid)  # a small int: cheaper to hash than the content key
            sub = subs.get(key)
            if sub is None:
                self._check_budget()
                sub = subs[key] = self._walk_rest(nxt_lexer, res, sel)
            inside = sub.inside
            if type(inside) is not tuple or inside[0].size:
                extra.append(inside)
            if sub.boundary_ids.size:
                self._boundaries(nxt_col, nxt_lexer, sub, extra)

    def _check_budget(self) -> None:
        # between scans and walks: a mask over many boundaries (huge ambiguous grammars,
        # thousands of lexemes) stops with a clear error instead of running for seconds;
        # nothing half-built is cached (caches are written when a part is complete)
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise CompileBudgetExceeded(
                f"computing one token mask ran over its time budget of {self.max_seconds:g} s (budget: mask_seconds)", budget="mask_seconds")


def can_end(parser: EarleyParser, col: EarleySet, lexer: LexerDFA, state: int) -> bool:
    """May the text end here (EOS)? ``lexer`` reads the lexeme in progress."""
    if state == 0:
        return col.accepting
    if not lexer.accepting[state]:
        return False
    nxt = parser.scan(col, lexer.accepts[state])
    return nxt is not None and nxt.accepting
