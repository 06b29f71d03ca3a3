"""The KV cache of the continuous-batching engine: one pool of fixed-size blocks.

Every sequence's keys and values live in blocks of ``block_size`` token slots taken from
one preallocated pool, so sequences of any length share one memory budget, a finished
sequence's blocks can be handed to the prefix cache instead of being copied, and a
sequence that does not fit is preempted rather than crashing the process.

Slot ``s`` of the pool holds one token's keys for every layer: ``k[layer, s]`` is
``[kv_heads, head_dim]``. Block ``b`` owns slots ``b * block_size .. (b+1) * block_size - 1``.
"""

from __future__ import annotations

import torch

from .llama import LlamaConfig


def bytes_per_token(config: LlamaConfig, dtype: torch.dtype) -> int:
    """Memory one cached token takes (keys and values, every layer)."""
    elem = torch.empty(0, dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * elem


class KVPool:
    """Preallocated key/value slots, handed out block by block.

    Args:
        config: the model's architecture (layers, KV heads, head size).
        budget_bytes: the memory the pool may take; it holds
            ``budget_bytes // (block_size * bytes_per_token)`` blocks.
        block_size: tokens per block.
    """

    def __init__(self, config: LlamaConfig, budget_bytes: int, block_size: int = 16,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.n_blocks = budget_bytes // (block_size * bytes_per_token(config, dtype))
        if self.n_blocks < 2:
            raise ValueError(
                f"a KV budget of {budget_bytes / 2**20:.1f} MiB holds fewer than 2 blocks of "
                f"{block_size} tokens for this model; raise the budget")
        shape = (config.num_hidden_layers, self.n_blocks * block_size,
                 config.num_key_value_heads, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # A stack: the most recently freed block is reused first (warm in the CPU cache).
        self._free = list(range(self.n_blocks - 1, -1, -1))

    @property
    def n_free(self) -> int:
        return len(self._free)

    @property
    def capacity_tokens(self) -> int:
        return self.n_blocks * self.block_size

    def alloc(self, n: int) -> list[int] | None:
        """``n`` free blocks, or None (and nothing taken) if the pool has fewer."""
        if n > len(self._free):
            return None
        out = self._free[len(self._free) - n:][::-1]
        del self._free[len(self._free) - n:]
        return out

    def release(self, blocks: list[int]) -> None:
        """Give blocks back to the pool."""
        self._free.extend(blocks)

    def blocks_for(self, n_tokens: int) -> int:
        """How many blocks hold ``n_tokens`` tokens."""
        return -(-n_tokens // self.block_size)

    def slots(self, blocks: list[int], start: int, end: int) -> torch.Tensor:
        """Slot indices (int64) of positions ``start .. end-1`` of a sequence with ``blocks``."""
        pos = torch.arange(start, end)
        table = torch.tensor(blocks, dtype=torch.long)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size
