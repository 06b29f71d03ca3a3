"""The hostile-input corpus (tests/hostile/corpus.py) on SGL, llguidance and XGrammar.

Each engine runs every case in worker processes with the same limits (a wall-time
limit per case, an address-space limit per process, 50 random allowed tokens
masked and advanced after compiling) and the outcomes are tabulated side by side:

    python bench/hostile.py                      # all engines, all cases
    python bench/hostile.py --engines sgl --filter size/ --json out.json

Outcomes: compiled (and masked), refused (the engine's compile error), crash (any
other exception, or an allowed token the engine would not advance), hang (over the
time limit), memory (MemoryError or killed for memory), dead_end (compiled, then
a mask allowed nothing), n/a (the engine has no API for the input: Lark for
XGrammar is supported, GBNF for llguidance goes through its gbnf_to_lark; the
wrong-type cases of the ``types`` group only make sense for SGL's Python API).
For the peers, ValueError and RuntimeError count as refusals (they have no dedicated
error type; llguidance reports some limits as a matcher error on the first masks or
tokens, counted as refusals too; its GBNF converter's GbnfToLarkError as well); for
SGL only ``ConstraintError`` does. SGL runs with its
compile budget at 8 s (``--sgl-budget-s``), below the 15 s case limit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "hostile")]

import corpus  # noqa: E402
import engines  # noqa: E402
import runner  # noqa: E402
import worker  # noqa: E402

ENGINE_SPECS = {
    "sgl": "worker:SGLAdapter",
    "llguidance": "hostile:LLGuidanceHostile",
    "xgrammar": "hostile:XGrammarHostile",
}
LLAMA3_EOS = 128009  # <|eot_id|>


def _peer_payload(case: corpus.Case, payload):
    if case.group == "types":
        raise worker.NotApplicable("wrong-type inputs for SGL's Python API")
    if case.kind == "json" and not isinstance(payload, str):
        return json.dumps(payload)  # NaN and Infinity as JavaScript spells them, like a client would
    if case.kind == "choices":
        return "|".join(_escape(c) for c in payload)
    return payload


def _escape(text: str) -> str:
    return re.escape(text)


class LLGuidanceHostile(engines.LLGuidanceEngine):
    """llguidance ``LLMatcher``: JSON Schema, Lark, regex; GBNF through ``gbnf_to_lark``."""

    def __init__(self, tokenizer_path: str) -> None:
        from llguidance.gbnf_to_lark import GbnfToLarkError

        super().__init__(tokenizer_path, LLAMA3_EOS)
        self.eos = [LLAMA3_EOS]
        self.refusals = (ValueError, RuntimeError, engines.CompileRefused, GbnfToLarkError)

    def compile_case(self, case: corpus.Case, payload):
        text = _peer_payload(case, payload)
        llg = self._llg
        if case.kind == "json":
            grammar = llg.LLMatcher.grammar_from_json_schema(text)
        elif case.kind in ("regex", "choices"):
            grammar = llg.LLMatcher.grammar_from_regex(text)
        elif case.kind == "lark":
            grammar = llg.LLMatcher.grammar_from_lark(text)
        else:
            from llguidance.gbnf_to_lark import gbnf_to_lark

            grammar = llg.LLMatcher.grammar_from_lark(gbnf_to_lark(text))
        m = llg.LLMatcher(self.tok, grammar, log_level=0)
        if m.is_error():
            raise engines.CompileRefused(m.get_error())
        return m

    def fill(self, state):
        super().fill(state)
        if state.is_error():
            raise RuntimeError(f"matcher error while masking: {state.get_error()}")
        return self.mask[0]

    def advance(self, state, token: int) -> bool:
        # llguidance reports some limits late, as a matcher error on the first tokens:
        # a refusal (counted as such), not a wrong mask
        ok = super().advance(state, token)
        if not ok and state.is_error():
            raise RuntimeError(f"matcher error while advancing: {state.get_error()}")
        return ok


class XGrammarHostile(engines.XGrammarEngine):
    """XGrammar ``GrammarCompiler``: JSON Schema, regex, Lark, GBNF (its EBNF)."""

    refusals = (ValueError, RuntimeError)

    def __init__(self, tokenizer_path: str) -> None:
        super().__init__(tokenizer_path, LLAMA3_EOS)
        self.eos = [LLAMA3_EOS]

    def compile_case(self, case: corpus.Case, payload):
        text = _peer_payload(case, payload)
        c = self.compiler
        if case.kind == "json":
            return c.compile_json_schema(text, any_whitespace=True, strict_mode=False)
        if case.kind in ("regex", "choices"):
            return c.compile_regex(text)
        if case.kind == "lark":
            return c.compile_lark(text)
        return c.compile_grammar(text)

    def fill(self, state):
        super().fill(state)
        return self.mask[0]


def tabulate(results: dict[str, dict[str, dict]]) -> str:
    """Markdown: outcome counts per engine, then the groups with their non-clean counts."""
    names = list(results)
    outcomes = runner.OUTCOMES
    lines = ["| outcome | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    counts = {e: Counter(r["outcome"] for r in res.values()) for e, res in results.items()}
    for o in outcomes:
        if any(counts[e][o] for e in names):
            lines.append(f"| {o} | " + " | ".join(str(counts[e][o]) for e in names) + " |")
    lines.append("| **cases** | " + " | ".join(str(len(results[e])) for e in names) + " |")
    by_name = corpus.by_name()
    groups = sorted({by_name[n].group for res in results.values() for n in res})
    lines += ["", "| group (compiled / refused / crash+hang+memory+dead_end) | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    for g in groups:
        cells = []
        for e in names:
            c = Counter(r["outcome"] for n, r in results[e].items() if by_name[n].group == g)
            bad = c["crash"] + c["hang"] + c["memory"] + c["dead_end"]
            cells.append(f"{c['compiled']} / {c['refused']} / {bad}" + (f" ({c['n/a']} n/a)" if c["n/a"] else ""))
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="sgl,llguidance,xgrammar")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    ap.add_argument("--case-s", type=float, default=15.0, help="wall-time limit per case")
    ap.add_argument("--memory-gb", type=float, default=4.0, help="address-space limit per worker")
    ap.add_argument("--sgl-budget-s", type=float, default=8.0, help="SGL's compile budget (CompileBudget.seconds)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="write every result here")
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    names = [c.name for c in corpus.all_cases() if args.filter in c.name]
    limits = runner.Limits(case_s=args.case_s, memory_bytes=int(args.memory_gb * (1 << 30)),
                           sgl_budget_s=args.sgl_budget_s)
    results = {}
    for eng in args.engines.split(","):
        t = time.time()
        results[eng] = runner.run_cases(names, ENGINE_SPECS[eng], limits, workers=args.workers)
        print(f"{eng}: {len(names)} cases in {time.time() - t:.0f} s", file=sys.stderr)
    print(tabulate(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
