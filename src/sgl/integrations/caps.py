"""Masks as float "caps": applying a cached mask to CPU logits with one ``np.minimum``.

Unpacking a mask's bits and writing -inf through a boolean index costs about as much as
the rest of a decoding step's constraint work (49k logits: unpack, convert, invert,
scatter). A mask's words are shared by every matcher in that state (the grammar keeps
one array per distinct mask), so the processor keeps, per recently used mask, a float
row that is +inf where a token is allowed and -inf where not: ``min(logit, cap)`` is the
logit or -inf, i.e. the masked logit, in one vectorised pass with no temporaries.
Rows are kept by the identity of the words array (which the cache holds, so the identity
stays valid), least recently used first out, bounded in bytes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from sgl.constrain.bitmask import unpack_bitmask

CAP_BYTES = 32 << 20  # all kept caps together (~170 rows of a 49k vocabulary in float32)

_caps: OrderedDict[tuple[int, int, str], tuple[np.ndarray, np.ndarray]] = OrderedDict()
_bytes = 0
_lock = threading.Lock()


def cap_for(words: np.ndarray, width: int, dtype: np.dtype) -> np.ndarray:
    """The cap row of mask ``words`` for ``width`` logits of ``dtype`` (tokens past the
    mask's end are not allowed)."""
    global _bytes
    key = (id(words), width, np.dtype(dtype).str)
    with _lock:
        hit = _caps.get(key)
        if hit is not None and hit[0] is words:
            _caps.move_to_end(key)
            return hit[1]
    cap = np.where(unpack_bitmask(words, width), np.inf, -np.inf).astype(dtype)
    cap.flags.writeable = False
    with _lock:
        old = _caps.pop(key, None)
        if old is not None:
            _bytes -= old[1].nbytes
        _caps[key] = (words, cap)
        _bytes += cap.nbytes
        while _bytes > CAP_BYTES and len(_caps) > 1:
            _, (_, gone) = _caps.popitem(last=False)
            _bytes -= gone.nbytes
    return cap


def apply_caps(logits: np.ndarray, rows: list[np.ndarray | None]) -> None:
    """Mask row ``i`` of ``logits`` (batch, width) in place to ``rows[i]``'s allowed
    tokens (mask words); a None row is left as it is."""
    width = logits.shape[-1]
    for i, words in enumerate(rows):
        if words is not None:
            np.minimum(logits[i], cap_for(words, width, logits.dtype), out=logits[i])
