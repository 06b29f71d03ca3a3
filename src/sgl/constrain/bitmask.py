"""Token bitmasks: allocate them and fill them from matchers, one row or a whole batch.

Layout (the one llguidance and XGrammar use): int32 words of shape
``(batch, (n_vocab + 31) // 32)``; bit ``i % 32`` of word ``i // 32`` set = token ``i``
allowed. The destination may be a numpy array or a torch tensor (CPU, or CUDA through a
pinned CPU staging buffer and one asynchronous copy per batch). torch is never imported
here: a tensor is recognised by its type's module.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .native import extension, native_enabled


def allocate_bitmask(batch: int, n_vocab: int) -> np.ndarray:
    """An int32 bitmask of shape ``(batch, (n_vocab + 31) // 32)``; bit set = allowed."""
    return np.zeros((batch, (n_vocab + 31) // 32), dtype=np.int32)


def pack_bools(allowed: np.ndarray) -> np.ndarray:
    """Bools (``[..., V]``) -> uint32 words (``[..., (V + 31) // 32]``) in the layout above."""
    allowed = np.asarray(allowed, dtype=bool)
    pad = (-allowed.shape[-1]) % 32
    if pad:
        allowed = np.concatenate([allowed, np.zeros(allowed.shape[:-1] + (pad,), dtype=bool)], axis=-1)
    return np.packbits(allowed, axis=-1, bitorder="little").view("<u4").astype(np.uint32)


def unpack_bitmask(words: Any, n_vocab: int) -> np.ndarray:
    """Bitmask words (numpy or CPU torch, ``[..., W]``) -> bools ``[..., n_vocab]``;
    tokens past the mask's end are not allowed."""
    bits = np.unpackbits(_words_as_bytes(words), axis=-1, bitorder="little")
    out = bits[..., :n_vocab].astype(bool)
    if out.shape[-1] < n_vocab:
        out = np.concatenate([out, np.zeros(out.shape[:-1] + (n_vocab - out.shape[-1],), dtype=bool)], axis=-1)
    return out


def count_allowed(words: Any) -> int:
    """How many tokens a bitmask (any shape) allows."""
    return int(np.unpackbits(_words_as_bytes(words)).sum())


def _words_as_bytes(words: Any) -> np.ndarray:
    arr = words.numpy() if is_torch_tensor(words) else np.asarray(words)
    return np.ascontiguousarray(arr, dtype="<i4").view(np.uint8)


def pack_ids(ids: np.ndarray, n_words: int) -> np.ndarray:
    """Token ``ids`` (int64) as ``n_words`` uint32 bitmask words."""
    if ids.size < 2048:
        words = np.zeros(n_words, dtype=np.uint32)
        np.bitwise_or.at(words, ids >> 5, np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))
        return words
    allowed = np.zeros(n_words * 32, dtype=bool)
    allowed[ids] = True
    return np.packbits(allowed, bitorder="little").view(np.uint32)


def word_ids(words) -> np.ndarray:
    """The token ids set in ``words`` (dense uint32 words, or compact (indices, values)),
    ascending; only the nonzero words are unpacked."""
    if type(words) is tuple:
        idx, vals = words
    else:
        idx = np.flatnonzero(words)
        vals = words[idx]
    bits = np.unpackbits(np.ascontiguousarray(vals, dtype="<u4").view(np.uint8), bitorder="little")
    row, col = np.nonzero(bits.reshape(-1, 32))
    return idx.astype(np.int64)[row] * 32 + col


def clear_bits(words: np.ndarray, ids: np.ndarray | None) -> None:
    """Clear the bits of token ``ids`` (if any) in ``words``."""
    if ids is None:
        return
    if ids.size <= 16:  # a few (the used keys' tokens at a key: ~2): no ufunc.at set-up (~8 µs)
        for t in ids.tolist():
            words[t >> 5] &= 0xFFFFFFFF ^ (1 << (t & 31))
        return
    np.bitwise_and.at(words, ids >> 5, ~np.left_shift(np.uint32(1), (ids & 31).astype(np.uint32)))


_MASKABLE = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def mask_logits_row(row: np.ndarray, words: np.ndarray) -> None:
    """Set ``row``'s logits (1-D, contiguous float16/32/64) to -inf in place where
    ``words`` (uint32 or int32 bitmask words) has the token's bit clear; tokens past the
    mask's end are not allowed. The others are left as they are (NaN included), as
    `apply_bitmask` does.

    With the C extension it is one pass over the words that writes only the masked
    logits (no unpacked bools, no temporaries); the numpy twin gives the same logits."""
    if row.ndim != 1 or row.dtype not in _MASKABLE or not row.flags.c_contiguous or not row.flags.writeable:
        raise ValueError(f"mask_logits_row: a writable contiguous 1-D float16/32/64 row, got "
                         f"{row.dtype} {row.shape}")
    words = np.ascontiguousarray(words)
    if words.dtype.itemsize != 4 or words.ndim != 1:
        raise ValueError(f"mask_logits_row: 1-D 32-bit words, got {words.dtype} {words.shape}")
    if native_enabled() and hasattr(extension, "mask_logits"):
        extension.mask_logits(row, words, row.dtype.itemsize)
        return
    np.copyto(row, -np.inf, where=~unpack_bitmask(words, row.shape[0]))


def is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


_INT32 = np.dtype(np.int32)


def write_row(out: Any, row: int, words: np.ndarray) -> None:
    """Write uint32 ``words`` into ``out[row]`` (numpy or CPU torch), zero past their end."""
    if type(out) is np.ndarray and out.ndim == 2 and out.shape[1] == words.shape[0]:
        # the usual case (a mask per step, ~100k a MaskBench run): one copy, without the
        # general path's slices (~1 us of a cached mask's ~2 us)
        out[row] = words.view(_INT32)
        return
    dest = out.numpy() if is_torch_tensor(out) else out
    if dest.ndim == 1:
        if row != 0:
            raise IndexError(f"row {row} of a one-row bitmask")
        dest = dest[None, :]
    n = min(dest.shape[1], words.shape[0])
    dest[row, :n] = words[:n].view(np.int32)
    dest[row, n:] = 0


class _Staging:
    """Pinned CPU buffers for CUDA bitmasks, one per (shape, device), reused across steps.

    Before a buffer is written again, the event recorded after its last copy is awaited,
    so a copy still in flight never reads half-written words.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def get(self, like: Any):
        """The buffer for ``like``, holding a copy of it (rows not written stay as they were)."""
        import torch

        key = (tuple(like.shape), str(like.device))
        with self._lock:
            entry = self._buffers.get(key)
            if entry is None:
                buf = torch.zeros(like.shape, dtype=torch.int32, pin_memory=True)
                entry = self._buffers[key] = (buf, None)
        buf, event = entry
        if event is not None:
            event.synchronize()
        buf.copy_(like)
        return buf

    def copy_to(self, dest: Any, buf: Any) -> None:
        import torch

        dest.copy_(buf, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        with self._lock:
            self._buffers[(tuple(dest.shape), str(dest.device))] = (buf, event)


_staging = _Staging()


def fill_bitmask(matcher: Any, out: Any, row: int = 0) -> None:
    """``matcher``'s mask into ``out[row]``: numpy, CPU tensor, or CUDA tensor (staged)."""
    if type(out) is not np.ndarray and is_torch_tensor(out) and out.device.type != "cpu":
        buf = _staging.get(out)
        write_row(buf, row, matcher.allowed_words())
        _staging.copy_to(out, buf)
        return
    write_row(out, row, matcher.allowed_words())


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sgl-mask")
        return _pool


def fill_next_token_bitmasks(matchers: list, bitmask: Any, *, indices: list[int] | None = None,
                             threads: int | None = None) -> None:
    """Fill row ``indices[i]`` (default ``i``) of ``bitmask`` from ``matchers[i]``.

    A ``None`` matcher leaves its row all-allowed (an unconstrained sequence in a mixed
    batch). Rows are computed on a thread pool: the native mask kernel releases the GIL
    while it walks the vocabulary, so cache misses of different grammars overlap.
    A CUDA ``bitmask`` is filled in a pinned CPU buffer and copied once, asynchronously.
    """
    rows = list(range(len(matchers))) if indices is None else list(indices)
    if len(rows) != len(matchers):
        raise ValueError(f"{len(matchers)} matchers but {len(rows)} row indices")
    on_gpu = is_torch_tensor(bitmask) and bitmask.device.type != "cpu"
    host = _staging.get(bitmask) if on_gpu else bitmask
    dest = host.numpy() if is_torch_tensor(host) else host

    def one(i: int) -> None:
        m, r = matchers[i], rows[i]
        if m is None:
            dest[r, :] = -1
        else:
            write_row(dest, r, m.allowed_words())

    n_threads = min(threads or 8, len(matchers))
    if n_threads <= 1:
        for i in range(len(matchers)):
            one(i)
    else:
        list(_executor(n_threads).map(one, range(len(matchers))))
    if on_gpu:
        _staging.copy_to(bitmask, host)
