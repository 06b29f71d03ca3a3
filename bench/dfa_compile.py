"""How long ``automata.compiler.to_dfa`` takes on the lexemes real JSON Schemas produce.

Collects the terminals of ``json_schema_grammar(schema)`` over a seeded sample of
JSONSchemaBench schemas (schemas the frontend refuses are skipped), then times
``to_dfa`` on every terminal. Reported:

- per terminal: median / p90 / max over every terminal occurrence;
- per schema, cold: the sum over all of a schema's terminals;
- per schema, warm: the sum over the terminals whose pattern no earlier schema had,
  which is what ``compiled.terminal_dfa``'s cross-schema cache leaves to compile.

Usage::

    python bench/dfa_compile.py                     # 30 schemas per subset (300)
    python bench/dfa_compile.py --profile 25        # plus the top of a cProfile run
    python bench/dfa_compile.py --limit 0 --json out.json
    python bench/dfa_compile.py --save lex.pkl      # freeze the terminal set, then
    python bench/dfa_compile.py --load lex.pkl      # time other code on the same set
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pickle
import pstats
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sgl.constrain.automata.compiler import to_dfa  # noqa: E402
from sgl.constrain.errors import ConstraintError  # noqa: E402
from sgl.constrain.json_schema import json_schema_grammar  # noqa: E402
from sgl.constrain.regex import parse_regex  # noqa: E402
from sgl.constrain.regex_ast import literal  # noqa: E402


@dataclass
class Lexeme:
    schema: str  # file path relative to the benchmark folder
    name: str  # terminal name in the grammar
    key: tuple  # (pattern, is_literal): the cache key compiled.terminal_dfa uses
    node: object  # the regex_ast node to_dfa receives


def shared_data_dir() -> Path:
    env = os.environ.get("SGL_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def sample_schemas(root: Path, limit: int, seed: int) -> list[Path]:
    """``limit`` schemas per subset (0 = all), a seeded sample, in a stable order."""
    if not root.is_dir():
        raise SystemExit(
            f"JSONSchemaBench folder not found: {root} (set --data or SGL_SHARED_DATA)"
        )
    out: list[Path] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(sub.glob("*.json"))
        if limit and len(files) > limit:
            files = sorted(random.Random(f"{seed}:{sub.name}").sample(files, limit))
        out += files
    return out


def collect(files: list[Path], root: Path) -> tuple[list[Lexeme], int]:
    """Every terminal of every schema the frontend accepts; also the count skipped."""
    lexemes: list[Lexeme] = []
    skipped = 0
    for f in files:
        try:
            with open(f, encoding="utf-8") as fh:
                grammar = json_schema_grammar(json.load(fh))
        except Exception:  # noqa: BLE001 - refusals, bad JSON, budgets: not our subject
            skipped += 1
            continue
        rel = str(f.relative_to(root))
        for name, term in grammar.terminals.items():
            pattern = term.pattern
            if isinstance(pattern, str):
                node = literal(pattern) if term.literal else parse_regex(pattern)
            else:
                node = pattern
            lexemes.append(Lexeme(rel, name, (pattern, term.literal), node))
    return lexemes, skipped


def time_all(lexemes: list[Lexeme]) -> tuple[np.ndarray, int]:
    """CPU seconds ``to_dfa`` takes per lexeme (refusals included), and the refusal count.

    CPU time of this process, not wall time, so that other work on a shared
    machine does not show up in the numbers.
    """
    seconds = np.empty(len(lexemes))
    refused = 0
    for i, lx in enumerate(lexemes):
        t0 = time.process_time()
        try:
            to_dfa(lx.node)
        except ConstraintError:  # CompileBudgetExceeded included
            refused += 1
        seconds[i] = time.process_time() - t0
    return seconds, refused


def per_schema(lexemes: list[Lexeme], seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per schema: cold total, and warm total (patterns first seen in that schema only)."""
    cold: dict[str, float] = {}
    warm: dict[str, float] = {}
    seen: set = set()
    for lx, s in zip(lexemes, seconds, strict=True):
        cold[lx.schema] = cold.get(lx.schema, 0.0) + s
        fresh = lx.key not in seen
        seen.add(lx.key)
        warm[lx.schema] = warm.get(lx.schema, 0.0) + (s if fresh else 0.0)
    return np.array(list(cold.values())), np.array(list(warm.values()))


def stats_ms(x: np.ndarray) -> dict:
    return {
        "n": len(x),
        "median": float(np.median(x) * 1e3),
        "p90": float(np.percentile(x, 90) * 1e3),
        "p99": float(np.percentile(x, 99) * 1e3),
        "max": float(x.max() * 1e3),
        "total": float(x.sum() * 1e3),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="jsonschemabench/dev folder")
    ap.add_argument("--limit", type=int, default=30, help="schemas per subset (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, help="print the top N cProfile rows")
    ap.add_argument("--slowest", type=int, default=8, help="list the N slowest terminals")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    ap.add_argument(
        "--save",
        type=Path,
        default=None,
        help="pickle the collected terminals here (to time later code on the same set)",
    )
    ap.add_argument(
        "--load",
        type=Path,
        default=None,
        help="time the terminals pickled by --save instead of collecting anew",
    )
    args = ap.parse_args(argv)

    if args.load:
        with open(args.load, "rb") as f:
            files, skipped, rows = pickle.load(f)
        lexemes = [Lexeme(*row) for row in rows]
    else:
        root = args.data or shared_data_dir() / "jsonschemabench" / "dev"
        files = [str(f) for f in sample_schemas(root, args.limit, args.seed)]
        lexemes, skipped = collect([Path(f) for f in files], root)
    if args.save:
        with open(args.save, "wb") as f:
            rows = [(lx.schema, lx.name, lx.key, lx.node) for lx in lexemes]
            pickle.dump((files, skipped, rows), f)
    # The corpus of ASTs stays alive while we time: keep the garbage collector from
    # walking it on every collection, which would bill its size to each to_dfa call.
    gc.collect()
    gc.freeze()
    print(
        f"{len(files)} schemas ({skipped} skipped), {len(lexemes)} terminals, "
        f"{len({lx.key for lx in lexemes})} distinct patterns"
    )

    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    seconds, refused = time_all(lexemes)
    if profiler:
        profiler.disable()
    cold, warm = per_schema(lexemes, seconds)

    report = {
        "terminal": stats_ms(seconds),
        "schema_cold": stats_ms(cold),
        "schema_warm": stats_ms(warm),
        "refused": refused,
    }
    print(f"{'ms':<16}{'n':>6}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}{'total':>10}")
    for label, key in (
        ("per terminal", "terminal"),
        ("schema (cold)", "schema_cold"),
        ("schema (warm)", "schema_warm"),
    ):
        r = report[key]
        print(
            f"{label:<16}{r['n']:>6}{r['median']:>9.3f}{r['p90']:>9.3f}{r['p99']:>9.3f}"
            f"{r['max']:>9.2f}{r['total']:>10.1f}"
        )
    print(f"refused with a budget error: {refused}")
    for i in np.argsort(-seconds)[: args.slowest]:
        lx = lexemes[i]
        print(f"  {seconds[i] * 1e3:8.2f} ms  {lx.schema}  {lx.name}")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
