"""The continuous-batching engine: KV pool, prefix cache, paged forward, scheduler.

Mechanics (paging, prefix sharing, preemption, batching) are checked on a tiny random
model, where they are cheap and every output can be compared exactly with the plain
contiguous-cache forward pass; behaviour with the real default model (each optimisation
on equals off at temperature 0) is checked at the end.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
from test_local_model import tiny_config, tiny_state

from sgl.backends.base import GenerateRequest
from sgl.engine.kv_pool import KVPool
from sgl.engine.llama import Llama
from sgl.engine.paged_forward import RowInput, forward_rows
from sgl.engine.radix_cache import RadixCache
from sgl.engine.request import PromptLogprobs, SeqRequest
from sgl.engine.scheduler import Engine, EngineConfig
from sgl.types import ConstraintSpec, SamplingParams

# ------------------------------------------------------------------ KV pool


def test_pool_allocates_and_refuses_without_taking_anything():
    c = tiny_config()
    pool = KVPool(c, budget_bytes=8 * 4 * 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4,
                  block_size=4)
    assert pool.n_blocks == 8
    a = pool.alloc(5)
    assert len(set(a)) == 5 and pool.n_free == 3
    assert pool.alloc(4) is None and pool.n_free == 3
    pool.release(a)
    assert pool.n_free == 8
    assert pool.slots([3, 1], 2, 6).tolist() == [14, 15, 4, 5]


def test_pool_budget_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="KV budget"):
        KVPool(tiny_config(), budget_bytes=100, block_size=16)


# ------------------------------------------------------------- prefix cache


def _tree(bs=2):
    freed = []
    return RadixCache(bs, freed.append), freed


def test_radix_match_is_block_granular_and_counts_hits():
    tree, _ = _tree()
    a = tree.extend(None, [1, 2], 10)
    b = tree.extend(a, [3, 4], 11)
    assert tree.extend(a, [3, 4], 99) is None  # same tokens: the first block stays
    assert tree.match([1, 2, 3, 4, 5]) == [a, b]
    assert tree.match([1, 2, 3]) == [a]  # a partial block never matches
    assert tree.match([2, 1]) == []


def test_radix_eviction_is_lru_leaves_first_and_spares_pinned_nodes():
    tree, freed = _tree()
    a = tree.extend(None, [1, 2], 10)
    tree.extend(a, [3, 4], 11)
    c = tree.extend(None, [5, 6], 12)
    d = tree.extend(c, [7, 8], 13)
    tree.match([5, 6, 7, 8])  # c, d now more recent than a, b
    tree.pin([c, d])
    assert tree.evict(1) == 1 and freed == [11]  # b: the least recently used leaf
    assert tree.evict(5) == 1 and freed == [11, 10]  # then its parent; c, d are pinned
    tree.unpin([c, d])
    assert tree.evict(5) == 2 and freed == [11, 10, 13, 12]
    assert tree.evict(5) == 0 and tree.match([5, 6]) == []  # nothing left
    with pytest.raises(RuntimeError):
        tree.unpin([c])


# ------------------------------------------------------------- paged forward


@pytest.fixture(scope="module")
def tiny():
    c = tiny_config(vocab_size=61)
    return Llama(c, tiny_state(c, bias=True, seed=3))


def _reference_logits(model, ids):
    cache = model.new_cache(len(ids) + 1)
    return model.forward(torch.tensor([ids]), cache)[0]


def test_paged_forward_matches_contiguous_forward_for_mixed_rows(tiny):
    pool = KVPool(tiny.config, 1 << 20, block_size=4)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 61, (13,), generator=g).tolist()
    b = torch.randint(0, 61, (6,), generator=g).tolist()
    ba, bb = pool.alloc(4), pool.alloc(3)
    # step 1: a prefills a chunk, b its whole prompt
    out = forward_rows(tiny, pool, [RowInput(a[:7], 0, ba), RowInput(b, 0, bb)])
    torch.testing.assert_close(out[1], _reference_logits(tiny, b), atol=1e-4, rtol=1e-4)
    # step 2: a's next chunk after a cached prefix (an extend row), b decodes one token
    out = forward_rows(tiny, pool, [RowInput(a[7:12], 7, ba), RowInput([5], 6, bb)])
    torch.testing.assert_close(out[0], _reference_logits(tiny, a[:12]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1], _reference_logits(tiny, b + [5]), atol=1e-4, rtol=1e-4)
    # step 3: both decode (padded attention over different lengths)
    out = forward_rows(tiny, pool, [RowInput([a[12]], 12, ba), RowInput([9], 7, bb)])
    torch.testing.assert_close(out[0], _reference_logits(tiny, a), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1], _reference_logits(tiny, b + [5, 9]), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------- scheduler

TOKEN_BYTES = [bytes([65 + i % 26]) for i in range(61)]
EOS = 60


def _engine(model, **kw) -> Engine:
    return Engine(model, TOKEN_BYTES, [EOS], EngineConfig(**kw))


def _greedy(n=12, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, **kw)


def _reference_greedy(model, prompt, n):
    """Greedy tokens from the plain contiguous-cache forward pass."""
    cache = model.new_cache(len(prompt) + n + 1)
    logits = model.forward(torch.tensor([prompt]), cache)[0]
    out = []
    for _ in range(n):
        tok = int(torch.argmax(logits))
        out.append(tok)
        if tok == EOS:
            break
        logits = model.forward(torch.tensor([[tok]]), cache)[0]
    return out


def _prompts(n, shared=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(0, EOS, (shared,), generator=g).tolist()
    return [head + torch.randint(0, EOS, (3 + i % 5,), generator=g).tolist() for i in range(n)]


def _run(engine, prompts, n=12):
    try:
        return [o.token_ids for o in engine.generate([SeqRequest(p, _greedy(n)) for p in prompts])]
    finally:
        engine.close()


def test_batched_engine_matches_the_plain_forward_pass(tiny):
    prompts = _prompts(9, shared=10)
    expected = [_reference_greedy(tiny, p, 12) for p in prompts]
    assert _run(_engine(tiny, block_size=4, max_running=4), prompts) == expected


def test_prefix_cache_on_equals_off_and_hits(tiny):
    prompts = _prompts(6, shared=21)
    off = _run(_engine(tiny, block_size=4, prefix_cache=False), prompts)
    eng = _engine(tiny, block_size=4, max_running=1)  # one at a time: each finds the last one's blocks
    on = _run(eng, prompts)
    assert on == off
    assert eng.stats.prefix_hit_rate > 0.5
    assert eng.stats.cached_prompt_tokens >= 5 * 20


def test_preemption_under_a_small_kv_budget_loses_nothing(tiny):
    prompts = _prompts(6, shared=8)
    expected = _run(_engine(tiny, block_size=4), prompts, n=20)
    c = tiny.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
    eng = _engine(tiny, block_size=4, kv_budget_mb=24 * 4 * per_token / 2**20)  # 24 blocks
    assert _run(eng, prompts, n=20) == expected
    assert eng.stats.preemptions > 0


def test_a_request_larger_than_the_budget_fails_clearly_and_others_go_on(tiny):
    c = tiny.config
    per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
    eng = _engine(tiny, block_size=4, kv_budget_mb=6 * 4 * per_token / 2**20)  # 24 tokens
    try:
        big = eng.submit(SeqRequest(list(range(30)), _greedy(4)))
        small = eng.submit(SeqRequest([1, 2, 3], _greedy(4)))
        assert big.result(30).finish_reason == "error" and "KV" in big.result().meta["error"]
        assert small.result(30).finish_reason in ("length", "eos")
    finally:
        eng.close()


def test_prompt_logprobs_come_from_the_prefill_chunked_and_after_cached_prefixes(tiny):
    """Prompt-logprobs mode: the engine's own prefill (chunked, behind a cached prefix,
    batched with other requests) gives the plain forward pass's log-softmax."""
    prompts = _prompts(4, shared=13)
    starts = [0, 5, 14, 2]
    expected = []
    for p in prompts:
        logits = tiny.forward(torch.tensor([p]), tiny.new_cache(len(p)), all_logits=True)[0]
        logp = logits[:-1].log_softmax(-1)
        picked = logp.gather(-1, torch.tensor(p[1:])[:, None])[:, 0]
        top = torch.topk(logp, 3)
        expected.append(([None, *picked.tolist()], [[], *[list(zip(i, v, strict=True)) for i, v in
                                                         zip(top.indices.tolist(), top.values.tolist(), strict=True)]]))
    eng = _engine(tiny, block_size=4, max_step_tokens=6)  # prompts go in several chunks
    try:
        eng.generate([SeqRequest(prompts[0], _greedy(0))])  # the shared prefix is cached
        reqs = [SeqRequest(p, _greedy(2), prompt_logprobs=PromptLogprobs(s, top_n=3))
                for p, s in zip(prompts, starts, strict=True)]
        outs = eng.generate(reqs)
    finally:
        eng.close()
    for out, (lps, tops), s in zip(outs, expected, starts, strict=True):
        assert len(out.prompt_logprobs) == len(lps) - s
        for got, want in zip(out.prompt_logprobs, lps[s:], strict=True):
            assert (got is None) == (want is None) and (want is None or abs(got - want) < 1e-4)
        for got, want in zip(out.prompt_top_logprobs, tops[s:], strict=True):
            assert [t for t, _ in got] == [t for t, _ in want]
        assert len(out.token_ids) == 2  # generation goes on after the scored prefill
    assert outs[2].meta["cached_tokens"] >= 12  # scoring from 14 on: the prefix before it was reused
    assert outs[0].meta["cached_tokens"] == 0  # scoring from 0: nothing could come from the cache


def test_concurrent_submitters_and_cancel(tiny):
    eng = _engine(tiny, block_size=4)
    prompts = _prompts(8)
    results = [None] * len(prompts)

    def worker(i):
        results[i] = eng.submit(SeqRequest(prompts[i], _greedy(10))).result(60).token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    long = eng.submit(SeqRequest([1, 2], _greedy(10_000)))
    long.cancel()
    out = long.result(30)
    eng.close()
    assert results == [_reference_greedy(tiny, p, 10) for p in prompts]
    assert out.finish_reason == "cancelled"


# ---------------------------------------------------- the real default model


def _local(lm, **flags):
    """Another LocalModel view of the same weights with other engine flags."""
    import copy

    from sgl.engine.scheduler import Engine

    other = copy.copy(lm)
    other.token_healing = flags.pop("token_healing", lm.token_healing)
    cfg = EngineConfig(**{**lm.engine_config.__dict__, **flags})
    other.engine_config = cfg
    other.engine = Engine(lm.model, lm.vocab.token_bytes, lm.eos_token_ids, cfg,
                          max_context=lm.max_context, vocab=lm.vocab)
    # cold masks: one side must not warm the other's (the shared compile cache would)
    other.compile_constraint = lambda spec: _cold_compile(spec, lm.vocab)
    return other


def _cold_compile(spec, vocab):
    """A fresh CompiledGrammar for ``spec`` (empty mask caches), outside the shared cache."""
    from sgl.constrain import CompiledGrammar, compile_spec

    text_only = compile_spec(spec)  # the grammar, without a vocabulary's mask caches
    return None if text_only is None else CompiledGrammar(text_only.grammar, vocab)


CHARACTER_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "metadata": {
            "type": "object",
            "properties": {"age": {"type": "integer", "minimum": 1, "maximum": 120},
                           "hair_color": {"type": "string", "enum": ["black", "brown", "blond", "red"]}},
            "required": ["age", "hair_color"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "metadata"],
    "additionalProperties": False,  # so that keys are forced: what jump-forward skips
}


def _character_requests(lm, n):
    before, after = lm.role_text("user", "")
    a_before, _ = lm.role_text("assistant", "")
    return [
        GenerateRequest(
            before + f"Invent character number {i} for a pirate story, as JSON." + after + a_before,
            SamplingParams(max_tokens=80, temperature=0),
            ConstraintSpec(json_schema=CHARACTER_SCHEMA),
        )
        for i in range(n)
    ]


def test_real_model_lazy_masks_on_equal_off_and_jump_forward_saves_steps(local_model_float):
    """Lazy masks must not change greedy outputs. Jump-forward may: without it the model,
    sampling under the mask, often writes forced keys in splits it would never produce
    (``m|eta|data`` where the tokenizer writes ``metadata``); with it the forced text is
    tokenized canonically. So the test asks for valid outputs and fewer forward passes."""
    import jsonschema


    reqs = _character_requests(local_model_float, 3)
    runs = {}
    for jf, lazy in ((False, False), (False, True), (True, True)):
        m = _local(local_model_float, jump_forward=jf, lazy_masks=lazy)  # cold masks for each run
        try:
            runs[jf, lazy] = ([r.text for r in m.generate_batch(reqs)], m.engine.stats)
        finally:
            m.engine.close()
    for texts, _ in runs.values():
        for text in texts:
            jsonschema.validate(json.loads(text), CHARACTER_SCHEMA)
    assert runs[False, True][0] == runs[False, False][0]
    assert runs[False, True][1].lazy_hits > 0
    jumped, plain = runs[True, True][1], runs[False, True][1]
    assert jumped.forced_tokens > 0
    assert jumped.steps < plain.steps  # forced text took no steps of its own


def test_real_model_prefix_cache_on_equals_off(local_model_float):
    shared = "You are a helpful assistant. Answer in one short sentence. " * 6
    reqs = [GenerateRequest(shared + f"Question {i}: what is {i} plus {i}?",
                            SamplingParams(max_tokens=12, temperature=0)) for i in range(4)]
    off_lm = _local(local_model_float, prefix_cache=False)
    on_lm = _local(local_model_float, prefix_cache=True, max_running=1)
    try:
        off = [r.text for r in off_lm.generate_batch(reqs)]
        on = [r.text for r in on_lm.generate_batch(reqs)]
    finally:
        off_lm.engine.close()
        on_lm.engine.close()
    assert on == off
    assert on_lm.engine.stats.prefix_hit_rate > 0.5


def test_real_model_token_healing(local_model_float):
    prompt = "The project's website is at https:"
    healing = _local(local_model_float, token_healing=True)
    plain = _local(local_model_float, token_healing=False)
    try:
        req = GenerateRequest(prompt, SamplingParams(max_tokens=8, temperature=0))
        healed, unhealed = healing.generate(req), plain.generate(req)
    finally:
        healing.engine.close()
        plain.engine.close()
    # the first healed token re-writes the ':' (e.g. '://'), and only what follows is returned
    first = local_model_float.vocab.token_bytes[healed.token_ids[0]]
    assert first.startswith(b":")
    assert healed.text == local_model_float.decode(healed.token_ids)[1:]
    assert not healed.text.startswith(":")
    print(repr(healed.text), repr(unhealed.text))


def test_real_model_speculative_flag_gives_the_engine_output(local_model_float):
    from sgl.backends.local import LocalModel

    text = ("Alice Smith, 34, lives at 12 Oak Street in Springfield and works as a nurse. "
            "Her email is alice.smith@example.com.")
    before, after = local_model_float.role_text("user", "")
    prompt = (before + f"Copy the person's details from this text as JSON.\n\n{text}" + after
              + local_model_float.role_text("assistant", "")[0])
    req = GenerateRequest(prompt, SamplingParams(max_tokens=40, temperature=0, stop=["email"]))
    spec = LocalModel(speculative="ngram", weights="float")
    try:
        fast, plain = spec.generate(req), local_model_float.generate(req)
    finally:
        spec.engine.close()
    assert fast.text == plain.text and fast.finish_reason == plain.finish_reason
    assert fast.meta["accepted_draft_tokens"] > 0
    assert fast.meta["forward_passes"] < len(fast.token_ids)
    with pytest.raises(ValueError, match="early_exit"):
        LocalModel(speculative="early_exit:99")


def test_the_scheduler_is_bookkeeping_only():
    """No tensor work in the scheduler (nano-vllm's split): torch stays in the runner and the step."""
    import ast
    import inspect

    from sgl.engine import scheduler

    tree = ast.parse(inspect.getsource(scheduler))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"torch", "numpy"}
    # nor indexing of the step's logits: the runner, the acceptor or the pairing take the batch's logits and the row
    indexed = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Subscript)
               and isinstance(node.value, ast.Name) and node.value.id == "logits"]
    assert indexed == [], f"logits indexed in the scheduler at lines {indexed}"
