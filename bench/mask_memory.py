"""Where the constraint engine's memory goes: RSS by phase and the size of every cache.

Walks MaskBench in process the way its worker does (``maskbench.walk_instance``: the
compile cache cleared before each compile, one fresh matcher per test instance, the
grammar dropped after its instances), reading VmRSS / VmHWM (/proc/self/status) around
each phase: imports, vocabulary load, token table, then each schema's compile and masks.
At the end it lists the process-wide caches (what outlives a grammar) with their entry
counts and bytes, and with ``--trace`` the top allocation sites (tracemalloc, by line;
slows everything ~3x, so its RSS figures are not the plain run's). ``--repeat N`` walks
the cases N times with fresh compile-cache keys (a server compiling new schemas all
day), printing RSS after each pass: it must level off.

    SGL_SHARED_DATA=... PYTHONPATH=$PWD/src python bench/mask_memory.py --limit 20
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import maskbench  # noqa: E402


def vm() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    rss = hwm = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


def nbytes(obj: Any, seen: dict[int, Any] | None = None) -> int:
    """Bytes held by numpy arrays (and the bytes objects) reachable through tuples,
    lists, dicts and dataclass-like objects (``__dict__``/slots) below ``obj``, counted once each."""
    import numpy as np

    seen = {} if seen is None else seen  # id -> object: kept alive, so no id is reused
    stack, total = [obj], 0
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None or isinstance(o, int | float | str | bool):
            continue
        seen[id(o)] = o
        if isinstance(o, np.ndarray):
            base = o
            while isinstance(base.base, np.ndarray):
                base = base.base
            if id(base) not in seen or base is o:
                seen[id(base)] = base
                total += base.nbytes if isinstance(base, np.ndarray) else o.nbytes
        elif isinstance(o, bytes | bytearray):
            total += len(o)
        elif isinstance(o, dict):
            total += sys.getsizeof(o)
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset):
            total += sys.getsizeof(o)
            stack.extend(o)
        elif hasattr(o, "__dataclass_fields__"):
            stack.extend(getattr(o, f) for f in o.__dataclass_fields__)
    return total


def walk_results(core) -> tuple[int, int]:
    """(entries, bytes) of a lexer core's vocabulary walks, their sub-walks included."""
    n = len(core.walk_cache)
    return n, nbytes(list(core.walk_cache.values()))


def inventory(vocab) -> list[tuple[str, int, float]]:
    """(cache, entries, MB) of the process-wide caches (what outlives a grammar); an array
    reachable from several is counted under the first listed."""
    from sgl.constrain import compiled as compiled_mod
    from sgl.constrain import lexer as lexer_mod

    seen: dict[int, Any] = {}
    out = []
    tokens = compiled_mod.token_table(vocab)
    out.append(("token table arrays", 1, nbytes(vars(tokens), seen)))
    out.append(("  key body walks", len(tokens.key_body_walks), nbytes(tokens.key_body_walks, seen)))
    out.append(("  loop memos", len(tokens.loop_memos), nbytes(tokens.loop_memos, seen)))
    dfas = list(compiled_mod._dfa_cache.values())
    out.append(("lexeme DFA cache (compiled._dfa_cache)", len(dfas), nbytes([(d.table, d.accepting) for d in dfas], seen)))
    cores = lexer_mod.shared_cores()
    out.append(("shared lexer cores: their estimate (lexer.shared_cores_nbytes)", len(cores),
                lexer_mod.shared_cores_nbytes() if hasattr(lexer_mod, "shared_cores_nbytes") else 0))
    walks = [c.walk_cache for c in cores]
    out.append(("  vocabulary walks (core.walk_cache)", sum(map(len, walks)), nbytes(walks, seen)))
    rows = [getattr(c, "_rows", {}) for c in cores]
    n_rows = sum(len(r) for r in rows)
    row_bytes = sum(sys.getsizeof(x) + sum(sys.getsizeof(v) for v in x if not -5 <= v <= 256)
                    for r in rows for x in (r.values() if isinstance(r, dict) else r) if x is not None)
    out.append(("  rows as Python lists (core._rows)", n_rows, row_bytes))
    prod = sum(c.n_states * (256 * 4 + 4 * c._k + 46) for c in cores if hasattr(c, "product") and c._k > 1)
    out.append(("  C product tables (k>1: n_states x ~1 KB)", sum(c.n_states for c in cores if c._k > 1), prod))
    acc = sum(sys.getsizeof(c.accepts) + sys.getsizeof(c.accepting) + sys.getsizeof(c.__dict__.get("_single", {}))
              for c in cores if isinstance(c.accepts, dict))
    out.append(("  accepts/accepting/single dicts", len(cores), acc))
    # the C Dfas hold their tables: those of lexemes the DFA cache has dropped
    cached = {d.__dict__.get("_fresh_key", (None, None))[1] for d in dfas}
    beyond = {k for c in cores for k in c.key} - cached
    natives = [lexer_mod._native_dfas.get(k) for k in beyond]
    out.append(("lexeme tables only the cores keep", len(beyond),
                sum(d.n_states * 1028 for d in natives if d is not None)))
    return [(name, n, b / 2**20) for name, n, b in out]


def count_builds(args: argparse.Namespace) -> dict[str, list]:
    """Count (and time) the builds of shared lexer cores and lexeme DFAs: each one a cache
    miss; applies the bounds given on the command line first."""
    from sgl.constrain import compiled as compiled_mod
    from sgl.constrain import lexer as lexer_mod

    if args.max_cores is not None:
        lexer_mod.MAX_SHARED_CORES = args.max_cores
    if args.cores_mb is not None:
        lexer_mod.MAX_SHARED_CORE_BYTES = args.cores_mb << 20
    if args.dfa_cache_mb is not None:
        compiled_mod.DFA_CACHE_BYTES = args.dfa_cache_mb << 20
    out: dict[str, list] = {"lexer cores": [0, 0.0], "lexeme DFAs built": [0, 0.0], "shipped DFA lookups": [0, 0.0]}

    def counted(mod, name: str, what: str) -> None:
        fn = getattr(mod, name)

        def wrapper(*a, **kw):
            t = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                out[what][0] += 1
                out[what][1] += time.process_time() - t

        setattr(mod, name, wrapper)

    counted(lexer_mod, "make_core", "lexer cores")
    for name in ("to_dfa", "literal_dfa"):
        counted(compiled_mod, name, "lexeme DFAs built")
    counted(compiled_mod, "dfa_for", "shipped DFA lookups")  # one per DFA cache miss
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="walk the cases this many times (fresh cache keys)")
    ap.add_argument("--trace", action="store_true", help="tracemalloc: top allocation sites at the end")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json", help="write the per-schema figures here")
    ap.add_argument("--max-cores", type=int, help="set lexer.MAX_SHARED_CORES (what a smaller bound costs)")
    ap.add_argument("--dfa-cache-mb", type=int, help="set compiled.DFA_CACHE_BYTES")
    ap.add_argument("--cores-mb", type=int, help="set lexer.MAX_SHARED_CORE_BYTES")
    args = ap.parse_args()
    if args.trace:
        tracemalloc.start(8)
    phases: list[tuple[str, float, float]] = [("start", *vm())]
    import engines
    import numpy as np  # noqa: F401
    from tokenizers import Tokenizer

    phases.append(("imports", *vm()))
    tok_path = engines.default_tokenizer_path()
    import sgl.constrain as sc

    vocab = sc.Vocabulary.from_tokenizer(tok_path)
    phases.append(("vocabulary", *vm()))
    from sgl.constrain.compiled import token_table

    token_table(vocab)
    phases.append(("token table", *vm()))
    misses = count_builds(args)
    load = sc.Vocabulary.from_tokenizer
    sc.Vocabulary.from_tokenizer = lambda *a, **kw: vocab  # the engine takes the one loaded above
    try:
        eng = engines.ENGINES["sgl"](tok_path, maskbench.DEFAULT_EOS)
    finally:
        sc.Vocabulary.from_tokenizer = load
    phases.append(("engine + frontend imports", *vm()))
    tok = Tokenizer.from_file(tok_path)
    phases.append(("HF tokenizer (harness)", *vm()))
    data = maskbench.shared_data_dir() / "maskbench" / "dev"
    cases = maskbench.list_cases(data, None, args.limit, args.seed)
    per: list[dict] = []
    compile_mb = mask_mb = 0.0
    for rep in range(args.repeat):
        for ref in cases:
            with open(ref["path"], encoding="utf-8") as f:
                case = json.load(f)
            schema = maskbench.load_schema(ref["path"], case)
            if rep:  # a new schema text each pass: the compile cache cannot hit
                schema = {"allOf": [schema], "$comment": f"pass {rep}"} if isinstance(schema, dict) else schema
            r0, _ = vm()
            try:
                compiled = eng.compile(schema)
            except Exception:  # noqa: BLE001 - refusals
                continue
            r1, _ = vm()
            for test in case.get("tests", []):
                ids = tok.encode(json.dumps(test["data"]), add_special_tokens=False).ids
                maskbench.walk_instance(eng, compiled, ids, True)
            r2, hwm = vm()
            compiled = None
            r3, _ = vm()
            compile_mb += r1 - r0
            mask_mb += r2 - r1
            per.append({"case": ref["path"], "compile_mb": r1 - r0, "masks_mb": r2 - r1, "freed_mb": r2 - r3,
                        "rss_mb": r3, "hwm_mb": hwm})
            if len(per) % 100 == 0:
                print(f"  {len(per)} schemas: RSS {r3:.0f} MB, peak {hwm:.0f} MB", flush=True)
        rss, hwm = vm()
        print(f"pass {rep + 1}: {len(per)} schemas, RSS {rss:.0f} MB, peak {hwm:.0f} MB", flush=True)
    phases.append(("schemas (compiles + masks)", *vm()))
    before = vm()[0]
    t = time.perf_counter()
    gc.unfreeze()  # gc_policy freezes what compiles and masks leave: cycles among it wait
    garbage = gc.collect()
    phases.append((f"gc.unfreeze(); gc.collect() ({time.perf_counter() - t:.2f} s)", *vm()))
    print("\n| phase | RSS MB after | delta MB | peak MB |\n|---|--:|--:|--:|")
    last = phases[0][1]
    for name, rss, hwm in phases:
        print(f"| {name} | {rss:.0f} | {rss - last:+.0f} | {hwm:.0f} |")
        last = rss
    print(f"\nper schema: compile {compile_mb:+.0f} MB in all, masks {mask_mb:+.0f} MB in all; "
          f"a full collection found {garbage:,} objects of cyclic garbage ({before - vm()[0]:.0f} MB of RSS back)")
    big = sorted(per, key=lambda p: -(p["compile_mb"] + p["masks_mb"]))[:8]
    print("largest growth:", ", ".join(f"{Path(p['case']).parent.name}/{Path(p['case']).stem[:24]} "
                                       f"+{p['compile_mb']:.0f}/+{p['masks_mb']:.0f}" for p in big))
    print("cache misses (builds, CPU s): " + ", ".join(f"{k} {n:,} ({t:.2f} s)" for k, (n, t) in misses.items()))
    print("\n| process-wide cache | entries | MB |\n|---|--:|--:|")
    for name, n, mb in inventory(vocab):
        print(f"| {name} | {n:,} | {mb:.1f} |")
    if args.trace:
        snap = tracemalloc.take_snapshot()
        stats = snap.statistics("traceback")
        by_line: dict[str, list[int]] = {}
        for st in stats:  # by the innermost line in this project (numpy's own lines say little)
            frames = [f for f in st.traceback if "/sgl/" in f.filename] or list(st.traceback)
            fr = frames[-1]  # tracemalloc lists the most recent frame last
            got = by_line.setdefault(f"{fr.filename.split('/src/')[-1]}:{fr.lineno}", [0, 0])
            got[0] += st.size
            got[1] += st.count
        top = sorted(by_line.items(), key=lambda kv: -kv[1][0])[: args.top]
        print(f"\ntracemalloc: {sum(s.size for s in stats) / 2**20:.0f} MB traced; top {args.top} lines")
        for where, (size, count) in top:
            print(f"{size / 2**20:8.1f} MB {count:9,} blocks  {where}")
    if args.json:
        Path(args.json).write_text(json.dumps({"phases": phases, "schemas": per}, indent=1))


if __name__ == "__main__":
    main()
