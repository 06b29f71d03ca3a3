"""Grammar backtracking (black-box model + local draft) vs fully constrained local decoding.

Task: a JSON object of exactly 10 string-valued keys (JSON Schema with
``additionalProperties: {"type": "string"}``, ``minProperties = maxProperties = 10``),
prompted with "Here is a really long JSON object, with 10 keys, using only string values".

* backtracking: the default model (SmolLM2-135M-Instruct) as a black box
  ``fn(str) -> str`` (greedy, in the model's engine: its prefix cache serves what calls share), repaired by the
  same model as the draft (``sgl.decode.backtrack.guide``);
* constrained: the same model decoding under the schema's token masks (``LocalModel``
  with a ``ConstraintSpec`` when ``sgl.backends.local`` exists, else the same Matcher
  loop on the engine's Llama).

One run each, greedy, model loaded and schema compiled before the clocks start (compile
times are reported apart). Tokens are the final text's tokens in the model's vocabulary.

    python bench/backtrack.py [--max-new-tokens 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

PROMPT = "Here is a really long JSON object, with 10 keys, using only string values:\n\n```json\n"
SCHEMA = {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 10, "maxProperties": 10}


def check(text: str) -> tuple[bool, int]:
    """(a JSON object of 10 string values, number of distinct keys).

    The schema counts members, not distinct names: duplicate keys pass the grammar.
    """
    pairs: list = []
    try:
        json.loads(text, object_pairs_hook=lambda p: pairs.extend(p) or dict(p))
    except json.JSONDecodeError:
        return False, 0
    ok = len(pairs) == 10 and all(isinstance(v, str) for _, v in pairs)
    return ok, len({k for k, _ in pairs})


def run_backtracking(model: Any, max_new_tokens: int) -> dict[str, Any]:
    from sgl.decode.backtrack import BacktrackError, guide

    fn = model.as_black_box(max_tokens=max_new_tokens, stop=("```",))
    t0 = time.perf_counter()
    try:
        r = guide(fn, SCHEMA, PROMPT, draft_model=model, stop_at="```", max_grammar_corrections=20)
        text, corrections, log, extra = r.text, r.corrections, r.log, {
            "model_calls": r.model_calls, "draft_tokens": r.draft_tokens,
            "draft_reused_tokens": r.draft_reused_tokens, "model_s": r.model_seconds, "draft_s": r.draft_seconds}
    except BacktrackError as e:
        text, corrections, log, extra = e.prefix, len(e.log), e.log, {"error": str(e)}
    wall = time.perf_counter() - t0
    return {"method": "backtracking (black box + draft)", "wall_s": wall, "text": text, "corrections": corrections,
            "log": str(log), **extra}


def run_constrained(model: Any, max_new_tokens: int) -> dict[str, Any]:
    from sgl.backends.base import GenerateRequest
    from sgl.types import ConstraintSpec, SamplingParams

    t0 = time.perf_counter()
    if hasattr(model.source, "generate"):  # the LocalModel the LogitModel wraps
        res = model.source.generate(GenerateRequest(PROMPT, SamplingParams(max_tokens=max_new_tokens, temperature=0.0),
                                                    ConstraintSpec(json_schema=SCHEMA)))
        text, how = res.text, "LocalModel + ConstraintSpec"
    else:
        from sgl.constrain import Matcher, compile_json_schema

        matcher = Matcher(compile_json_schema(SCHEMA, model.vocab))
        ids = model.generate(model.encode_prompt(PROMPT), max_new_tokens, matcher=matcher).ids
        text, how = model.decode(ids), "engine Llama + Matcher (sgl.backends.local absent)"
    return {"method": f"fully constrained ({how})", "wall_s": time.perf_counter() - t0, "text": text,
            "corrections": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    from sgl.constrain import compile_json_schema
    from sgl.decode.logit_model import load_logit_model

    t0 = time.perf_counter()
    model = load_logit_model()
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compile_json_schema(SCHEMA)  # text-only grammar (backtracking's parser)
    compile_json_schema(SCHEMA, model.vocab)  # token masks (draft and constrained decoding)
    compile_s = time.perf_counter() - t0

    rows = [run_backtracking(model, args.max_new_tokens), run_constrained(model, args.max_new_tokens)]
    for r in rows:
        r["tokens"] = len(model.encode_text(r["text"]))
        r["tokens_per_s"] = r["tokens"] / r["wall_s"] if r["wall_s"] > 0 else 0.0
        r["valid"], r["distinct_keys"] = check(r["text"])

    import torch

    print(f"model load {load_s:.1f} s, schema compile {compile_s:.2f} s, torch threads {torch.get_num_threads()}\n")
    print("| method | wall (s) | tokens | tokens/s | corrections | 10 string members | distinct keys |")
    print("|---|---:|---:|---:|---:|:---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['wall_s']:.2f} | {r['tokens']} | {r['tokens_per_s']:.1f} | "
              f"{r['corrections']} | {'yes' if r['valid'] else 'no'} | {r['distinct_keys']} |")
    for r in rows:
        print(f"\n### {r['method']}\n```\n{r['text']}\n```")
        if r.get("log"):
            print(r["log"])
        extra = {k: r[k] for k in ("model_calls", "draft_tokens", "draft_reused_tokens", "model_s", "draft_s",
                                   "error") if k in r}
        if extra:
            print(extra)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_s": load_s, "compile_s": compile_s, "runs": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
