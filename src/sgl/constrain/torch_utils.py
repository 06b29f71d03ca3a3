"""Applying a token bitmask to logits with torch (imported only when used)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .bitmask import mask_logits_row

if TYPE_CHECKING:
    import torch


def apply_bitmask(logits: torch.Tensor, bitmask: np.ndarray | torch.Tensor) -> None:
    """Set disallowed logits to -inf in place. ``logits``: (batch, V) or (V,) tensor."""
    import torch

    squeeze = logits.dim() == 1
    view = logits.unsqueeze(0) if squeeze else logits
    if isinstance(bitmask, torch.Tensor) and bitmask.device.type != "cpu":
        _apply_on_device(view, bitmask)
        return
    bm = bitmask.numpy() if isinstance(bitmask, torch.Tensor) else np.asarray(bitmask)
    if bm.ndim == 1:
        bm = bm[None, :]
    numpy_ok = view.dtype in (torch.float32, torch.float64, torch.float16)
    if numpy_ok and view.device.type == "cpu" and view.is_contiguous() and not view.requires_grad:
        # numpy, single-threaded: torch's parallel masked_fill_ stalls badly on a busy CPU;
        # one C pass per row over the words (logits wider than the mask: not allowed)
        arr = view.numpy()
        if bm.shape[0] != arr.shape[0]:
            raise ValueError(f"a bitmask of {bm.shape[0]} rows for {arr.shape[0]} rows of logits")
        for i in range(arr.shape[0]):
            mask_logits_row(arr[i], bm[i])
        return
    _apply_on_device(view, torch.from_numpy(np.ascontiguousarray(bm, dtype=np.int32)))


def _apply_on_device(view: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Unpack and apply a bitmask that lives on the logits' device (no host round trip)."""
    import torch

    words = bitmask if bitmask.dim() == 2 else bitmask.unsqueeze(0)
    words = words.to(device=view.device, dtype=torch.int32)
    shifts = torch.arange(32, device=view.device, dtype=torch.int32)
    allowed = ((words.unsqueeze(-1) >> shifts) & 1).flatten(-2)[:, : view.shape[-1]].bool()
    if allowed.shape[-1] < view.shape[-1]:  # logits wider than the mask: the rest is disallowed
        pad = torch.zeros(allowed.shape[0], view.shape[-1] - allowed.shape[-1], dtype=torch.bool, device=view.device)
        allowed = torch.cat([allowed, pad], dim=-1)
    view.masked_fill_(~allowed, float("-inf"))
