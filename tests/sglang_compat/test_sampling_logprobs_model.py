"""SGLang's sampling arguments and logprobs on the real SmolLM2 model: ``ignore_eos``,
``max_tokens=0``, ``frequency_penalty`` / ``presence_penalty``, ``gen(n=...)``,
``return_logprob`` with ``top_logprobs_num`` / ``logprob_start_len`` /
``return_text_in_logprobs``, and select's meta. Temperature 0; the assertions are
about API behaviour and consistency, not answer quality."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

import sgl
from sgl.backends.base import GenerateRequest
from sgl.engine.sampler import Sampler
from sgl.types import SamplingParams

pytestmark = pytest.mark.slow


def test_sampler_penalties_follow_the_openai_definition():
    sampler = Sampler(temperature=0, frequency_penalty=0.5, presence_penalty=0.25)
    logits = torch.zeros(5)
    sampler.apply_penalties(logits, [1, 1, 3])
    assert logits.tolist() == [0.0, -(2 * 0.5 + 0.25), 0.0, -(0.5 + 0.25), 0.0]
    with pytest.raises(ValueError, match="frequency_penalty"):
        Sampler(frequency_penalty=2.5)


def _chat(model, text: str) -> str:
    pre_u, suf_u = model.role_text("user", "")
    pre_a, _ = model.role_text("assistant", "")
    return pre_u + text + suf_u + pre_a


def test_ignore_eos_runs_to_max_tokens(model):
    prompt = _chat(model, "Reply with one word: yes or no. Is water wet?")
    base = model.generate(GenerateRequest(prompt, SamplingParams(max_tokens=24, temperature=0)))
    assert base.finish_reason == "eos"  # the model ends its short answer by itself
    forced = model.generate(GenerateRequest(prompt, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)))
    assert forced.finish_reason == "length" and len(forced.token_ids) == 24
    assert not set(forced.token_ids) & set(model.eos_token_ids)


def test_frequency_penalty_reduces_repetition(model):
    prompt = "1, 1, 1, 1, 1, 1, 1, 1, 1, 1,"

    def most_repeated(**penalties) -> int:
        r = model.generate(GenerateRequest(prompt, SamplingParams(max_tokens=16, temperature=0, **penalties)))
        return Counter(r.token_ids).most_common(1)[0][1]

    plain = most_repeated()
    assert plain >= 5  # greedy decoding keeps repeating
    assert most_repeated(frequency_penalty=2.0) < plain
    # presence_penalty's effect is shown exactly by the sampler test above
    assert most_repeated(presence_penalty=0.0) == plain


def test_max_tokens_zero_reads_the_prompt_only(model):
    @sgl.function
    def prog(s):
        s += "A long enough shared prefix for one cache block, then a question: what is two plus two?"
        s += sgl.gen("nothing", max_tokens=0)

    state = prog.run(backend=model)
    assert state["nothing"] == ""
    meta = state.get_meta_info("nothing")
    assert meta["finish_reason"] == "length" and meta["completion_tokens"] == 0
    assert prog.run(backend=model).get_meta_info("nothing")["cached_tokens"] > 0


def test_gen_n_gives_a_list_and_the_text_continues_with_the_first(model):
    @sgl.function
    def prog(s):
        s += "Pick a number: " + sgl.gen("x", n=3, max_tokens=3, temperature=1.0, seed=7, dtype=int)
        s += " and " + sgl.gen("y", max_tokens=2, temperature=0)

    state = prog.run(backend=model)
    values = state["x"]
    assert isinstance(values, list) and len(values) == 3 and all(isinstance(v, int) for v in values)
    assert state.text().startswith(f"Pick a number: {values[0]} and ")
    metas = state.get_meta_info("x")
    assert isinstance(metas, list) and len(metas) == 3
    assert prog.run(backend=model)["x"] == values  # seeded: sample i uses seed + i


def test_gen_logprobs_like_sglang_meta_info(model):
    @sgl.function
    def prog(s):
        s += "The capital of France is"
        s += sgl.gen("a", max_tokens=5, temperature=0, return_logprob=True, top_logprobs_num=3,
                     logprob_start_len=0, return_text_in_logprobs=True)

    state = prog.run(backend=model)
    meta = state.get_meta_info("a")
    out = meta["output_token_logprobs"]
    assert len(out) == meta["completion_tokens"] == 5
    # token healing: the first token may re-write the prompt's last word (" is")
    assert "".join(text for _, _, text in out).endswith(state["a"])
    for (lp, tok, _), top in zip(out, meta["output_top_logprobs"], strict=True):
        assert lp <= 0 and len(top) == 3
        best_lp, best_tok, _ = top[0]
        assert best_tok == tok and math.isclose(best_lp, lp, abs_tol=1e-4)  # greedy took the top token
        assert [t[0] for t in top] == sorted((t[0] for t in top), reverse=True)
    inputs = meta["input_token_logprobs"]
    assert len(inputs) == len(model.encode("The capital of France is")) and inputs[0][0] is None
    assert all(lp <= 0 for lp, _, _ in inputs[1:])
    assert meta["normalized_prompt_logprob"] == pytest.approx(sum(lp for lp, _, _ in inputs[1:]) / (len(inputs) - 1))
    assert len(meta["input_top_logprobs"]) == len(inputs)


def test_logprob_start_len_and_no_text(model):
    @sgl.function
    def prog(s):
        s += "One two three four"
        s += sgl.gen("a", max_tokens=2, temperature=0, return_logprob=True, logprob_start_len=2)

    meta = prog.run(backend=model).get_meta_info("a")
    assert len(meta["input_token_logprobs"]) == len(model.encode("One two three four")) - 2
    assert all(text is None for _, _, text in meta["output_token_logprobs"])
    assert "output_top_logprobs" not in meta


def test_constrained_gen_logprobs_mark_forced_tokens(model):
    @sgl.function
    def prog(s):
        s += "JSON: " + sgl.gen("j", json_schema={"type": "object", "properties": {"a": {"type": "integer"}},
                                                   "required": ["a"]},
                                 max_tokens=20, temperature=0, return_logprob=True)

    meta = prog.run(backend=model).get_meta_info("j")
    lps = [lp for lp, _, _ in meta["output_token_logprobs"]]
    assert len(lps) == meta["completion_tokens"] and all(lp <= 0 for lp in lps)
    assert meta.get("forced_tokens", 0) == 0 or 0.0 in lps  # jump-forward text has logprob 0


def test_select_meta_has_sglang_token_logprobs(model):
    @sgl.function
    def prog(s):
        s += "Is the sky blue? Answer:" + sgl.select("x", [" Yes", " No", " Maybe not"])

    meta = prog.run(backend=model).get_meta_info("x")
    choices = [" Yes", " No", " Maybe not"]
    assert meta["normalized_prompt_logprobs"] == pytest.approx(meta["scores"])
    for choice, tokens in zip(choices, meta["input_token_logprobs"], strict=True):
        assert tokens and "".join(text for _, _, text in tokens).endswith(choice)
        assert all(lp <= 0 and isinstance(tok, int) for lp, tok, _ in tokens)
    assert meta["output_token_logprobs"] == [[], [], []]


def test_select_unconditional_meta(model):
    @sgl.function
    def prog(s):
        s += "Q: Pick a color.\nA:" + sgl.select("x", [" red", " green"],
                                                 choices_method=sgl.unconditional_likelihood_normalized)

    meta = prog.run(backend=model).get_meta_info("x")
    unc = meta["unconditional_token_logprobs"]
    assert [len(u) for u in unc] == [len(t) for t in meta["input_token_logprobs"]]
    assert all(u[0][0] is None for u in unc)


def test_engine_generate_with_logprobs(model_package):
    engine = sgl.Engine()
    try:
        out = engine.generate("Hello", {"max_new_tokens": 2, "temperature": 0}, return_logprob=True,
                              top_logprobs_num=2, logprob_start_len=0, return_text_in_logprobs=True)
        meta = out["meta_info"]
        assert len(meta["output_token_logprobs"]) == 2 and len(meta["output_top_logprobs"]) == 2
        assert meta["input_token_logprobs"][0][0] is None
    finally:
        engine.shutdown()
