"""Where the time of the slowest masks (and of the mean) goes, by exclusive phase.

Runs ``bench/mask_phases.py`` (an in-process MaskBench walk) with exclusive timers (a
stack: time inside a nested timed call counts to the inner one only) around the mask
path's pieces, records them per mask, and prints the breakdown for all masks and for
the slowest 10% / 2% / 1%. Thread CPU time; the timers add ~1 µs per timed call.

    SGL_SHARED_DATA=... PYTHONPATH=$PWD/src python bench/mask_tail.py --limit 20 --no-phases
"""

from __future__ import annotations

import runpy
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
_stack: list[str] = ["rest"]
_last = [0]
_cur: Counter = Counter()  # this mask's ns by phase
_masks: list[tuple[int, Counter]] = []
_calls: Counter = Counter()  # timed calls by phase, all masks


def _switch(to: str | None) -> None:
    now = time.thread_time_ns()
    _cur[_stack[-1]] += now - _last[0]
    _last[0] = now
    if to is None:
        _stack.pop()
    else:
        _stack.append(to)
        _calls[to] += 1


def _timed(name, fn):
    def wrapper(*a, **kw):
        _switch(name(a) if callable(name) else name)
        try:
            return fn(*a, **kw)
        finally:
            _switch(None)
    return wrapper


def instrument() -> None:
    import engines

    from sgl.constrain import bitmask, boundary, gc_policy, key_masks, lexer, mask

    mc = mask.MaskComputer

    def walk_kind(a):
        if a[2] is not None:
            return "python sub-walk"
        return "root walk (keys)" if "key parts" in _stack else "root walk"

    mc._native_walk = _timed(walk_kind, mc._native_walk)
    mc._key_parts = _timed("key parts", mc._key_parts)
    if hasattr(mc, "_key_body_walk"):  # "other keys" walks from the shared body walk (h9-keyshare)
        body_walk = mc._key_body_walk

        def counted(*a, **kw):
            res = body_walk(*a, **kw)
            _calls["key body walk fell back (calls)"] += res is None
            return res
        mc._key_body_walk = _timed("key body walk", counted)
    mc._intern = _timed("intern", mc._intern)
    mc.first_byte_words = _timed("starts_next", mc.first_byte_words)
    mask.alive_keys = _timed("alive_keys", key_masks.alive_keys)
    mask.used_key_tokens = _timed("used_key_tokens", key_masks.used_key_tokens)
    boundary.NativeBoundaries.run = _timed("C boundary run", boundary.NativeBoundaries.run)
    boundary.NativeBoundaries._fill = _timed("boundary fill (Python)", boundary.NativeBoundaries._fill)
    lexer._LexerCache.__missing__ = _timed("new lexer", lexer._LexerCache.__missing__)
    gc_policy.after_mask_miss = _timed("gc policy", gc_policy.after_mask_miss)
    bitmask.write_row = _timed("write_row", bitmask.write_row)
    for cls in {mask.EarleyParser, *mask.EarleyParser.__subclasses__()}:
        if "scan" in cls.__dict__:
            cls.scan = _timed("parser.scan", cls.scan)
    fill = engines.ENGINES["sgl"].fill

    def timed_fill(self, state):
        _cur.clear()
        _last[0] = t0 = time.thread_time_ns()
        try:
            return fill(self, state)
        finally:
            _switch("rest")  # close the running phase
            _stack.pop()
            _masks.append((time.thread_time_ns() - t0, Counter(_cur)))

    engines.ENGINES["sgl"].fill = timed_fill


def report() -> None:
    import numpy as np

    t = np.array([m[0] for m in _masks], dtype=np.float64)
    order = np.argsort(-t)
    phases = sorted({k for _, c in _masks for k in c}, key=lambda k: -sum(c[k] for _, c in _masks))
    print(f"\nmasks {len(t)}, mask CPU {t.sum() / 1e6:.0f} ms (timed here, with the timers' own cost)")
    n = len(t)
    cols = [("all", 0, n), ("top 10%", 0, n // 10), ("top 1%", 0, n // 100),
            ("p85-p95", n * 5 // 100, n * 15 // 100),  # the band around p90 (h11-p90)
            ("p90-p98.5", n * 15 // 1000, n // 10), ("p98.5-p99.5", n * 5 // 1000, n * 15 // 1000)]
    print("| phase | calls | " + " | ".join(f"{c} ({hi - lo:,}) ms" for c, lo, hi in cols) + " |")
    print("|---|--:|" + "--:|" * len(cols))
    sums = []
    for _, lo, hi in cols:
        s = Counter()
        for i in order[lo:hi]:
            s.update(_masks[i][1])
        sums.append(s)
    for p in phases:
        print(f"| {p} | {_calls[p]:,} | " + " | ".join(f"{s[p] / 1e6:.0f} ({100 * s[p] / max(1, sum(s.values())):.0f}%)"
                                      for s in sums) + " |")
    print("| total | | " + " | ".join(f"{sum(s.values()) / 1e6:.0f}" for s in sums) + " |")
    for k in sorted(k for k in _calls if k.endswith("(calls)")):
        print(f"{k}: {_calls[k]:,}")


def main() -> None:
    sys.path.insert(0, str(HERE))
    sys.argv[0] = str(HERE / "mask_phases.py")
    import engines  # noqa: F401  (the engine class patched before mask_phases runs)

    instrument()
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        report()


if __name__ == "__main__":
    main()
