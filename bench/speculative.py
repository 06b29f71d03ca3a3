"""Speculative decoding on an extraction task: plain greedy vs each drafter.

The default model (SmolLM2-135M-Instruct) reads a paragraph about a person and fills
in a JSON template with values copied from it, greedy, ``--tokens`` new tokens at most (EOS ends a run early; every
configuration produces the same tokens, which is checked). Each configuration runs
``--repeats`` times, interleaved so that all see the same machine load; the table
shows medians. Wall time covers prefill + decode; tokens/s = new tokens / wall time.

Drafters: n-gram prompt lookup (``k`` = 2, 4, 8), early exit after 1/3 and 1/2 of the
target's layers (``k`` = 2), and `ModelDrafter` with the target itself as the draft model (there is
no second small model on disk: a sanity check whose acceptance must be ~100%, and whose
cost shows the ceiling of a draft model as expensive as the target).

    python bench/speculative.py                      # 128 tokens, 3 repeats, ~3 minutes
    python bench/speculative.py --json-schema        # the same under a JSON Schema constraint
    python bench/speculative.py --only plain,ngram-k4 --tokens 64
    python bench/speculative.py --concurrent 4       # 4 requests in one engine's batch

"CPU s" is the process CPU time of a run (every thread). With ``--concurrent N`` each
run is N copies of the request in one engine (prefix cache off); "target passes" are
then the engine's steps. "draft fwd" counts the draft model's forward passes (each over
every sequence drafting from it; "-" where the engine does not count them).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PARAGRAPH = (
    "Dr. Eleanor Whitfield is a marine biologist at the Northern Atlantic Research "
    "Institute in Halifax, Nova Scotia. She was born on 14 September 1979 in Bristol, England, "
    "and holds a PhD from the University of Edinburgh. Her research focuses on deep-sea coral "
    "ecosystems and ocean acidification. Her email address is eleanor.whitfield@narinstitute.ca "
    "and her phone number is +1 902 555 0147."
)
FIELDS = ("name", "job", "employer", "city", "born", "birthplace", "university", "research", "email", "phone")
QUESTION = (
    f"{PARAGRAPH}\n\nFill in this JSON with values copied from the text:\n"
    + "{" + ", ".join(f'"{f}": ""' for f in FIELDS) + "}"
)
SCHEMA = {
    "type": "object",
    "properties": {f: {"type": "string"} for f in FIELDS},
    "required": list(FIELDS),
    "additionalProperties": False,
}


@dataclass
class Row:
    name: str
    wall_s: list[float]
    cpu_s: list[float] = field(default_factory=list)
    tokens: int = 0
    passes: int = 0
    acceptance: float = 0.0
    same_output: bool = True
    draft_forwards: int | None = None


def configs(model) -> dict[str, Callable[[], object] | None]:
    """Name -> drafter factory (None = plain decoding) and ``k``."""
    from sgl.engine.speculative import EarlyExitDrafter, ModelDrafter, NgramDrafter

    n = model.config.num_hidden_layers
    return {
        "plain": None,
        "ngram-k2": (lambda: NgramDrafter(n=3), 2),
        "ngram-k4": (lambda: NgramDrafter(n=3), 4),
        "ngram-k8": (lambda: NgramDrafter(n=3), 8),
        # k=2: a plain (not early-exit trained) model's first layers rarely agree with
        # the last one, so longer drafts only cost more
        f"early-exit-{n // 3}of{n}-k2": (lambda: EarlyExitDrafter(model, n // 3), 2),
        f"early-exit-{n // 2}of{n}-k2": (lambda: EarlyExitDrafter(model, n // 2), 2),
        "self-model-k4": (lambda: ModelDrafter(model), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file or checkpoint folder (default: SmolLM2-135M)")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens at most per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--json-schema", action="store_true", help="constrain the output with a JSON Schema")
    ap.add_argument("--only", default="", help="comma-separated configuration names")
    ap.add_argument("--concurrent", type=int, default=1, help="requests decoded together in one engine")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sgl.backends.local import LocalModel
    from sgl.constrain import Matcher, compile_json_schema
    from sgl.engine.sampler import Sampler
    from sgl.engine.speculative import plain_generate, speculative_generate

    lm = LocalModel(args.model)
    user = lm.role_text("user", QUESTION)
    prompt = lm.encode(user[0] + QUESTION + user[1] + lm.role_text("assistant", "")[0])
    compiled = compile_json_schema(SCHEMA, lm.vocab) if args.json_schema else None
    table = configs(lm.model)
    if args.only:
        table = {k: v for k, v in table.items() if k in args.only.split(",")}

    def run(entry):
        if args.concurrent > 1:
            return run_together(lm, prompt, entry, args, compiled)
        matcher = Matcher(compiled) if compiled is not None else None
        common = dict(max_tokens=args.tokens, sampler=Sampler(temperature=0.0),
                      eos_ids=lm.eos_token_ids, matcher=matcher)
        start = time.perf_counter()
        if entry is None:
            out = plain_generate(lm.model, prompt, **common)
        else:
            make, k = entry
            out = speculative_generate(lm.model, make(), prompt, k=k, **common)
        return time.perf_counter() - start, out

    rows = {name: Row(name, []) for name in table}
    reference: list[int] | None = None
    run(None)  # warm-up (allocator, rotary table, first-call overheads)
    for _ in range(args.repeats):
        for name, entry in table.items():
            cpu = time.process_time()
            wall, out = run(entry)
            row = rows[name]
            row.wall_s.append(wall)
            row.cpu_s.append(time.process_time() - cpu)
            row.tokens, row.passes, row.acceptance = getattr(out, "tokens", len(out.token_ids)), out.forward_passes, \
                out.acceptance_rate
            row.draft_forwards = getattr(out, "draft_forwards", None)
            if reference is None:
                reference = out.token_ids
                print(f"output ({len(out.token_ids)} tokens): {lm.decode(out.token_ids)!r}", file=sys.stderr)
            row.same_output &= out.token_ids == reference and getattr(out, "same", True)
    print_table(rows.values(), args, len(prompt), torch.get_num_threads())
    return 0


@dataclass
class Together:
    """What ``--concurrent`` runs report: the first request's tokens, totals of the rest."""

    token_ids: list[int]
    tokens: int
    forward_passes: int
    acceptance_rate: float
    draft_forwards: int | None
    same: bool


def run_together(lm, prompt, entry, args, compiled) -> tuple[float, Together]:
    """``args.concurrent`` copies of the request in one engine; (wall s, totals)."""
    from sgl.constrain import Matcher
    from sgl.engine.request import SeqRequest
    from sgl.engine.sampler import Sampler
    from sgl.engine.scheduler import Engine, EngineConfig
    from sgl.engine.speculative import Speculation
    from sgl.types import SamplingParams

    config = EngineConfig(kv_budget_mb=256, max_running=args.concurrent, prefix_cache=False, jump_forward=False,
                          lazy_masks=False)
    engine = Engine(lm.model, lm.vocab.token_bytes, lm.eos_token_ids, config)
    accs = [None if entry is None else Speculation(entry[0](), entry[1]) for _ in range(args.concurrent)]
    reqs = [SeqRequest(list(prompt), SamplingParams(max_tokens=args.tokens), None if compiled is None
                       else Matcher(compiled), sampler=Sampler(temperature=0.0), acceptor=acc) for acc in accs]
    start = time.perf_counter()
    try:
        outs = engine.generate(reqs)
    finally:
        engine.close()
    wall = time.perf_counter() - start
    proposed = sum(a.proposed for a in accs if a is not None)
    accepted = sum(a.accepted for a in accs if a is not None)
    return wall, Together(outs[0].token_ids, sum(len(o.token_ids) for o in outs), engine.stats.steps,
                          accepted / proposed if proposed else 0.0, getattr(engine.stats, "draft_steps", None),
                          all(o.token_ids == outs[0].token_ids for o in outs))


def print_table(rows, args, n_prompt: int, threads: int) -> None:
    cmd = "python bench/speculative.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print(f"\n`{cmd.strip()}`: {n_prompt}-token prompt, greedy, <= {args.tokens} new tokens, "
          f"median of {args.repeats}, torch {torch.__version__}, {threads} threads"
          f"{f', {args.concurrent} requests together' if args.concurrent > 1 else ''}"
          f"{', JSON Schema constraint' if args.json_schema else ''}\n")
    print("| config | wall s | CPU s | tokens/s | speedup | target passes | tokens/pass | acceptance | draft fwd "
          "| same output |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    base = None
    for r in rows:
        wall = statistics.median(r.wall_s)
        tps = r.tokens / wall
        base = base or tps
        per_pass = r.tokens / r.passes if r.passes else 0.0
        print(f"| {r.name} | {wall:.2f} | {statistics.median(r.cpu_s):.2f} | {tps:.1f} | {tps / base:.2f}x "
              f"| {r.passes} | {per_pass:.2f} "
              f"| {r.acceptance:.0%} | {'-' if r.draft_forwards is None else r.draft_forwards} "
              f"| {'yes' if r.same_output else 'NO'} |")


if __name__ == "__main__":
    raise SystemExit(main())
