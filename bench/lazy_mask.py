"""Lazy masking vs the full token mask per step: greedy decoding under a JSON schema.

The default model (SmolLM2-135M-Instruct, ``LocalModel()``) writes a character sheet
under the characters schema of ``examples/characters.py``, greedily, once per way of
choosing the token:

* full: the constraint's mask for the whole vocabulary, applied to the logits, argmax
  (what the engine does without lazy masks);
* lazy: ``sample_with_lazy_mask`` (likely tokens checked one by one with
  ``Matcher.accepts_token``), the full mask only when it falls back.

Every run compiles the schema afresh, so no run reuses another's per-grammar mask cache.
"cold" runs also clear the process-wide lexer and DFA caches first (a schema never seen
before); "warm" runs keep them (a new grammar for lexemes seen before, the usual case in
a server). Only token selection is timed, not the model or ``advance``. The two token
sequences must be identical.

    python bench/lazy_mask.py [--tokens 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sgl.backends.local import LocalModel
from sgl.constrain import CompiledGrammar, Matcher, allocate_bitmask, apply_bitmask
from sgl.constrain.json_schema import json_schema_grammar
from sgl.engine.lazy_mask import sample_with_lazy_mask
from sgl.engine.sampler import Sampler

SYSTEM = "You write short character sheets for a fantasy story, as JSON."
QUESTION = (
    "Invent a blacksmith from a port city: a name, a one-sentence description, and their "
    "age, height, weight, hair and eye colour."
)


def load_schema() -> tuple[dict, str]:
    """The characters example's schema (the example is the job this bench stands for)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from characters import CHARACTER_SCHEMA

    return CHARACTER_SCHEMA, "examples/characters.py CHARACTER_SCHEMA"


def prompt_ids(lm: LocalModel) -> list[int]:
    system, user, assistant = (lm.role_text(r, "") for r in ("system", "user", "assistant"))
    text = system[0] + SYSTEM + system[1] + user[0] + QUESTION + user[1] + assistant[0]
    return lm.encode(text)


def fresh_matcher(schema: dict, lm: LocalModel) -> tuple[Matcher, float]:
    """A matcher on a newly built grammar (``compile_json_schema`` would return a cached one)."""
    t0 = time.perf_counter()
    compiled = CompiledGrammar(json_schema_grammar(schema), lm.vocab)
    return Matcher(compiled), time.perf_counter() - t0


def clear_shared_caches() -> None:
    """Forget the lexer cores (with their vocabulary walks) and terminal DFAs of earlier grammars."""
    from sgl.constrain import compiled, lexer

    lexer.clear_shared_cores()
    compiled._dfa_cache.clear()


class FullMask:
    """The full path: mask, apply, sample."""

    def __init__(self, n_vocab: int) -> None:
        self.bitmask = allocate_bitmask(1, n_vocab)
        self.fallbacks = 0
        self.checked = 0

    def __call__(self, logits: torch.Tensor, sampler: Sampler, matcher: Matcher) -> int:
        matcher.fill_bitmask(self.bitmask)
        apply_bitmask(logits, self.bitmask)
        return sampler.sample(logits)


class LazyMask(FullMask):
    """Lazy first; the full path when it falls back."""

    def __call__(self, logits: torch.Tensor, sampler: Sampler, matcher: Matcher) -> int:
        res = sample_with_lazy_mask(logits, sampler, matcher)
        self.checked += res.candidates_checked
        if res.token is not None:
            return res.token
        self.fallbacks += 1
        return super().__call__(logits, sampler, matcher)


def decode(lm: LocalModel, schema: dict, ids: list[int], select: FullMask, n_tokens: int,
           keep_logits: bool = False) -> dict[str, Any]:
    """Greedy decoding with the model and a freshly compiled grammar; selection times in µs."""
    matcher, compile_s = fresh_matcher(schema, lm)
    sampler = Sampler(temperature=0.0)
    eos = set(lm.eos_token_ids)
    cache = lm.model.new_cache(len(ids) + n_tokens + 1)
    tokens: list[int] = []
    times: list[float] = []
    steps: list[torch.Tensor] = []
    with torch.inference_mode():
        logits = lm.model.forward(torch.tensor([ids]), cache)[0]
        while len(tokens) < n_tokens and not matcher.is_terminated():
            if keep_logits:
                steps.append(logits.clone())  # before the full path masks it in place
            t = time.perf_counter_ns()
            tok = select(logits, sampler, matcher)
            times.append((time.perf_counter_ns() - t) / 1000)
            if not matcher.advance(tok):
                raise RuntimeError(f"the constraint refused token {tok}")
            tokens.append(tok)
            if tok in eos:
                break
            logits = lm.model.forward(torch.tensor([[tok]]), cache)[0]
    return {"tokens": tokens, "times_us": times, "compile_s": compile_s, "steps": steps,
            "fallbacks": select.fallbacks, "checked": select.checked}


def replay(lm: LocalModel, schema: dict, steps: list[torch.Tensor], select: FullMask) -> dict[str, Any]:
    """Token selection over recorded logits, with a freshly compiled grammar.

    Valid while the tokens chosen are the recorded ones (the model is deterministic):
    the run stops at the first different token, which the caller reports.
    """
    matcher, compile_s = fresh_matcher(schema, lm)
    sampler = Sampler(temperature=0.0)
    tokens: list[int] = []
    times: list[float] = []
    for recorded in steps:
        if matcher.is_terminated():
            break
        logits = recorded.clone()
        t = time.perf_counter_ns()
        tok = select(logits, sampler, matcher)
        times.append((time.perf_counter_ns() - t) / 1000)
        if not matcher.advance(tok):
            raise RuntimeError(f"the constraint refused token {tok}")
        tokens.append(tok)
    return {"tokens": tokens, "times_us": times, "compile_s": compile_s,
            "fallbacks": select.fallbacks, "checked": select.checked}


def summary(name: str, caches: str, run: dict[str, Any]) -> dict[str, Any]:
    times = sorted(run["times_us"])
    n = len(times)
    return {
        "path": name, "caches": caches, "tokens": n,
        "median_us": statistics.median(times), "p90_us": times[min(n - 1, int(0.9 * n))],
        "mean_us": statistics.fmean(times), "max_us": times[-1], "total_ms": sum(times) / 1000,
        "fallbacks": run["fallbacks"], "checked_per_token": run["checked"] / n,
        "compile_ms": run["compile_s"] * 1000,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of the summaries (fallbacks and checks only mean something when lazy)."""
    lines = [
        "| path | caches | tokens | median µs | p90 µs | mean µs | max µs | total ms | fallbacks "
        "| checked/token |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        lazy = r["path"] == "lazy"
        fallbacks = str(r["fallbacks"]) if lazy else "-"
        checked = f"{r['checked_per_token']:.1f}" if lazy else "-"
        lines.append(
            f"| {r['path']} | {r['caches']} | {r['tokens']} | {r['median_us']:.0f} | {r['p90_us']:.0f} "
            f"| {r['mean_us']:.0f} | {r['max_us']:.0f} | {r['total_ms']:.1f} | {fallbacks} | {checked} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=100, help="at most this many tokens")
    parser.add_argument("--live", action="store_true",
                        help="run the model for every row instead of replaying recorded logits")
    parser.add_argument("--json", type=Path, help="write the rows (and token ids) here")
    args = parser.parse_args()

    lm = LocalModel()
    schema, schema_name = load_schema()
    ids = prompt_ids(lm)
    n_vocab = lm.config.vocab_size
    clear_shared_caches()
    recording = decode(lm, schema, ids, FullMask(n_vocab), args.tokens, keep_logits=not args.live)
    rows = [summary("full", "cold, live decode", recording)]
    sequences = [recording["tokens"]]
    for caches in ("cold", "warm"):
        for name, select in (("full", FullMask(n_vocab)), ("lazy", LazyMask(n_vocab))):
            if caches == "cold":
                clear_shared_caches()
            if args.live:
                run = decode(lm, schema, ids, select, args.tokens)
            else:
                run = replay(lm, schema, recording["steps"], select)
            rows.append(summary(name, caches + (", live decode" if args.live else ""), run))
            sequences.append(run["tokens"])
    identical = all(seq == sequences[0] for seq in sequences)

    print(f"model {lm.path.name}, schema: {schema_name}, prompt {len(ids)} tokens, "
          f"torch threads {torch.get_num_threads()}, greedy"
          + ("" if args.live else "; rows without 'live' replay the live decode's logits"))
    print(table(rows))
    print(f"\ntoken sequences identical across all runs: {identical}")
    print("text:", lm.decode(sequences[0]))
    if args.json:
        data = {"rows": rows, "tokens": sequences[0], "identical": identical}
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
