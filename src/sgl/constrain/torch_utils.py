"""Applying a token bitmask to logits with torch (imported only when used)."""

from __future__ import annotations

import numpy as np


def unpack_bitmask(bitmask, n_vocab: int):
    """A bool tensor ``(batch, n_vocab)`` from int32 words (bit set = allowed)."""
    import torch

    # numpy's unpackbits is a single cheap pass; torch shift-and-mask was ~100x slower on CPU
    words = np.ascontiguousarray(bitmask, dtype=np.int32)
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    return torch.from_numpy(bits[:, :n_vocab].astype(bool))


def apply_bitmask(logits, bitmask) -> None:
    """Set disallowed logits to -inf in place. ``logits``: (batch, V) or (V,) tensor."""
    squeeze = logits.dim() == 1
    view = logits.unsqueeze(0) if squeeze else logits
    bm = np.asarray(bitmask)
    if bm.ndim == 1:
        bm = bm[None, :]
    import torch

    numpy_ok = view.dtype in (torch.float32, torch.float64, torch.float16)
    if numpy_ok and view.device.type == "cpu" and view.is_contiguous() and not view.requires_grad:
        # numpy, single-threaded: torch's parallel masked_fill_ stalls badly on a busy CPU
        bits = np.unpackbits(np.ascontiguousarray(bm, dtype=np.int32).view(np.uint8), axis=-1, bitorder="little")
        arr = view.numpy()
        arr[bits[:, : arr.shape[-1]] == 0] = -np.inf
        return
    allowed = unpack_bitmask(bm, view.shape[-1]).to(view.device)
    view.masked_fill_(~allowed, float("-inf"))
