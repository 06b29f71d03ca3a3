"""Where full-mask time goes, by phase: an in-process MaskBench walk with timers.

Every ``fill_bitmask`` of every instance is timed (this thread's CPU time), and inside it
the time spent in trie walks, Earley scans and lexer lookups (the rest is Python
orchestration). Prints a table by mask size and the slowest masks with their schema.

    PYTHONPATH=$PWD/src python bench/mask_phases.py --limit 3 [--subset Github_hard]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import maskbench  # noqa: E402

PHASES = ("walk", "scan", "lexer", "gc")
_acc = dict.fromkeys(PHASES, 0)
_depth = dict.fromkeys(PHASES, 0)
_gc_start = [0]
_gc_young = [0]  # collections of generation 0 or 1 (gen 2: full), counted


def _gc_timer(phase: str, info: dict) -> None:
    """A gc callback: the collector's time adds to ``_acc["gc"]`` (inside other phases too)."""
    if phase == "start":
        _gc_start[0] = time.thread_time_ns()
    else:
        _acc["gc"] += time.thread_time_ns() - _gc_start[0]
        _gc_young[0] += info["generation"] < 2


def _timed(phase: str, fn):
    """Wrap ``fn`` so its (outermost) CPU time adds to ``_acc[phase]``."""
    def wrapper(*a, **kw):
        if _depth[phase]:
            return fn(*a, **kw)
        _depth[phase] += 1
        t = time.thread_time_ns()
        try:
            return fn(*a, **kw)
        finally:
            _acc[phase] += time.thread_time_ns() - t
            _depth[phase] -= 1
    return wrapper


def instrument() -> None:
    import gc

    from sgl.constrain import earley, mask

    gc.callbacks.append(_gc_timer)
    mc = mask.MaskComputer
    mc._native_walk = _timed("walk", mc._native_walk)
    mc._numpy_walk_vocabulary = _timed("walk", mc._numpy_walk_vocabulary)
    mc.lexer_for = _timed("lexer", mc.lexer_for)
    for cls in {earley.EarleyParser, *earley.EarleyParser.__subclasses__()}:
        if "scan" in cls.__dict__:
            cls.scan = _timed("scan", cls.scan)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--subset", nargs="+", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--no-phases", action="store_true", help="time masks only")
    ap.add_argument("--dump", type=Path, default=None, help="write per-mask records as JSON")
    args = ap.parse_args()
    import engines
    from tokenizers import Tokenizer

    data = maskbench.shared_data_dir() / "maskbench" / "dev"
    cases = maskbench.list_cases(data, args.subset, args.limit, args.seed)
    tok_path = engines.default_tokenizer_path()
    eng = engines.ENGINES["sgl"](tok_path, maskbench.DEFAULT_EOS)
    if not args.no_phases:
        instrument()
    tok = Tokenizer.from_file(tok_path)
    recs = []  # (total ns, walk, scan, lexer, gc, schema key, position, minor page faults)
    for case_ref, compiled, ids in maskbench.compiled_instances(eng, tok, cases):
        key = f"{case_ref['subset']}/{os.path.basename(case_ref['path'])}"
        state = eng.start(compiled)
        for pos in range(len(ids) + 1):
            before = dict(_acc)
            faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            t = time.thread_time_ns()
            try:
                eng.fill(state)
            except Exception:  # noqa: BLE001
                break
            total = time.thread_time_ns() - t
            faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - faults
            recs.append((total, *(_acc[p] - before[p] for p in PHASES), key, pos, faults))
            if pos == len(ids) or not maskbench._bit(eng.mask, ids[pos]) or not eng.advance(state, ids[pos]):
                break
    report(recs, args.top)
    if args.dump:
        args.dump.write_text(json.dumps(recs))


def report(recs: list, top: int) -> None:
    import numpy as np

    t = np.array([r[0] for r in recs], dtype=np.float64) / 1000
    print(f"masks {len(t)}  mean {t.mean():.0f} us  p50 {np.percentile(t, 50):.0f}  p90 {np.percentile(t, 90):.0f}"
          f"  p99 {np.percentile(t, 99):.0f}  max {t.max():.0f}")
    bands = [(0, 20), (20, 100), (100, 1000), (1000, 10000), (10000, 1e12)]
    print("| band us | count | CPU ms | walk | scan | lexer | gc (also inside the others) | rest | page faults |")
    n = len(PHASES)
    for lo, hi in bands:
        sel = [r for r in recs if lo <= r[0] / 1000 < hi]
        tot = sum(r[0] for r in sel) / 1e6
        ph = [sum(r[1 + i] for r in sel) / 1e6 for i in range(n)]
        print(f"| {lo}-{hi:g} | {len(sel)} | {tot:.0f} | " + " | ".join(f"{x:.0f}" for x in ph)
              + f" | {tot - sum(ph[:3]):.0f} | {sum(r[n + 3] for r in sel)} |")
    print(f"young collections (gen 0/1) during the run: {_gc_young[0]}")
    by_key = defaultdict(float)
    for r in recs:
        by_key[r[n + 1]] += r[0] / 1e6
    print("slowest schemas (ms):", sorted(by_key.items(), key=lambda kv: -kv[1])[:top])
    for r in sorted(recs, key=lambda r: -r[0])[:top]:
        print(f"  {r[0] / 1000:8.0f} us walk {r[1] / 1000:.0f} scan {r[2] / 1000:.0f} lexer {r[3] / 1000:.0f}"
              f" gc {r[4] / 1000:.0f}  {r[5]} @{r[6]}")


if __name__ == "__main__":
    main()
