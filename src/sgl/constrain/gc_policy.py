"""Keeping CPython's cyclic garbage collector out of compiles' and masks' way.

What a compile leaves (grammar IR, regex trees kept as cache keys, parser tables) and
what masks leave (chart columns, walk results, lexers for new lexeme sets) live as long
as their caches, but every full collection walks all of it again: pauses of tens to
hundreds of ms, taken by whichever call happened to allocate then, often a mask (the
largest MaskBench masks were such pauses: 65 ms inside one of detekt's masks, 2.6 ms
with the collector off).

``gc.freeze()`` moves every object alive now out of the collector's scans; objects are
still freed by reference counting, only *cycles* that become garbage after being frozen
wait for the next full collection. So:

- after a compile, and after a mask miss (the calls that allocate), freeze what it
  left; when what was frozen since the last full collection outgrows twice the heap that
  collection left (and at least ``FROZEN_GROWTH_FLOOR`` objects), collect in full there;
  a compile does at half that (``COMPILE_SHARE``), so where compiles come the pause
  lands on one of them, not inside a mask.
  The memory frozen garbage can hold is then bounded (twice the live heap), and full
  collections are as rare as the heap tripling: CPython's own policy collects in full at
  25% growth, so this pauses less often, not longer. (Compiles used to collect in full
  every 64 compiles: 35-220 ms each, landing on whichever schema came 64th, while a
  compile leaves ~2k objects, a few of them cyclic garbage.)
  Collecting the young generations before each freeze (so that garbage already dead is
  not frozen) was measured: +7% mean and +11% p90 mask time on MaskBench.

``SGL_GC_FREEZE=0`` (or a disabled collector) leaves the collector alone. The variable is
read at import; a process that changes it later calls ``read_environment()`` (an
``os.environ`` lookup on every mask miss was ~0.6 µs, ~1% of mask time).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

FROZEN_GROWTH_FLOOR = 500_000  # objects frozen before a full collection, at least
COMPILE_SHARE = 0.5  # compiles collect in full at this share of that bound

_lock = threading.Lock()
frozen_since_full = 0  # objects frozen since the last full collection
heap_after_full = 0  # objects alive (frozen) right after the last full collection


def _env_on() -> bool:
    return os.environ.get("SGL_GC_FREEZE", "1") != "0"


_switched_on = _env_on()  # SGL_GC_FREEZE as read at import or by read_environment()


def read_environment() -> None:
    """Read ``SGL_GC_FREEZE`` again (it is read at import; tests switch it)."""
    global _switched_on
    _switched_on = _env_on()


_pauses = 0  # compiles running with the collector paused (see compiling)
_paused_enabled = False  # was the collector enabled when the first of them paused it?


@contextmanager
def compiling() -> Iterator[None]:
    """No automatic collections while a compile runs (``api.run_deep`` wraps each).

    A compile allocates tens of thousands of objects that live on (its grammar, DFAs,
    cache entries) and makes almost no cyclic garbage, so the young collections it
    triggered were wasted scans; and after one, ``after_compile`` had to list every
    young object to count them (``gc.get_objects``: ~1-9 ms on a p90 compile, as
    much as the rest of its lexer setup). Paused, the count stays the O(1) generation-0
    counter. What the compile leaves is frozen at its end as before, and cyclic garbage
    it made waits for the next full collection like frozen garbage does (bounded by
    the same growth rule). Paused for the whole process while any compile runs (the
    collector is process-wide), resumed when the last one ends, and only if it was
    enabled when the first began; ``SGL_GC_FREEZE=0`` leaves it alone.
    """
    global _pauses, _paused_enabled
    if not _switched_on:
        yield
        return
    with _lock:
        if _pauses == 0:
            _paused_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    if _collected[0]:
        # a collection ran since the last freeze: freeze what came before the compile
        # (few objects, listed) so that the compile's own are counted in O(1) at its end
        _freeze_young(COMPILE_SHARE)
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0:
                if _paused_enabled:
                    gc.enable()
                _paused_enabled = False


def after_compile() -> None:
    """After a compile: freeze the survivors (what it cached), collecting in full first
    at half the masks' bound, so that in a process that compiles the pause lands on a
    compile (with the bound shared, a 274 ms collection landed inside a MaskBench mask)."""
    _freeze_young(COMPILE_SHARE)


_collected = [True]  # has the collector run since the last freeze (then count exactly)?


def _on_collection(phase: str, info: dict) -> None:
    if phase == "stop":
        _collected[0] = True


gc.callbacks.append(_on_collection)


def collected_since_freeze() -> bool:
    """Whether the collector ran since the last freeze (``young_objects`` then lists)."""
    return _collected[0]


def freeze() -> None:
    """``gc.freeze()``, then count young objects by the collector's own count (the state
    a mask miss leaves), until the next collection."""
    with _lock:
        gc.freeze()
        _collected[0] = False


def young_objects() -> int:
    """Tracked objects made since the last freeze and still alive, net.

    ``gc.freeze()`` zeroes the collector's generation-0 count, which then counts tracked
    allocations minus deallocations: with no collection since (the usual case after one
    mask miss), that is the growth of the heap since the freeze (frozen objects that die
    count against it, as they should), read in O(1). After a collection (the count starts
    over and survivors move up), the young generations are counted one by one: listing
    them cost ~5 us per miss, a tenth of a typical miss's Python time."""
    if _collected[0]:
        return sum(len(gc.get_objects(generation=g)) for g in range(3))
    return gc.get_count()[0]


def after_mask_miss() -> None:
    """After a mask that was computed (not read from a cache): freeze what it left."""
    _freeze_young(1.0)


def _freeze_young(share: float) -> None:
    """Freeze the objects not yet frozen, or collect in full when what was frozen since
    the last full collection outgrows its bound.

    The objects not yet frozen are exactly those made since the last freeze that are
    still alive (few: one miss's columns and walk results, one compile's grammar), so
    counting them is cheap.
    """
    global frozen_since_full, heap_after_full
    if not (_switched_on and (gc.isenabled() or _paused_enabled)):
        return
    with _lock:
        young = young_objects()
        _collected[0] = False  # (a collection from here on sets it again)
        frozen_since_full += young
        if frozen_since_full > share * max(FROZEN_GROWTH_FLOOR, 2 * heap_after_full):
            gc.unfreeze()  # a full collection
            gc.collect()
            gc.freeze()
            frozen_since_full = 0
            heap_after_full = gc.get_freeze_count()
        else:
            gc.freeze()
