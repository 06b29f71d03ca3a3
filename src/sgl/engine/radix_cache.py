"""The prefix cache: a radix tree over token ids whose nodes are full KV blocks.

A request whose prompt starts like an earlier one (a shared system prompt, few-shot
examples, a fork, the same program run again) reuses that prefix's keys and values
instead of computing them again. The tree is block-granular: each node is one full
block of ``block_size`` token ids and owns the pool block that holds their KV, so a
match is always a whole number of blocks and shared blocks are never written to.

Nodes used by running sequences are pinned by a reference count; the others stay as a
cache and are evicted least recently used first, leaves before their parents, when the
pool runs out of blocks.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(eq=False)
class Node:
    """One cached block: its token ids, its pool block, its place in the tree."""

    key: tuple[int, ...]
    block: int
    parent: Node | None
    children: dict[tuple[int, ...], Node] = field(default_factory=dict)
    refs: int = 0
    last_used: int = 0


class RadixCache:
    """Longest-prefix lookup of cached KV blocks, with pinning and LRU eviction.

    ``release_block(block)`` is called for each block the cache evicts.
    """

    def __init__(self, block_size: int, release_block: Callable[[int], None]) -> None:
        self.block_size = block_size
        self.root = Node(key=(), block=-1, parent=None)
        self._release_block = release_block
        self._clock = itertools.count(1)

    def match(self, tokens: Sequence[int]) -> list[Node]:
        """The nodes of the longest cached prefix of ``tokens`` (whole blocks), root excluded.

        Marks the nodes as recently used; does not pin them (the engine counts the hits).
        """
        bs, node, path, now = self.block_size, self.root, [], next(self._clock)
        for i in range(len(tokens) // bs):
            node = node.children.get(tuple(tokens[i * bs:(i + 1) * bs]))
            if node is None:
                break
            node.last_used = now
            path.append(node)
        return path

    def extend(self, parent: Node | None, key: Sequence[int], block: int) -> Node | None:
        """Add ``block`` (holding the KV of ``key``) under ``parent`` (None = the root).

        Returns the new node, or None if ``parent`` already has a child for ``key``
        (another sequence cached the same tokens first; the caller keeps its block).
        The tree owns the block from then on.
        """
        parent = parent or self.root
        key = tuple(key)
        if len(key) != self.block_size:
            raise ValueError(f"a node holds exactly {self.block_size} tokens, got {len(key)}")
        if key in parent.children:
            return None
        node = Node(key=key, block=block, parent=parent, last_used=next(self._clock))
        parent.children[key] = node
        return node

    @staticmethod
    def pin(nodes: Sequence[Node]) -> None:
        for node in nodes:
            node.refs += 1

    def unpin(self, nodes: Sequence[Node]) -> None:
        now = next(self._clock)
        for node in nodes:
            if node.refs <= 0:
                raise RuntimeError("unpinning a node that is not pinned")
            node.refs -= 1
            node.last_used = now

    def evict(self, n_blocks: int) -> int:
        """Free up to ``n_blocks`` blocks, least recently used unpinned leaves first."""
        leaves = [(n.last_used, id(n), n) for n in self._nodes() if not n.children and n.refs == 0]
        heapq.heapify(leaves)
        freed = 0
        while leaves and freed < n_blocks:
            _, _, node = heapq.heappop(leaves)
            parent = node.parent
            del parent.children[node.key]
            self._release_block(node.block)
            freed += 1
            if parent is not self.root and not parent.children and parent.refs == 0:
                heapq.heappush(leaves, (parent.last_used, id(parent), parent))
        return freed

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
