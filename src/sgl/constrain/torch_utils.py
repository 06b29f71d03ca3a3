"""Applying a token bitmask to logits with torch (imported only when used)."""

from __future__ import annotations

import numpy as np


def unpack_bitmask(bitmask, n_vocab: int):
    """A bool tensor ``(batch, n_vocab)`` from int32 words (bit set = allowed)."""
    import torch

    words = torch.as_tensor(np.ascontiguousarray(bitmask)).to(torch.int32)
    shifts = torch.arange(32, dtype=torch.int32, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(words.shape[0], -1)[:, :n_vocab].bool()


def apply_bitmask(logits, bitmask) -> None:
    """Set disallowed logits to -inf in place. ``logits``: (batch, V) or (V,) tensor."""
    squeeze = logits.dim() == 1
    view = logits.unsqueeze(0) if squeeze else logits
    bm = np.asarray(bitmask)
    if bm.ndim == 1:
        bm = bm[None, :]
    allowed = unpack_bitmask(bm, view.shape[-1]).to(view.device)
    view.masked_fill_(~allowed, float("-inf"))
