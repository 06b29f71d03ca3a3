"""Speculative decoding: greedy output equals plain greedy, sampled output has the
target's distribution (chi-square), drafters stay in sync, bad input is refused.

Tiny random models (11-token vocabulary) check the mechanics and the distribution
fast; the real default model (SmolLM2-135M-Instruct) checks greedy equality and that
n-gram drafts get accepted on an extraction prompt.
"""

from __future__ import annotations

import math

import pytest
import torch

from sgl.engine.llama import Llama, LlamaConfig
from sgl.engine.sampler import Sampler
from sgl.engine.speculative import (
    Draft,
    EarlyExitDrafter,
    ModelDrafter,
    NgramDrafter,
    SpecResult,
    plain_generate,
    sampling_probs,
    speculative_generate,
)

V = 11  # tiny vocabulary: ten letters a..j and EOS
EOS = 10

# --------------------------------------------------------------------- tiny models


def tiny_state(seed: int, config: LlamaConfig, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """Random weights; ``scale`` gives next-token entropies around 2 nats (of ln 11 = 2.4)."""
    c = config
    g = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    q, kv, h, m = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, 16, 32
    state = {"model.embed_tokens.weight": w(c.vocab_size, h), "model.norm.weight": 1 + w(h) * 0.1}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        state |= {
            p + "input_layernorm.weight": 1 + w(h) * 0.1, p + "post_attention_layernorm.weight": 1 + w(h) * 0.1,
            p + "self_attn.q_proj.weight": w(q, h), p + "self_attn.k_proj.weight": w(kv, h),
            p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, q),
            p + "mlp.gate_proj.weight": w(m, h), p + "mlp.up_proj.weight": w(m, h),
            p + "mlp.down_proj.weight": w(h, m),
        }
    return state


def tiny_config(vocab: int = V, layers: int = 2) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=8, rope_theta=100.0)


def tiny_model(seed: int, vocab: int = V) -> Llama:
    c = tiny_config(vocab)
    return Llama(c, tiny_state(seed, c))


@pytest.fixture(scope="module")
def target() -> Llama:
    return tiny_model(1)


@pytest.fixture(scope="module")
def draft_model() -> Llama:
    """The target with noise added: close enough to accept often, different enough to reject."""
    c = tiny_config()
    noise = tiny_state(2, c)
    state = {name: w + 0.3 * noise[name] for name, w in tiny_state(1, c).items()}
    return Llama(c, state)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny models are all overhead, and on a shared 2-core machine the
    real model ran ~5x faster too (two threads stall whenever one core is busy elsewhere)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_vocab():
    from sgl.constrain import Vocabulary

    return Vocabulary([bytes([ord("a") + i]) for i in range(10)] + [None], (EOS,), frozenset({EOS}))


def greedy() -> Sampler:
    return Sampler(temperature=0.0)


PROMPTS = [[1, 2, 3, 4, 1, 2, 3], [5, 5, 6, 7, 8, 9, 0, 5, 6], [3]]


def drafters(target: Llama, draft_model: Llama) -> dict[str, object]:
    return {
        "model": ModelDrafter(draft_model),
        "self": ModelDrafter(target),
        "early-exit": EarlyExitDrafter(target, 1),
        "ngram": NgramDrafter(n=2),
    }


# --------------------------------------------------------------- greedy: mechanics


@pytest.mark.parametrize("k", [1, 3, 6])
def test_tiny_greedy_equals_plain(target, draft_model, k):
    for prompt in PROMPTS:
        ref = plain_generate(target, prompt, 20, greedy(), eos_ids=())
        assert len(ref.token_ids) == 20 and ref.forward_passes == 20
        for name, d in drafters(target, draft_model).items():
            out = speculative_generate(target, d, prompt, 20, greedy(), eos_ids=(), k=k)
            assert out.token_ids == ref.token_ids, (name, prompt)
            assert out.finish_reason == "length"
            assert out.accepted <= out.proposed
            # every pass emits the accepted drafts plus one token
            assert len(out.token_ids) == out.forward_passes + out.accepted, name


def test_self_drafting_accepts_everything(target):
    out = speculative_generate(target, ModelDrafter(target), [1, 2, 3], 21, greedy(), eos_ids=(), k=4)
    assert out.acceptance_rate == 1.0
    assert out.forward_passes == 5  # 4 drafts + 1 bonus token per pass, 21 tokens


def test_tiny_greedy_stops_at_eos_and_stop_tokens(target, draft_model):
    ref = plain_generate(target, PROMPTS[0], 20, greedy(), eos_ids=())
    end = ref.token_ids[5]
    for ends in ({"eos_ids": (end,)}, {"eos_ids": (), "stop_token_ids": (end,)}):
        plain = plain_generate(target, PROMPTS[0], 20, greedy(), **ends)
        cut = plain.token_ids.index(end) + 1
        assert plain.token_ids == ref.token_ids[:cut]
        assert plain.finish_reason == ("eos" if ends["eos_ids"] else "stop")
        for d in drafters(target, draft_model).values():
            out = speculative_generate(target, d, PROMPTS[0], 20, greedy(), k=4, **ends)
            assert (out.token_ids, out.finish_reason) == (plain.token_ids, plain.finish_reason)


def test_tiny_greedy_with_matcher(target, draft_model, tiny_vocab):
    from sgl.constrain import Matcher, compile_regex

    compiled = compile_regex("(ab|c[d-g])+h?(ij)*", tiny_vocab)
    for prompt in PROMPTS:
        ref = plain_generate(target, prompt, 16, greedy(), (EOS,), matcher=Matcher(compiled))
        assert ref.finish_reason in ("eos", "stop", "length")
        for name, d in drafters(target, draft_model).items():
            m = Matcher(compiled)
            out = speculative_generate(target, d, prompt, 16, greedy(), (EOS,), k=3, matcher=m)
            assert (out.token_ids, out.finish_reason) == (ref.token_ids, ref.finish_reason), name
            assert m.num_tokens == len(out.token_ids)


def test_speculative_and_plain_requests_share_the_engine_batch(target, draft_model):
    """Issue 10: drafts are verified in the engine's batch, beside other requests."""
    from sgl.engine.request import SeqRequest
    from sgl.engine.scheduler import Engine, EngineConfig
    from sgl.engine.speculative import Speculation
    from sgl.types import SamplingParams

    engine = Engine(target, [None] * V, (), EngineConfig(kv_budget_mb=1, prefix_cache=False, jump_forward=False))
    try:
        spec = Speculation(ModelDrafter(draft_model), k=3)
        reqs = [SeqRequest(PROMPTS[0], SamplingParams(max_tokens=20), sampler=greedy(), acceptor=spec),
                SeqRequest(PROMPTS[1], SamplingParams(max_tokens=20), sampler=greedy())]
        outs = engine.generate(reqs)
        steps = engine.stats.steps
    finally:
        engine.close()
    assert outs[0].token_ids == plain_generate(target, PROMPTS[0], 20, greedy(), eos_ids=()).token_ids
    assert outs[1].token_ids == plain_generate(target, PROMPTS[1], 20, greedy(), eos_ids=()).token_ids
    assert outs[0].meta["forward_passes"] == spec.forward_passes and spec.accepted > 0
    # both in the same forward passes (generate submits them together): the plain request's
    # 20, not the sum
    assert steps == 20 < 20 + spec.forward_passes


def _engine_run(target, reqs, max_running=32):
    """Outputs of ``reqs`` run together in one engine, and its draft-model forward count."""
    from sgl.engine.scheduler import Engine, EngineConfig

    engine = Engine(target, [None] * V, (), EngineConfig(kv_budget_mb=1, prefix_cache=False, jump_forward=False,
                                                        max_running=max_running))
    try:
        return engine.generate(reqs), engine.stats.draft_steps
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["model", "early-exit"])
def test_draft_model_steps_are_batched_across_sequences(target, draft_model, kind):
    """Issue 10: the sequences drafting from one draft model run its forwards together,
    one batched step per draft position, not one sequence at a time beside the batch."""
    from sgl.engine.request import SeqRequest
    from sgl.engine.speculative import Speculation
    from sgl.types import SamplingParams

    def make():
        return ModelDrafter(draft_model) if kind == "model" else EarlyExitDrafter(target, 1)

    def request(prompt):
        return SeqRequest(prompt, SamplingParams(max_tokens=20), sampler=greedy(), acceptor=Speculation(make(), k=3))

    alone = [_engine_run(target, [request(p)]) for p in PROMPTS]
    together, draft_steps = _engine_run(target, [request(p) for p in PROMPTS])
    for prompt, (out, _), both in zip(PROMPTS, alone, together, strict=True):
        ref = plain_generate(target, prompt, 20, greedy(), eos_ids=())
        assert out[0].token_ids == both.token_ids == ref.token_ids
    separate = sum(steps for _, steps in alone)
    # one at a time, each sequence costs its own draft forwards; batched, the three share them
    assert draft_steps <= max(steps for _, steps in alone) + 4 < separate
    # more requests than running slots: sequences leave and join, their draft KV is reused
    outs, _ = _engine_run(target, [request(p) for p in PROMPTS * 3], max_running=2)
    assert [o.token_ids for o in outs] == [o.token_ids for o in together * 3]


def test_a_draft_model_failure_ends_only_its_request(target):
    """A draft model that cannot run (here: a wrong width) fails its requests, not the batch."""
    from sgl.engine.request import SeqRequest
    from sgl.engine.speculative import Speculation
    from sgl.types import SamplingParams

    c = tiny_config()
    broken = Llama(c, tiny_state(4, c))
    broken.embed = broken.embed[:, :8]  # hidden size 8 in a 16-wide model: its forward raises
    reqs = [SeqRequest(PROMPTS[0], SamplingParams(max_tokens=8), sampler=greedy(),
                       acceptor=Speculation(ModelDrafter(broken), k=2)),
            SeqRequest(PROMPTS[1], SamplingParams(max_tokens=8), sampler=greedy())]
    outs, _ = _engine_run(target, reqs)
    assert outs[0].finish_reason == "error" and "drafting failed" in outs[0].meta["error"]
    assert outs[1].token_ids == plain_generate(target, PROMPTS[1], 8, greedy(), eos_ids=()).token_ids


def test_speculative_requests_keep_logprobs_penalties_and_min_tokens(target, draft_model):
    """Verification is the engine's step: bans, penalties and logprobs as for a plain request."""
    from sgl.engine.request import SeqRequest
    from sgl.engine.scheduler import Engine, EngineConfig
    from sgl.engine.speculative import Speculation
    from sgl.types import SamplingParams

    params = SamplingParams(max_tokens=16, temperature=0.0, logprobs=True, top_logprobs=2, min_tokens=6,
                            repetition_penalty=1.3)
    engine = Engine(target, [None] * V, (EOS,), EngineConfig(kv_budget_mb=1, jump_forward=False))
    try:
        for prompt in PROMPTS:
            plain = engine.generate([SeqRequest(prompt, params)])[0]
            spec = Speculation(ModelDrafter(draft_model), k=3)
            fast = engine.generate([SeqRequest(prompt, params, acceptor=spec)])[0]
            assert fast.token_ids == plain.token_ids and fast.finish_reason == plain.finish_reason
            assert fast.logprobs == pytest.approx(plain.logprobs, abs=1e-4)
            assert [[t for t, _ in top] for top in fast.top_logprobs] == [[t for t, _ in top] for top in plain.top_logprobs]
            assert spec.proposed > 0
    finally:
        engine.close()


def test_zero_max_tokens(target):
    out = speculative_generate(target, NgramDrafter(), [1, 2], 0, greedy(), ())
    assert out.token_ids == [] and out.finish_reason == "length" and out.forward_passes == 0


# ---------------------------------------------------------------------- n-gram lookup


def test_ngram_lookup_latest_occurrence_and_fallback():
    d = NgramDrafter(n=3)
    h = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 4, 1, 2, 3]
    assert d.lookup(h, 3) == [7, 8, 4]  # the latest earlier "1 2 3", not the first
    assert d.lookup([5, 6, 7, 6, 8, 7], 2) == [6, 8]  # no "6 8 7" nor "8 7": falls back to "7"
    assert d.lookup([1, 2, 3], 4) == []
    assert d.lookup([4], 4) == []
    assert NgramDrafter(n=2, min_n=2).lookup([5, 6, 7, 6, 8, 7], 2) == []
    with pytest.raises(ValueError):
        NgramDrafter(n=2, min_n=3)


def test_ngram_stops_at_the_first_token_the_matcher_refuses(tiny_vocab):
    from sgl.constrain import Matcher, compile_regex

    m = Matcher(compile_regex("[a-c]+d", tiny_vocab))
    h = [0, 1, 2, 5, 0, 1]  # "abcf" then "ab": proposes "c f", but "f" is refused
    draft = NgramDrafter(n=2).propose(h, 4, greedy(), matcher=m)
    assert draft.tokens == [2] and draft.q is None
    assert m.num_tokens == 0  # probed on a copy


# ------------------------------------------------------------------------ bad input


def test_drafter_vocab_mismatch_is_refused(target):
    other = tiny_model(3, vocab=V + 1)
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, ModelDrafter(other), [1, 2], 5, greedy(), ())


def test_bad_arguments(target):
    with pytest.raises(ValueError, match="n_layers"):
        EarlyExitDrafter(target, 2)
    with pytest.raises(ValueError, match="k must"):
        speculative_generate(target, NgramDrafter(), [1], 5, greedy(), (), k=0)
    with pytest.raises(ValueError, match="prompt"):
        speculative_generate(target, NgramDrafter(), [], 5, greedy(), ())


# ---------------------------------------------------------------- distribution tests


def chi2_critical(df: int, alpha_z: float = 3.0902) -> float:
    """Upper critical value of chi-square (Wilson–Hilferty); z=3.0902 is alpha = 0.001."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + alpha_z * math.sqrt(a)) ** 3


def pair_distribution(model: Llama, prompt: list[int], sampler: Sampler) -> torch.Tensor:
    """The exact probability of each first two tokens ``[V, V]`` under ``sampler``."""
    with torch.inference_mode():
        first = model.forward(torch.tensor([prompt]), model.new_cache(16))[0]
        p1 = sampling_probs(sampler, first)
        rows = [sampling_probs(sampler, model.forward(torch.tensor([[*prompt, a]]), model.new_cache(16))[0])
                for a in range(V)]
    return p1[:, None] * torch.stack(rows)


def chi_square(counts: torch.Tensor, probs: torch.Tensor, n: int) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; cells expecting < 5 are pooled."""
    expected = probs.flatten().double() * n
    counts = counts.flatten().double()
    assert counts[expected == 0].sum() == 0, "a token the target never samples was generated"
    small = (expected < 5) & (expected > 0)
    obs = torch.cat([counts[expected >= 5], counts[small].sum()[None]])
    exp = torch.cat([expected[expected >= 5], expected[small].sum()[None]])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(((obs - exp) ** 2 / exp).sum()), len(exp) - 1


def sample_pairs(target: Llama, make_drafter, prompt: list[int], sampler: Sampler, n: int,
                 k: int = 2) -> tuple[torch.Tensor, SpecResult]:
    """Count the first two tokens of ``n`` speculative generations; also sum the counters."""
    counts = torch.zeros(V, V)
    total = SpecResult()
    for _ in range(n):
        # 3 tokens with k=2: two drafts (proposed with the prompt's prefill) are verified, and
        # the third is the bonus position
        out = speculative_generate(target, make_drafter(), prompt, 3, sampler, (), k=k)
        counts[out.token_ids[0], out.token_ids[1]] += 1
        total.proposed += out.proposed
        total.accepted += out.accepted
    return counts, total


# 2000 samples keep the suite fast and still have ample power: with the residual
# step broken (sampling from p instead of max(0, p - q)) the statistic was ~620
# against a critical value of ~130.
N_SAMPLES = 2000


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.8, top_k=5, top_p=0.95)],
                         ids=["t1", "topk-topp"])
def test_rejection_sampling_matches_target_distribution(target, draft_model, settings):
    prompt = [1, 4]
    sampler = Sampler(seed=1234, **settings)
    counts, total = sample_pairs(target, lambda: ModelDrafter(draft_model), prompt, sampler, N_SAMPLES)
    # the draft model differs, so rejections (the residual path) must have happened
    assert 0 < total.accepted < total.proposed * 0.9
    stat, df = chi_square(counts, pair_distribution(target, prompt, sampler), N_SAMPLES)
    assert stat < chi2_critical(df), (stat, df)


def test_ngram_point_mass_drafts_match_target_distribution(target):
    prompt = [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]  # the lookup proposes "3 4"
    sampler = Sampler(temperature=1.0, seed=99)
    counts, total = sample_pairs(target, lambda: NgramDrafter(n=2), prompt, sampler, N_SAMPLES)
    assert total.proposed >= 2 * N_SAMPLES and 0 < total.accepted < total.proposed
    stat, df = chi_square(counts, pair_distribution(target, prompt, sampler), N_SAMPLES)
    assert stat < chi2_critical(df), (stat, df)


def test_chi_square_detects_a_wrong_distribution(target, draft_model):
    """The test has power: accepting every draft (no rejection step) must fail it."""
    prompt = [1, 4]
    sampler = Sampler(temperature=1.0, seed=5)
    counts = torch.zeros(V, V)
    d = ModelDrafter(draft_model)
    for _ in range(N_SAMPLES // 3):
        d.start(target, prompt)
        draft = d.propose(prompt, 2, sampler)
        counts[draft.tokens[0], draft.tokens[1]] += 1
    stat, df = chi_square(counts, pair_distribution(target, prompt, sampler), N_SAMPLES // 3)
    assert stat > chi2_critical(df)


def test_chi2_critical_is_close_to_tables():
    # chi-square 0.999 quantiles: df=10 -> 29.588, df=50 -> 86.661, df=100 -> 149.449
    for df, table in ((10, 29.588), (50, 86.661), (100, 149.449)):
        assert chi2_critical(df) == pytest.approx(table, rel=0.01)


def test_draft_q_is_the_distribution_sampled_from(draft_model, target):
    sampler = Sampler(temperature=0.7, top_k=5, seed=3)
    d = ModelDrafter(draft_model)
    d.start(target, [1, 2, 3])
    draft: Draft = d.propose([1, 2, 3], 3, sampler)
    assert draft.q is not None and draft.q.shape == (3, V)
    torch.testing.assert_close(draft.q.sum(-1), torch.ones(3))
    assert all(draft.q[i, t] > 0 for i, t in enumerate(draft.tokens))
    assert int((draft.q[0] > 0).sum()) <= 5


# ---------------------------------------------------------------------- real model


def chat(lm, question: str) -> list[int]:
    user = lm.role_text("user", question)
    return lm.encode(user[0] + question + user[1] + lm.role_text("assistant", "")[0])


EXTRACTION = (
    "Here is a note: 'Marie Dubois, born 12 March 1984 in Lyon, works as a data engineer at "
    "Acme Robotics in Zurich. Email: marie.dubois@acme-robotics.ch.' "
    "Copy her full name, city of birth, employer and email from the note."
)


def real_drafters(lm) -> dict[str, object]:
    return {
        "ngram": NgramDrafter(n=3),
        "early-exit": EarlyExitDrafter(lm.model, 20),
        "self": ModelDrafter(lm.model),
    }


def test_real_greedy_equals_plain_extraction(local_model_float):
    prompt = chat(local_model_float, EXTRACTION)
    ref = plain_generate(local_model_float.model, prompt, 32, greedy(), local_model_float.eos_token_ids)
    assert "Dubois" in local_model_float.decode(ref.token_ids)
    for name, d in real_drafters(local_model_float).items():
        k = 2 if name == "early-exit" else 5  # early exit rarely agrees: short drafts are cheaper
        out = speculative_generate(local_model_float.model, d, prompt, 32, greedy(), local_model_float.eos_token_ids, k=k)
        assert (out.token_ids, out.finish_reason) == (ref.token_ids, ref.finish_reason), name
        if name == "ngram":
            assert out.acceptance_rate > 0.3 and out.forward_passes < ref.forward_passes
        if name == "self":
            assert out.acceptance_rate > 0.9


def test_real_greedy_equals_plain_open_prompt(local_model_float):
    prompt = chat(local_model_float, "Write one sentence about the sea.")
    ref = plain_generate(local_model_float.model, prompt, 24, greedy(), local_model_float.eos_token_ids)
    for name, d in real_drafters(local_model_float).items():
        if name == "self":
            continue  # covered above; the slowest drafter
        out = speculative_generate(local_model_float.model, d, prompt, 24, greedy(), local_model_float.eos_token_ids, k=2)
        assert out.token_ids == ref.token_ids, name


def test_real_greedy_with_json_schema(local_model_float):
    from sgl.constrain import Matcher, compile_json_schema

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "city": {"type": "string"}},
              "required": ["name", "city"], "additionalProperties": False}
    compiled = compile_json_schema(schema, local_model_float.vocab)
    prompt = chat(local_model_float, EXTRACTION.replace("Copy her full name, city of birth, employer and email",
                                           "Give her name and city of birth as JSON"))
    ref = plain_generate(local_model_float.model, prompt, 32, greedy(), local_model_float.eos_token_ids, matcher=Matcher(compiled))
    assert ref.finish_reason in ("stop", "eos", "length")
    for name, d in real_drafters(local_model_float).items():
        if name == "self":
            continue
        out = speculative_generate(local_model_float.model, d, prompt, 32, greedy(), local_model_float.eos_token_ids, k=3,
                                   matcher=Matcher(compiled))
        assert (out.token_ids, out.finish_reason) == (ref.token_ids, ref.finish_reason), name
        if name == "ngram":
            assert out.accepted > 0


def test_real_draft_model_requests_draft_together_in_the_engine(local_model_float):
    """Issue 10: `LocalModel(speculative=<draft model path>)` (the packaged model drafting
    for itself): concurrent requests give plain greedy's output, and the draft model's
    forwards are shared by the sequences, not run per sequence."""
    from sgl.backends.base import GenerateRequest
    from sgl.backends.local import LocalModel
    from sgl.types import SamplingParams

    questions = [EXTRACTION, "Write one sentence about the sea.", "Name three primary colours."]
    prompts = [local_model_float.decode_prompt(chat(local_model_float, q)) for q in questions]
    reqs = [GenerateRequest(p, SamplingParams(max_tokens=24, temperature=0)) for p in prompts]
    k = 4
    spec = LocalModel(local_model_float.path, weights="float", kv_budget_mb=64, speculative=str(local_model_float.path),
                      speculative_k=k, prefix_cache=False)
    try:
        fast = spec.generate_batch(reqs)
        draft_steps = spec.get_stats()["draft_steps"]
    finally:
        spec.close()
    plain = local_model_float.generate_batch(reqs)
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    passes = [r.meta["forward_passes"] for r in fast]
    assert all(r.meta["accepted_draft_tokens"] > 0.9 * r.meta["draft_tokens"] for r in fast)
    # one sequence at a time would take up to k draft forwards per pass of each sequence
    print(passes, draft_steps)
    assert draft_steps <= k * (max(passes) + 1) < k * sum(passes)
