"""The vocabulary as the walks read it: a padded byte matrix and a byte trie of the tokens.

``TokenTable`` is built once per vocabulary (``compiled.token_table``) and shared by every
grammar; the trie (tokens sorted by bytes, each node with the end of its subtree) is what
the native kernel walks, with per-node facts (UTF-8 well-formedness below a node, the most
characters below it, the bytes below it) computed once here in numpy. The loop memos of
``_native.loop_frontier`` are kept on it too (shared by every lexer of the vocabulary).
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from .native import _native, native_enabled

# one trie node for the native kernel (the C struct Node in _native.c)
# ``utf8``: 1 when every token below the node, read from the node's byte on, is well-formed
# (possibly cut short) UTF-8 starting at a character boundary (see ``utf8_subtrees``)
NODE_DTYPE = np.dtype([("end", "<i4"), ("tok", "<i4"), ("depth", "<u2"), ("byte", "u1"), ("utf8", "u1")])

MAX_LOOP_MEMOS = 16  # _native.c's MAX_MEMOS
_memo_lock = threading.Lock()


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
        # which byte values occur in each token, as 4 x 64-bit sets (a block of tokens at
        # a time: an (n, 256) bool matrix was 33 MB of the vocabulary load's peak)
        in_token = np.arange(mat.shape[1])[None, :] < self.lengths[:, None]
        bits = np.empty((n, 32), dtype=np.uint8)
        for a in range(0, n, _LCP_BLOCK):
            b = min(n, a + _LCP_BLOCK)
            present = np.zeros((b - a, 256), dtype=bool)
            inside = in_token[a:b]
            present[np.broadcast_to(np.arange(b - a)[:, None], inside.shape)[inside], mat[a:b][inside]] = True
            bits[a:b] = np.packbits(present, axis=1, bitorder="little")
        bits = bits.view(np.uint64)
        self.byte_sets = [np.ascontiguousarray(bits[:, i]) for i in range(4)]
        # token-major bytes for the native kernel: token i is tok_bytes[tok_off[i]:tok_off[i+1]]
        self.tok_bytes = np.ascontiguousarray(mat[in_token])
        self.tok_off = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)]).astype(np.int64)
        # "other keys" walks from the any-string body's, by the trie subtrees they lack
        # (``MaskComputer._key_body_walk``): (inside, boundary nodes, their offsets)
        self.key_body_walks: dict[bytes, tuple] = {}
        # loopy-state signature -> its loop memo (``_native.loop_frontier``), made when a
        # whole-vocabulary walk first enters a root in such a state (``add_loop_memo``)
        self.loop_memos: dict[bytes, tuple] = {}
        self.loop_memo_args: tuple = ()  # (signature, *memo) each, as walk_roots takes them
        if native_enabled() and self.max_len < 1024:
            # built with the vocabulary (as a token trie is), not on the first mask
            self.packed_trie  # noqa: B018
            self.subtree_bytes  # noqa: B018
            self.max_chars  # noqa: B018

    # (cached properties: built on first use, then plain attributes that the walks read)
    @functools.cached_property
    def packed_trie(self) -> np.ndarray:
        """The trie as the native kernel's packed node records, checked once."""
        node_byte, depth, end, tok, ids = self.trie
        n = node_byte.size
        packed = np.zeros(n + 1, dtype=NODE_DTYPE)  # a sentinel last: its tok ends the last node
        packed["end"][:n], packed["tok"], packed["depth"][:n], packed["byte"][:n] = end, tok, depth, node_byte
        packed["utf8"][:n] = utf8_subtrees(node_byte, depth, _trie_parents(depth))
        _native.check_trie(packed, ids, self.n_words)
        return packed

    @functools.cached_property
    def subtree_bytes(self) -> np.ndarray:
        """Per trie node, the byte values in its subtree, as 4 x 64 bits (uint64 (n, 4))."""
        return subtree_byte_sets(*self.trie[:3])

    @functools.cached_property
    def max_chars(self) -> np.ndarray:
        """Per trie node, the most characters any token below it holds from the node's byte
        on (uint8, saturated at ``MAX_CHARS``; see ``max_chars_below``)."""
        node_byte, depth = self.trie[:2]
        return max_chars_below(node_byte, depth, _trie_parents(depth))

    def subtree_tokens(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The tokens below trie ``nodes`` and the byte offset of each node in them."""
        _, depth, end, tok, ids = self.trie
        starts, stops = tok[nodes], tok[end[nodes]]
        counts = (stops - starts).astype(np.int64)
        offsets = np.repeat(starts.astype(np.int64) - np.cumsum(counts) + counts, counts)
        picks = np.arange(int(counts.sum()), dtype=np.int64) + offsets
        return ids[picks], np.repeat(depth[nodes].astype(np.int64) - 1, counts)

    @functools.cached_property
    def trie_roots(self) -> np.ndarray:
        """The trie's depth-1 nodes (one per first byte), where a whole-vocabulary walk starts."""
        return np.ascontiguousarray(np.nonzero(self.trie[1] == 1)[0], dtype=np.int32)

    @functools.cached_property
    def root_of_byte(self) -> np.ndarray:
        """int32 per byte value: the trie's depth-1 node of that first byte, -1 if no token
        starts with it (``walk_roots`` starts a whole-vocabulary walk from the live ones)."""
        roots = self.trie_roots
        table = np.full(256, -1, dtype=np.int32)
        table[self.trie[0][roots]] = roots
        return table

    def add_loop_memo(self, signature: bytes) -> None:
        """Make the loop memo of ``signature`` (a loopy lexer state's loop bytes and UTF-8
        flag, as ``walk_roots`` reports it), for the walks after this one."""
        with _memo_lock:  # token tables are shared by grammars, whose masks run on several threads
            if signature in self.loop_memos or len(self.loop_memos) >= MAX_LOOP_MEMOS:
                return
            self.loop_memos[signature] = _native.loop_frontier(
                self.packed_trie, self.subtree_bytes, self.root_of_byte, signature, self.trie[4], self.n_words)
            self.loop_memo_args = tuple((sig, *memo) for sig, memo in self.loop_memos.items())

    @functools.cached_property
    def trie(self) -> tuple[np.ndarray, ...]:
        """The real tokens as a byte trie in preorder, for the native kernel (built once).

        ``(byte u8, depth i32, end i32, tok i32, ids i64)`` per node: its byte, its depth
        (1 = a token's first byte), the index just past its subtree, and ``tok[i] ..
        tok[i+1]`` the positions in ``ids`` (tokens sorted by bytes) of the tokens that end
        at node i; ``tok[i] .. tok[end[i]]`` are all the tokens of its subtree.
        """
        return build_trie(self.tok_bytes, self.tok_off, self.real_ids)

    @classmethod
    def from_token_bytes(cls, token_bytes: list[bytes | None], n_vocab: int) -> TokenTable:
        return cls(*byte_matrix(token_bytes), n_vocab)

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


def byte_matrix(token_bytes: list[bytes | None]) -> tuple[np.ndarray, np.ndarray]:
    """``(bytes uint8[n, max_len], lengths int32[n])`` of ``token_bytes``, zero-padded
    (length 0 for None)."""
    n = len(token_bytes)
    lengths = np.fromiter((len(b) if b else 0 for b in token_bytes), dtype=np.int32, count=n)
    width = max(int(lengths.max(initial=0)), 1)
    mat = np.zeros((n, width), dtype=np.uint8)
    flat = np.frombuffer(b"".join(b for b in token_bytes if b), dtype=np.uint8)
    mat[np.arange(width)[None, :] < lengths[:, None]] = flat  # row-major: the concatenation's order
    return mat, lengths


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
    del pairs
    n = ids.size
    offs = tok_off[ids]
    lengths = (tok_off[ids + 1] - offs).astype(np.int64)
    width = int(lengths.max(initial=0))
    lcp = np.zeros(n, dtype=np.int64)
    # the common prefix of each token with the one before it, over padded rows built a
    # block at a time (the whole (n, width) matrix and its comparison were ~100 MB of
    # the vocabulary load's peak RSS for Llama-3, for a result of n integers)
    for a in range(1, n, _LCP_BLOCK):
        b = min(n, a + _LCP_BLOCK)
        rows = _padded_rows(tok_bytes, offs[a - 1 : b], lengths[a - 1 : b], width)
        differ = rows[1:] != rows[:-1]  # the -1 column guarantees a difference
        lcp[a:b] = np.minimum(differ.argmax(axis=1), np.minimum(lengths[a:b], lengths[a - 1 : b - 1]))
    added = lengths - lcp  # nodes each token adds
    start = np.concatenate([[0], np.cumsum(added)])  # first node each token adds
    n_nodes = int(start[-1])
    owner = np.repeat(np.arange(n), added)  # the token that added each node
    depth = (np.arange(n_nodes) - start[owner] + lcp[owner] + 1).astype(np.int32)
    node_byte = tok_bytes[offs[owner] + depth - 1].astype(np.uint8)
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


_LCP_BLOCK = 8192  # tokens per block of the per-token passes over padded rows (bounds their scratch)


def _padded_rows(tok_bytes: np.ndarray, offs: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """int16 ``(len(offs), width + 1)``: each token's bytes, -1 past its end (never equal
    to a byte), gathered in row-major order straight from their offsets."""
    rows = np.full((offs.size, width + 1), -1, dtype=np.int16)
    inside = np.arange(width)[None, :] < lengths[:, None]
    within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows[:, :width][inside] = tok_bytes[np.repeat(offs, lengths) + within]
    return rows


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
