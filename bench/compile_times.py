"""Compile time per schema of the MaskBench sample, in one process, with a profile on demand.

Every schema of the seeded sample (the same as ``maskbench.py --limit N``) is compiled
in bench order with the Llama-3 vocabulary, the content cache cleared first, timed with
the process's CPU clock; no masks are computed in between, so A/B runs (``PYTHONPATH``
at two trees) differ only by the compile. ``--profile KEY...`` compiles the schemas whose
name contains a KEY under cProfile, in this thread (the compile's own thread is where
the time goes), at their place in the sequence, so cold caches stay cold.

    PYTHONPATH=$PWD/src python bench/compile_times.py --limit 5 [--top 25] [--profile o48661]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import engines  # noqa: E402
import maskbench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=5, help="schemas per subset (seeded sample; 0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=20, help="slowest schemas listed")
    ap.add_argument("--profile", nargs="*", default=[], help="name parts of schemas to profile")
    ap.add_argument("--sort", default="cumulative", help="pstats order for --profile")
    ap.add_argument("--lines", type=int, default=40, help="pstats lines per profile")
    ap.add_argument("--out", help="write [ms, schema, error] rows as JSON here")
    a = ap.parse_args()
    cases = maskbench.list_cases(maskbench.shared_data_dir() / "maskbench" / "dev", None, a.limit or None, a.seed)
    eng = engines.ENGINES["sgl"](engines.default_tokenizer_path(), maskbench.DEFAULT_EOS)
    from sgl.constrain import api
    from sgl.constrain.compiled import CompiledGrammar
    from sgl.constrain.json_schema import json_schema_grammar

    sys.setrecursionlimit(20_000)  # profiled compiles run here, not on the deep-stack thread
    rows = []
    for c in cases:
        with open(c["path"], encoding="utf-8") as f:
            case = json.load(f)
        key = f"{c['subset']}/{os.path.basename(case.get('source_file', c['path']))}"
        schema = maskbench.load_schema(c["path"], case)
        api.clear_cache()
        prof = cProfile.Profile() if any(p in key for p in a.profile) else None
        err = ""
        t = time.process_time_ns()
        try:
            if prof is None:
                eng.compile(schema)
            else:
                prof.enable()
                try:
                    # as compile_json_schema does (its track_keys grammar), in this thread
                    CompiledGrammar(json_schema_grammar(api._load_schema(schema), track_keys=True), eng.vocab)
                finally:
                    prof.disable()
        except Exception as e:  # noqa: BLE001 - a refusal is reported, not fatal
            err = f"{type(e).__name__}: {e}"[:100]
        ms = (time.process_time_ns() - t) / 1e6
        rows.append((ms, key, err))
        if prof is not None:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats(a.sort).print_stats(a.lines)
            print(f"==== {key} {ms:.1f} ms (profiled)\n{out.getvalue()}")
    ms = sorted(r[0] for r in rows if not r[2])
    pick = lambda q: ms[min(len(ms) - 1, int(q * (len(ms) - 1) + 0.5))]  # noqa: E731
    print(f"{len(ms)} compiled, {len(rows) - len(ms)} refused: p50 {pick(0.5):.2f} p90 {pick(0.9):.1f} "
          f"p99 {pick(0.99):.0f} mean {sum(ms) / len(ms):.1f} ms")
    for r in sorted(rows, reverse=True)[: a.top]:
        print(f"{r[0]:9.2f}  {r[1]}  {r[2]}")
    if a.out:
        Path(a.out).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
