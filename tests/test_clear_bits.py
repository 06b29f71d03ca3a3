"""``bitmask.clear_bits``: its loop for a few ids and its ``ufunc.at`` path agree."""

from __future__ import annotations

import numpy as np

from sgl.constrain.bitmask import clear_bits, pack_ids, word_ids


def test_clear_bits_few_and_many_ids_equal_the_reference():
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 5, 16, 17, 40, 300):
        words = rng.integers(0, 2**32, size=4008, dtype=np.uint32)
        ids = rng.integers(0, 4008 * 32, size=n).astype(np.int64)
        if n > 3:
            ids[1] = ids[0]  # a repeated id
            ids[2] = ids[0] ^ 1  # another bit of the same word
        want = words.copy()
        want[ids >> 5] &= ~pack_ids(ids, 4008)[ids >> 5]  # all bits of each touched word at once
        clear_bits(words, ids)
        assert words.dtype == np.uint32
        assert np.array_equal(words, want), n
        assert not np.isin(ids, word_ids(words)).any()
    words = rng.integers(0, 2**32, size=8, dtype=np.uint32)
    before = words.copy()
    clear_bits(words, None)
    assert np.array_equal(words, before)
