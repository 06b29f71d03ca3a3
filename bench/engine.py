"""The engine's optimisations, each against the same engine with it switched off, in one run.

    python bench/engine.py                       # every section
    python bench/engine.py --only prefix,batching

Sections (default model, CPU):

* ``prefix``: 64 prompts "<long shared few-shot prefix> Generate a story about {topic}",
  submitted together, with and without the radix prefix cache: time to first token
  (mean, and until the last request got its first token) and the cache hit rate.
* ``batching``: generated tokens per second with continuous batching at 1, 8 and 32
  sequences at once (fixed-length outputs: EOS is banned by ``min_tokens``).
* ``characters``: ``examples/characters.py`` itself; the share of wall time spent
  choosing constrained tokens (masks, lazy checks, sampling).
* ``jump``: the characters schema (examples/characters.py), greedy, with and without
  jump-forward: forward passes and wall time; lazy masks on and off in the same way
  (mask time per token). Every output is validated against the schema.

Every configuration gets a fresh engine and freshly compiled constraints, so neither
side profits from the other's caches. Absolute figures depend on the machine's load;
compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

FEW_SHOT = """You are a storyteller. Here are examples of the short stories you write.

Topic: a lighthouse. Story: Every night the keeper lit the lamp, and every night a small boat
answered with a lantern of its own. Years later he learned it was his daughter, sailing home.

Topic: a clock. Story: The clockmaker built a clock that ran backwards. The town laughed, until
the day it struck thirteen and the baker's lost dog came trotting home, young again.

Topic: a garden. Story: She planted one seed for every letter she never sent. By autumn the
garden was so full that the postman stopped at the gate to read the flowers.

"""
TOPICS = ["dragons", "a lost key", "the sea", "a robot", "winter", "a library", "a violin", "the moon"]


def engine_copy(lm, **flags):
    """A LocalModel sharing ``lm``'s weights, with its own engine (``flags``) and caches."""
    from sgl.engine.scheduler import Engine, EngineConfig

    other = copy.copy(lm)
    cfg = EngineConfig(**{**lm.engine_config.__dict__, **flags})
    other.engine_config = cfg
    other.engine = Engine(lm.model, lm.vocab.token_bytes, lm.eos_token_ids, cfg,
                          max_context=lm.max_context, vocab=lm.vocab)
    other._grammars = {}
    return other


def bench_prefix(lm, n: int) -> list[str]:
    from sgl.backends.base import GenerateRequest
    from sgl.types import SamplingParams

    reqs = [GenerateRequest(FEW_SHOT + f"Topic: {TOPICS[i % len(TOPICS)]} #{i}. Generate a story about it. Story:",
                            SamplingParams(max_tokens=4, temperature=0)) for i in range(n)]
    rows, ttft_all = [], {}
    for on in (False, True):
        m = engine_copy(lm, prefix_cache=on)
        t0 = time.perf_counter()
        handles = [m.submit(r) for r in reqs]
        outs = [h.result() for h in handles]
        wall = time.perf_counter() - t0
        ttfts = [o.meta["ttft_s"] for o in outs]
        ttft_all[on] = (statistics.mean(ttfts), max(ttfts))
        st = m.engine.stats
        rows.append(f"| {'on' if on else 'off'} | {n} | {len(lm.encode(reqs[0].prompt))} | "
                    f"{statistics.mean(ttfts):.2f} s | {max(ttfts):.2f} s | {wall:.2f} s | "
                    f"{st.forward_tokens} | {st.prefix_hit_rate:.1%} |")
        m.engine.close()
    speed = ttft_all[False][0] / ttft_all[True][0], ttft_all[False][1] / ttft_all[True][1]
    return ["### Prefix cache", "",
            "| prefix cache | requests | prompt tokens | TTFT mean | TTFT last request | wall | tokens through the model | hit rate |",
            "|---|--:|--:|--:|--:|--:|--:|--:|", *rows, "",
            f"Time to first token: {speed[0]:.1f}× less on average, {speed[1]:.1f}× less until the last request.", ""]


def bench_batching(lm, sizes: list[int], tokens: int) -> list[str]:
    from sgl.backends.base import GenerateRequest
    from sgl.types import SamplingParams

    rows, base = [], None
    for b in sizes:
        m = engine_copy(lm, max_running=b, prefix_cache=False)
        n_req = max(b, 2)
        reqs = [GenerateRequest(f"Write a story about {TOPICS[i % len(TOPICS)]}, part {i}.",
                                SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=0))
                for i in range(n_req)]
        t0 = time.perf_counter()
        outs = m.generate_batch(reqs)
        wall = time.perf_counter() - t0
        n_tok = sum(len(o.token_ids) for o in outs)
        tps = n_tok / wall
        base = base or tps
        rows.append(f"| {b} | {n_req} × {tokens} | {wall:.1f} s | {tps:.1f} | {tps / base:.2f}× |")
        m.engine.close()
    return ["### Continuous batching", "",
            "| sequences at once | requests × tokens | wall | generated tok/s | vs 1 |",
            "|--:|--:|--:|--:|--:|", *rows, ""]


def bench_jump(lm, n: int, batch: int) -> list[str]:
    import jsonschema
    from characters import CHARACTER_SCHEMA

    from sgl.backends.base import GenerateRequest
    from sgl.constrain.compiled import CompiledGrammar
    from sgl.constrain.json_schema import json_schema_grammar
    from sgl.types import ConstraintSpec, SamplingParams

    sys_b, sys_a = lm.role_text("system", "")
    u_b, u_a = lm.role_text("user", "")
    a_b, _ = lm.role_text("assistant", "")
    reqs = [GenerateRequest(
        sys_b + "You write short character sheets for a fantasy story, as JSON." + sys_a + u_b
        + f"Invent a {TOPICS[i % len(TOPICS)]} keeper: a name, a one-sentence description, and "
          "their age, height, weight, hair and eye colour." + u_a + a_b,
        SamplingParams(max_tokens=256, temperature=0), ConstraintSpec(json_schema=CHARACTER_SCHEMA))
        for i in range(n)]
    # the example's schema asks for compact whitespace itself; here the option decides
    plain_schema = {k: v for k, v in CHARACTER_SCHEMA.items() if k != "x-guidance"}
    rows, texts, walls = [], {}, {}
    configs = [("flexible", False, False), ("flexible", True, False), ("flexible", False, True),
               ("flexible", True, True), ("compact", False, True), ("compact", True, True)]
    for ws, jf, lazy in configs:
        m = engine_copy(lm, jump_forward=jf, lazy_masks=lazy, max_running=batch)
        # A grammar of its own (compiled outside the timing): its masks start cold.
        m._grammars[("json_schema", json.dumps(CHARACTER_SCHEMA, sort_keys=True))] = CompiledGrammar(
            json_schema_grammar(plain_schema, whitespace=ws), lm.vocab)
        t0 = time.perf_counter()
        if batch == 1:  # one stream: each request alone, as a single user would see it
            outs = [m.generate(r) for r in reqs]
        else:
            outs = m.generate_batch(reqs)
        wall = time.perf_counter() - t0
        for o in outs:
            jsonschema.validate(json.loads(o.text), CHARACTER_SCHEMA)
        st = m.engine.stats
        texts[(ws, jf, lazy)] = [o.text for o in outs]
        walls[(ws, jf, lazy)] = wall
        toks = sum(len(o.token_ids) for o in outs)
        rows.append(f"| {ws} | {'on' if jf else 'off'} | {'on' if lazy else 'off'} | {wall:.1f} s | {st.steps} | "
                    f"{toks} | {st.forced_tokens} | {1e6 * st.mask_time_s / max(1, st.masks):.0f} µs | "
                    f"{st.lazy_hits}/{st.masks} |")
        m.engine.close()
    same = all(t == texts[configs[0]] for k, t in texts.items() if k[0] == "flexible")
    return ["### Jump-forward and lazy masks (characters schema)", "",
            f"{n} characters, greedy, {'one at a time' if batch == 1 else f'{batch} at once'}; all "
            f"outputs valid; outputs identical across the flexible-whitespace configurations: {'yes' if same else 'no'} "
            "(jump-forward feeds canonical splits of forced keys, where the masked model may pick others). "
            "Selection time = choosing one constrained token: mask or lazy checks, masking, sampling.", "",
            "| whitespace | jump-forward | lazy masks | wall | forward passes | tokens | forced tokens | selection time / token | lazy hits / tokens |",
            "|---|---|---|--:|--:|--:|--:|--:|--:|", *rows, "",
            f"Jump-forward: {walls[configs[0]] / walls[configs[1]]:.2f}× faster (flexible whitespace, lazy off), "
            f"{walls[configs[2]] / walls[configs[3]]:.2f}× (lazy on), "
            f"{walls[configs[4]] / walls[configs[5]]:.2f}× (compact whitespace, lazy on).", ""]


def bench_characters(lm, n: int) -> list[str]:
    """examples/characters.py as run by users (run_batch, temperature 0.9): the share of
    the generation's wall time spent choosing constrained tokens (masks + sampling)."""
    import tempfile

    import characters

    m = engine_copy(lm)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        status = characters.main(["--n", str(n), "--out", f"{tmp}/c.jsonl"], backend=m)
        wall = time.perf_counter() - t0
    st = m.engine.stats
    m.engine.close()
    return ["### Mask share in examples/characters.py", "",
            "| characters | valid | wall | tokens | constrained-token selection | share of wall |",
            "|--:|---|--:|--:|--:|--:|",
            f"| {n} | {'all' if status == 0 else 'NOT all'} | {wall:.1f} s | {st.generated_tokens} | "
            f"{st.mask_time_s:.2f} s ({1e6 * st.mask_time_s / max(1, st.masks):.0f} µs/token) | "
            f"{st.mask_time_s / wall:.1%} |", ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="prefix,batching,jump,characters")
    ap.add_argument("--weights", default="auto", choices=["auto", "float"], help="LocalModel(weights=...)")
    ap.add_argument("--example-characters", type=int, default=32, help="characters for the mask-share run")
    ap.add_argument("--prefix-requests", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--batch-tokens", type=int, default=32)
    ap.add_argument("--characters", type=int, default=8)
    ap.add_argument("--jump-batch", type=int, default=1, help="characters decoded at once (1 = one stream)")
    args = ap.parse_args(argv)
    from sgl.backends.local import LocalModel

    lm = LocalModel(weights=args.weights)
    out = [f"`python bench/engine.py {' '.join(argv if argv is not None else sys.argv[1:])}`".strip(), ""]
    only = set(args.only.split(","))
    if "prefix" in only:
        out += bench_prefix(lm, args.prefix_requests)
        print("\n".join(out), flush=True)
    if "batching" in only:
        out += bench_batching(lm, [int(x) for x in args.batch_sizes.split(",")], args.batch_tokens)
        print("\n".join(out[-8:]), flush=True)
    if "jump" in only:
        out += bench_jump(lm, args.characters, args.jump_batch)
    if "characters" in only:
        out += bench_characters(lm, args.example_characters)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
