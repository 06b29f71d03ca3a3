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

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from . import boundary
from . import lexer as lexer_module
from .boundary import NativeBoundaries
from .earley import EarleyParser, EarleySet
from .errors import CompileBudgetExceeded
from .key_masks import alive_keys, clear_bits, used_key_tokens
from .lexer import Lexer, LexerDFA, single_live
from .native import _native, native_enabled

# one trie node for the native kernel (the C struct Node in _native.c)
# ``utf8``: 1 when every token below the node, read from the node's byte on, is well-formed
# (possibly cut short) UTF-8 starting at a character boundary (see ``utf8_subtrees``)
NODE_DTYPE = np.dtype([("end", "<i4"), ("tok", "<i4"), ("depth", "<u2"), ("byte", "u1"), ("utf8", "u1")])
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


class TokenTable:
    """The vocabulary as a padded byte matrix, the input of every walk."""

    def __init__(self, matrix: np.ndarray, lengths: np.ndarray, n_vocab: int):
        """``matrix``: uint8 (n_tokens, max_len) zero-padded token bytes; ``lengths`` per token."""
        n = matrix.shape[0]
        # one extra zero column so that reading at position == length never overflows
        mat = np.zeros((n, matrix.shape[1] + 1), dtype=np.uint8)
        mat[:, : matrix.shape[1]] = matrix
        self.n_tokens = n
        # position-major, flattened: byte ``p`` of token ``i`` is ``flat_bytes[p * n_tokens + i]``
        self.flat_bytes = np.ascontiguousarray(mat.T).ravel()
        self.lengths = np.asarray(lengths, dtype=np.int32)
        self.n_vocab = n_vocab
        self.n_words = (n_vocab + 31) // 32
        self.real_ids = np.nonzero(self.lengths > 0)[0].astype(np.int64)
        # real tokens longest first: at byte position k the tokens still being read are a prefix
        self.by_length = self.real_ids[np.argsort(-self.lengths[self.real_ids], kind="stable")]
        self.max_len = mat.shape[1] - 1
        # tokens grouped by first byte, so a walk can skip every group whose byte is dead
        self.first_byte = mat[:, 0].copy()
        first = self.first_byte[self.real_ids]
        order = np.argsort(first, kind="stable")
        self.by_first = self.real_ids[order]
        self.first_starts = np.searchsorted(first[order], np.arange(257))
        # which byte values occur in each token, as 4 x 64-bit sets
        present = np.zeros((n, 256), dtype=bool)
        in_token = np.arange(mat.shape[1])[None, :] < self.lengths[:, None]
        rows = np.broadcast_to(np.arange(n)[:, None], mat.shape)
        present[rows[in_token], mat[in_token]] = True
        bits = np.packbits(present, axis=1, bitorder="little").view(np.uint64)
        self.byte_sets = [np.ascontiguousarray(bits[:, i]) for i in range(4)]
        # token-major bytes for the native kernel: token i is tok_bytes[tok_off[i]:tok_off[i+1]]
        self.tok_bytes = np.ascontiguousarray(mat[in_token])
        self.tok_off = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)]).astype(np.int64)
        self._trie = None
        # "other keys" walks from the any-string body's, by the trie subtrees they lack
        # (``MaskComputer._key_body_walk``): (inside, boundary nodes, their offsets)
        self.key_body_walks: dict[bytes, tuple] = {}
        self._roots = None
        self._root_of_byte = None
        # loopy-state signature -> its loop memo (``_native.loop_frontier``), made when a
        # whole-vocabulary walk first enters a root in such a state (``add_loop_memo``)
        self.loop_memos: dict[bytes, tuple] = {}
        self.loop_memo_args: tuple = ()  # (signature, *memo) each, as walk_roots takes them
        self._packed = None
        self._subtree_bytes = None
        self._max_chars = None
        if native_enabled() and self.max_len < 1024:
            # built with the vocabulary (as a token trie is), not on the first mask
            self.packed_trie  # noqa: B018
            self.subtree_bytes  # noqa: B018
            self.max_chars  # noqa: B018

    @property
    def packed_trie(self) -> np.ndarray:
        """The trie as the native kernel's packed node records, checked once."""
        if self._packed is None:
            node_byte, depth, end, tok, ids = self.trie
            n = node_byte.size
            packed = np.zeros(n + 1, dtype=NODE_DTYPE)  # a sentinel last: its tok ends the last node
            packed["end"][:n], packed["tok"], packed["depth"][:n], packed["byte"][:n] = end, tok, depth, node_byte
            packed["utf8"][:n] = utf8_subtrees(node_byte, depth, _trie_parents(depth))
            _native.check_trie(packed, ids, self.n_words)
            self._packed = packed
        return self._packed

    @property
    def subtree_bytes(self) -> np.ndarray:
        """Per trie node, the byte values in its subtree, as 4 x 64 bits (uint64 (n, 4))."""
        if self._subtree_bytes is None:
            self._subtree_bytes = subtree_byte_sets(*self.trie[:3])
        return self._subtree_bytes

    @property
    def max_chars(self) -> np.ndarray:
        """Per trie node, the most characters any token below it holds from the node's byte
        on (uint8, saturated at ``MAX_CHARS``; see ``max_chars_below``)."""
        if self._max_chars is None:
            node_byte, depth = self.trie[:2]
            self._max_chars = max_chars_below(node_byte, depth, _trie_parents(depth))
        return self._max_chars

    def subtree_tokens(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens below trie ``nodes`` and the byte offset of each node in them."""
        _, depth, end, tok, ids = self.trie
        starts, stops = tok[nodes], tok[end[nodes]]
        counts = (stops - starts).astype(np.int64)
        offsets = np.repeat(starts.astype(np.int64) - np.cumsum(counts) + counts, counts)
        picks = np.arange(int(counts.sum()), dtype=np.int64) + offsets
        return ids[picks], np.repeat(depth[nodes].astype(np.int64) - 1, counts)

    @property
    def trie_roots(self) -> np.ndarray:
        """The trie's depth-1 nodes (one per first byte), where a whole-vocabulary walk starts."""
        if self._roots is None:
            self._roots = np.ascontiguousarray(np.nonzero(self.trie[1] == 1)[0], dtype=np.int32)
        return self._roots

    @property
    def root_of_byte(self) -> np.ndarray:
        """int32 per byte value: the trie's depth-1 node of that first byte, -1 if no token
        starts with it (``walk_roots`` starts a whole-vocabulary walk from the live ones)."""
        if self._root_of_byte is None:
            roots = self.trie_roots
            table = np.full(256, -1, dtype=np.int32)
            table[self.trie[0][roots]] = roots
            self._root_of_byte = table
        return self._root_of_byte

    def add_loop_memo(self, signature: bytes) -> None:
        """Make the loop memo of ``signature`` (a loopy lexer state's loop bytes and UTF-8
        flag, as ``walk_roots`` reports it), for the walks after this one."""
        with _memo_lock:  # token tables are shared by grammars, whose masks run on several threads
            if signature in self.loop_memos or len(self.loop_memos) >= MAX_LOOP_MEMOS:
                return
            self.loop_memos[signature] = _native.loop_frontier(
                self.packed_trie, self.subtree_bytes, self.root_of_byte, signature, self.trie[4], self.n_words)
            self.loop_memo_args = tuple((sig, *memo) for sig, memo in self.loop_memos.items())

    @property
    def trie(self) -> tuple[np.ndarray, ...]:
        """The real tokens as a byte trie in preorder, for the native kernel (built once).

        ``(byte u8, depth i32, end i32, tok i32, ids i64)`` per node: its byte, its depth
        (1 = a token's first byte), the index just past its subtree, and ``tok[i] ..
        tok[i+1]`` the positions in ``ids`` (tokens sorted by bytes) of the tokens that end
        at node i; ``tok[i] .. tok[end[i]]`` are all the tokens of its subtree.
        """
        if self._trie is None:
            self._trie = build_trie(self.tok_bytes, self.tok_off, self.real_ids)
        return self._trie


    @classmethod
    def from_token_bytes(cls, token_bytes: list[bytes | None], n_vocab: int) -> TokenTable:
        lengths = np.array([len(b) if b else 0 for b in token_bytes], dtype=np.int32)
        mat = np.zeros((len(token_bytes), max(1, int(lengths.max(initial=0)))), dtype=np.uint8)
        for i, b in enumerate(token_bytes):
            if b:
                mat[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
        return cls(mat, lengths, n_vocab)

    def byte_row(self, k: int) -> np.ndarray:
        """Byte ``k`` of every token (0 past a token's end)."""
        return self.flat_bytes[k * self.n_tokens : (k + 1) * self.n_tokens]

    def with_first_byte(self, byte_values: np.ndarray) -> np.ndarray:
        """The real tokens whose first byte is one of ``byte_values``."""
        if len(byte_values) > 16:
            live = np.zeros(256, dtype=bool)
            live[byte_values] = True
            return self.real_ids[live.take(self.first_byte.take(self.real_ids))]
        parts = [self.by_first[self.first_starts[b] : self.first_starts[b + 1]] for b in byte_values]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def only_bytes(self, ids: np.ndarray, byte_values: np.ndarray) -> np.ndarray:
        """A boolean mask over ``ids``: tokens made only of ``byte_values``."""
        member = np.zeros(256, dtype=bool)
        member[byte_values] = True
        allowed = np.packbits(member, bitorder="little").view(np.uint64)
        sets = self.byte_sets
        outside = (sets[0] & ~allowed[0]) | (sets[1] & ~allowed[1])
        outside |= (sets[2] & ~allowed[2]) | (sets[3] & ~allowed[3])
        return outside.take(ids) == 0


def build_trie(tok_bytes: np.ndarray, tok_off: np.ndarray, real_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """The preorder byte trie of tokens ``real_ids`` (see ``TokenTable.trie``), in numpy.

    Sorted by bytes, each token adds one node per byte past its common prefix with the
    token before it (``lcp``); a node at depth d made by token j ends where the first later
    token with ``lcp < d`` starts adding nodes.
    """
    raw = tok_bytes.tobytes()
    off = tok_off.tolist()
    pairs = sorted((raw[off[i] : off[i + 1]], i) for i in real_ids.tolist())
    ids = np.array([i for _, i in pairs], dtype=np.int64)
    n = ids.size
    lengths = (tok_off[ids + 1] - tok_off[ids]).astype(np.int64)
    width = int(lengths.max(initial=0))
    mat = np.zeros((n, width + 1), dtype=np.int16)  # -1 past the end: never equal to a byte
    mat[:] = -1
    cols = np.arange(width)
    inside = cols[None, :] < lengths[:, None]
    mat[:, :width][inside] = tok_bytes[(tok_off[ids][:, None] + cols[None, :])[inside]]
    lcp = np.zeros(n, dtype=np.int64)
    if n > 1:
        differ = mat[1:] != mat[:-1]  # the -1 column guarantees a difference
        lcp[1:] = np.minimum(differ.argmax(axis=1), np.minimum(lengths[1:], lengths[:-1]))
    added = lengths - lcp  # nodes each token adds
    start = np.concatenate([[0], np.cumsum(added)])  # first node each token adds
    n_nodes = int(start[-1])
    owner = np.repeat(np.arange(n), added)  # the token that added each node
    depth = (np.arange(n_nodes) - start[owner] + lcp[owner] + 1).astype(np.int32)
    node_byte = mat[owner, depth - 1].astype(np.uint8)
    node_end = np.empty(n_nodes, dtype=np.int32)
    for d in range(1, width + 1):
        at = np.nonzero(depth == d)[0]
        if not at.size:
            continue
        cut = np.nonzero(lcp < d)[0]  # tokens that leave every depth-d node before them
        nxt = np.searchsorted(cut, owner[at], side="right")
        nxt_tok = np.append(cut, n)[nxt]
        node_end[at] = np.append(start[:-1], n_nodes)[nxt_tok]
    # a token ends at its last added node; one that adds none repeats its predecessor's bytes
    term = np.where(added > 0, start[1:] - 1, -1)
    term = np.maximum.accumulate(term)
    tok = np.searchsorted(term, np.arange(n_nodes + 1), side="left").astype(np.int32)
    return node_byte, depth, node_end, tok, ids.astype(np.int64)


def _trie_parents(depth: np.ndarray) -> np.ndarray:
    """Each preorder trie node's parent (the last node before it one level up; -1 at depth 1)."""
    parent = np.full(depth.size, -1, dtype=np.int64)
    for d in range(2, int(depth.max(initial=0)) + 1):
        here, above = np.nonzero(depth == d)[0], np.nonzero(depth == d - 1)[0]
        parent[here] = above[np.searchsorted(above, here) - 1]
    return parent


def _utf8_decoder() -> np.ndarray:
    """UTF-8 well-formedness as a DFA (int8 (8, 256), -1 = invalid): state 0 is a character
    boundary; the others wait for continuation bytes (with RFC 3629's narrower second-byte
    ranges after E0, ED, F0 and F4)."""
    t = np.full((8, 256), -1, dtype=np.int8)
    t[0, 0x00:0x80], t[0, 0xC2:0xE0], t[0, 0xE1:0xF0], t[0, 0xF1:0xF4] = 0, 1, 2, 3
    t[0, 0xE0], t[0, 0xED], t[0, 0xF0], t[0, 0xF4] = 4, 5, 6, 7
    t[1, 0x80:0xC0], t[2, 0x80:0xC0], t[3, 0x80:0xC0] = 0, 1, 2
    t[4, 0xA0:0xC0], t[5, 0x80:0xA0], t[6, 0x90:0xC0], t[7, 0x80:0x90] = 1, 1, 2, 2
    return t


def utf8_subtrees(node_byte: np.ndarray, depth: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Per trie node, 1 if every token below it, read from the node's byte on, is
    well-formed UTF-8 from a character boundary (cut short at the token's end allowed).

    A lexer state that reads every UTF-8 character back to itself then keeps such a
    subtree alive without a walk (``walk_trie``'s shortcut). Bottom up: a node is fine
    from decoder state u if its byte is, and all its children are from the state after it.
    """
    dec = _utf8_decoder()
    n = node_byte.size
    kids_ok = np.ones((dec.shape[0], n), dtype=bool)  # all children fine, per decoder state
    for d in range(int(depth.max(initial=0)), 0, -1):  # deepest first
        here = np.nonzero(depth == d)[0]
        nxt = dec[:, node_byte[here]].astype(np.int64)  # (8, len(here))
        ok = (nxt >= 0) & kids_ok[np.maximum(nxt, 0), here[None, :]]
        if d > 1:
            up = parent[here]
            for u in range(dec.shape[0]):  # a parent is fine only if every child is
                np.logical_and.at(kids_ok[u], up, ok[u])
        kids_ok[:, here] = ok  # from now on: this node's own verdict
    return kids_ok[0].astype(np.uint8)


MAX_CHARS = 255  # max_chars saturates here (the C walk's MAX_CHARS: "too many to count")


def max_chars_below(node_byte: np.ndarray, depth: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """Per trie node, the most characters (bytes that are not UTF-8 continuation bytes) in
    any token below it, from the node's byte on, saturated at ``MAX_CHARS``.

    A counting lexer state (a string with ``maxLength``: each character moves one state on)
    takes a subtree of its characters at once when this is at most the characters it can
    still read (``walk_trie``'s counting shortcut). Bottom up, like ``utf8_subtrees``.
    """
    starts = ((node_byte & 0xC0) != 0x80).astype(np.int64)
    below = np.zeros(node_byte.size, dtype=np.int64)  # the most below each node's children
    out = np.zeros(node_byte.size, dtype=np.int64)
    for d in range(int(depth.max(initial=0)), 0, -1):  # deepest first
        here = np.nonzero(depth == d)[0]
        out[here] = starts[here] + below[here]
        if d > 1:
            np.maximum.at(below, parent[here], out[here])
    return np.minimum(out, MAX_CHARS).astype(np.uint8)


def subtree_byte_sets(node_byte: np.ndarray, depth: np.ndarray, end: np.ndarray) -> np.ndarray:
    """For each trie node, the set of byte values in its subtree (uint64 (n, 4) bit sets)."""
    n = node_byte.size
    sets = np.zeros((n, 4), dtype=np.uint64)
    sets[np.arange(n), node_byte >> 6] = np.left_shift(np.uint64(1), (node_byte & 63).astype(np.uint64))
    parent = _trie_parents(depth)
    for d in range(int(depth.max(initial=0)), 1, -1):  # deepest first: children into parents
        here = np.nonzero(depth == d)[0]
        for w in range(4):
            np.bitwise_or.at(sets[:, w], parent[here], sets[here, w])
    return sets


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
    cat = _concat
    return WalkResult(cat(inside, np.int64), cat(b_ids, np.int64), cat(b_pos, np.int64), cat(b_state, np.int64))


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
    cat = _concat
    return WalkResult(cat(inside, np.int64), cat(b_ids, np.int64), cat(b_pos, np.int64), cat(b_state, np.int64))


_NO_IDS = np.zeros(0, dtype=np.int64)  # the boundaries of a walk with none (shared: read-only)
_NO_IDS.flags.writeable = False


def _is_native(core) -> bool:
    """Is ``core`` the C product (walked by the C kernel)?"""
    return hasattr(core, "product")


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def _node_walk(nodes: np.ndarray) -> WalkResult:
    """A walk result whose boundaries are trie ``nodes`` (all of one group): what
    ``_walk_rest`` continues, for the sub-walks of C groups that Python makes."""
    return WalkResult(_NO_IDS, nodes, nodes, nodes, by_node=True)


# the boundary recursion makes its sub-walks in C (``NativeBoundaries``' ``trie``); False
# makes them in Python as before (tests compare the two)
C_SUB_WALKS = True

# whole-vocabulary walks use loop memos (``TokenTable.add_loop_memo``): below a root entered
# in a loopy state (a string body), the tokens read inside come from the memo of the state's
# loop bytes, shared by every lexer, and only the memo's exits are walked; False walks every
# node (tests compare the two)
LOOP_MEMOS = True
MAX_LOOP_MEMOS = 16  # _native.c's MAX_MEMOS
_memo_lock = threading.Lock()

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
        self._eos_words = self._pack(self.eos_ids)
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
            row = None
        else:
            row = lexer.table_row(state)
            res = self._numpy_walk_vocabulary(lexer, state, row)
        if lexer.accepting[state]:
            # The current lexeme may end right here; tokens starting with a dead byte then
            # start the next lexeme, which is exactly the next column's own mask.
            if row is None:
                row = lexer.table_row(state)
            res.starts_next = self.first_byte_words(row < 0)
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
            return self._pack(tokens.with_first_byte(dead_bytes))
        if self._all_words is None:
            self._all_words = self._pack(tokens.real_ids)
        return self._all_words & ~self._pack(tokens.with_first_byte(live_bytes))

    def _numpy_walk_vocabulary(self, lexer: LexerDFA, state: int, row: np.ndarray) -> WalkResult:
        tokens = self.tokens
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
        res.inside = self._pack(np.concatenate([res.inside, *inside]))
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
        sub.inside = self._pack(sub.inside)
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
                                           core.product, tokens.root_of_byte, states, words,
                                           tokens.loop_memo_args if LOOP_MEMOS else ())
                if found[3] is not None and LOOP_MEMOS:
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
            if self.eos_ids.size and self.can_end(col, lexer, state):
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

    def _pack(self, ids: np.ndarray) -> np.ndarray:
        """Token ids as uint32 bitmask words."""
        if ids.size < 2048:
            words = np.zeros(self.tokens.n_words, dtype=np.uint32)
            np.bitwise_or.at(words, ids >> 5, np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))
            return words
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
