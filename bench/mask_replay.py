"""The glue of a mask miss: walk MaskBench once, then recompute the same masks with every
walk, lexer and scan cached.

The first pass is an in-process MaskBench walk (``fill_bitmask`` per step, thread CPU);
then, each round, the columns' ``mask_cache`` is cleared and every recorded step is filled
again (and a sha256 of every first-pass mask, in order, is printed: two trees that
give the same one made the same masks). The misses of a round cost only what a miss does around its walks (parts OR-ed,
C boundary runs over cached sub-walks, interning, the gc policy, the row copy), the
steps whose mask another step of the round already made are hits. Masks are checked
against the first pass.

    SGL_SHARED_DATA=... PYTHONPATH=$PWD/src python bench/mask_replay.py --limit 5 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import maskbench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import engines
    import numpy as np
    from tokenizers import Tokenizer

    data = maskbench.shared_data_dir() / "maskbench" / "dev"
    cases = maskbench.list_cases(data, None, args.limit, args.seed)
    tok_path = engines.default_tokenizer_path()
    eng = engines.ENGINES["sgl"](tok_path, maskbench.DEFAULT_EOS)
    tok = Tokenizer.from_file(tok_path)
    steps, first = [], []  # (matcher at the step, its column, lexer state)
    for _case, compiled, ids in maskbench.compiled_instances(eng, tok, cases):
        m = eng.start(compiled)
        for pos in range(len(ids) + 1):
            if m.is_terminated():
                break
            col, s = m.column, m.copy(history=False)
            t = time.thread_time_ns()
            try:
                eng.fill(m)
            except Exception:  # noqa: BLE001
                break
            first.append(time.thread_time_ns() - t)
            steps.append((s, col, eng.mask[0].copy()))
            if pos == len(ids) or not maskbench._bit(eng.mask, ids[pos]) or not eng.advance(m, ids[pos]):
                break
    f = np.array(first) / 1000
    import hashlib

    digest = hashlib.sha256()
    for _m, _col, ref in steps:
        digest.update(ref.tobytes())
    print(f"masks sha256 {digest.hexdigest()[:16]}")
    print(f"first pass: {len(f)} masks, mean {f.mean():.2f} p50 {np.percentile(f, 50):.2f} "
          f"p90 {np.percentile(f, 90):.2f} p99 {np.percentile(f, 99):.1f} µs")
    cols = {id(c): c for _, c, _ in steps}
    out = eng.mask
    for rnd in range(args.rounds):
        for c in cols.values():
            c.mask_cache.clear()
        miss = hit = n_miss = n_hit = bad = 0
        for m, _col, ref in steps:
            was = m.mask_is_cached()
            t = time.thread_time_ns()
            m.fill_bitmask(out, 0)
            d = time.thread_time_ns() - t
            bad += not np.array_equal(out[0], ref)
            if was:
                hit, n_hit = hit + d, n_hit + 1
            else:
                miss, n_miss = miss + d, n_miss + 1
        print(f"round {rnd}: {n_miss} misses {miss / max(n_miss, 1) / 1000:.2f} µs each, "
              f"{n_hit} hits {hit / max(n_hit, 1) / 1000:.2f} µs each, {bad} masks differ")


if __name__ == "__main__":
    main()
