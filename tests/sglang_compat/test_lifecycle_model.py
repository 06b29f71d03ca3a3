"""SGLang's lifecycle on the real SmolLM2 model: ``sgl.Runtime`` / ``sgl.Engine`` with
``set_default_backend``, ``token_usage``, ``flush_cache``, ``get_server_info``,
``f.cache()`` / ``f.pin()`` warming the prefix cache, and ``shutdown()`` (the last line
of every SGLang ``local_example_*`` script)."""

from __future__ import annotations

import pytest

import sgl
from sgl.backends.base import GenerateRequest
from sgl.types import SamplingParams

pytestmark = pytest.mark.slow

SHARED = ("You are a careful assistant. Answer each question in one short sentence, "
          "without any introduction, and stop after the answer.\n")


@sgl.function
def qa(s, question):
    s += SHARED
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=4, temperature=0)


def test_runtime_as_default_backend_and_shutdown(model_package):
    before = sgl.global_config.default_backend
    runtime = sgl.Runtime(log_level="error", disable_radix_cache=False, context_length=1024)
    try:
        sgl.set_default_backend(runtime)
        assert sgl.global_config.default_backend is runtime
        runtime.endpoint.token_usage.reset()
        state = qa.run(question="What is 2+2?")
        assert isinstance(state["answer"], str)
        usage = runtime.token_usage
        meta = state.get_meta_info("answer")
        assert usage.prompt_tokens == meta["prompt_tokens"] > 0
        assert usage.completion_tokens == meta["completion_tokens"] > 0

        info = sgl.get_server_info()
        assert info["backend"] == "LocalModel" and info["context_length"] == 1024
        assert info["disable_radix_cache"] is False and "prefix_hit_rate" in info["stats"]
        tok = runtime.get_tokenizer()
        assert tok.decode(tok.encode("hello world")) == "hello world"
    finally:
        sgl.set_default_backend(before)
        runtime.shutdown()
    with pytest.raises(sgl.BackendError, match="closed"):
        qa.run(question="again?", backend=runtime)


def test_unknown_server_arguments_are_refused():
    with pytest.raises(TypeError, match="no_such_flag"):
        sgl.Runtime(no_such_flag=1)
    with pytest.raises(ValueError, match="one device"):
        sgl.Runtime(tp_size=2)


def _cached_tokens(model, prompt: str) -> int:
    result = model.generate(GenerateRequest(prompt, SamplingParams(max_tokens=1, temperature=0)))
    return result.meta["cached_tokens"]


def test_flush_cache_empties_the_prefix_cache(model):
    prompt = SHARED + "Q: What is the capital of Peru?\nA:"
    _cached_tokens(model, prompt)
    assert _cached_tokens(model, prompt) > 0
    assert sgl.flush_cache(model) is True
    assert _cached_tokens(model, prompt) == 0


def test_cache_prefills_the_program_prefix(model):
    sgl.flush_cache(model)
    prefix = qa.cache(model)
    assert prefix == SHARED + "Q: "
    state = qa.run(question="Why is the sky blue?", backend=model)
    n_prefix = len(model.encode(prefix))
    block = model.engine.pool.block_size
    assert state.get_meta_info("answer")["cached_tokens"] == n_prefix // block * block > 0


def test_pin_keeps_the_prefix_through_eviction_until_unpin(model):
    sgl.flush_cache(model)
    pinned = qa.pin(model)
    assert pinned.cached_tokens > 0
    sgl.flush_cache(model)  # pinned blocks are not evictable
    prompt = SHARED + "Q: Name a fruit.\nA:"
    assert _cached_tokens(model, prompt) >= pinned.cached_tokens
    qa.unpin()
    sgl.flush_cache(model)
    assert _cached_tokens(model, prompt) == 0


def test_engine_generate_like_sglang(model_package):
    engine = sgl.Engine()
    try:
        out = engine.generate("The capital of France is", {"max_new_tokens": 3, "temperature": 0})
        assert isinstance(out["text"], str)
        assert out["meta_info"]["completion_tokens"] == 3
        assert out["meta_info"]["finish_reason"]["type"] == "length"
        outs = engine.generate(["1, 2, 3,", "a, b, c,"],
                               {"max_new_tokens": 2, "temperature": 0, "regex": "[0-9 ,]+"})
        assert len(outs) == 2 and all(set(o["text"]) <= set("0123456789 ,") for o in outs)
        with pytest.raises(ValueError, match="unknown sampling_params"):
            engine.generate("x", {"bogus": 1})
        # n samples per prompt, flat and in prompt order, as SGLang returns them
        outs = engine.generate(["1, 2, 3,", "a, b, c,"],
                               {"max_new_tokens": 3, "temperature": 1.0, "n": 3, "regex": "[0-9a-z ,]+"})
        assert len(outs) == 6 and all(o["meta_info"]["completion_tokens"] <= 3 for o in outs)
        with pytest.raises(ValueError, match="positive integer"):
            engine.generate("x", {"n": 0})
    finally:
        engine.shutdown()
