"""The local engine: model runner, KV cache, sampler, decode loop and `LocalModel`.

Small random models check the mechanics (cache, padding, rotary, loading); the real
default model (SmolLM2-135M-Instruct, converted once) checks behaviour at temperature 0;
transformers, when installed, checks the numbers.
"""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest
import torch

from sgl.backends.base import GenerateRequest
from sgl.constrain import apply_bitmask
from sgl.constrain.bitmask import unpack_bitmask
from sgl.engine.llama import KVCache, Llama, LlamaConfig, interleave_rotary, rope_inv_freq
from sgl.engine.model_loader import unpermute_rotary
from sgl.engine.request import TextTracker
from sgl.engine.sampler import Sampler
from sgl.types import ConstraintSpec, SamplingParams

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(
    not HAS_TRANSFORMERS, reason="transformers is not installed (optional extra: pip install -e .[peers])"
)


# --------------------------------------------------------------------- tiny models


def tiny_config(**kw) -> LlamaConfig:
    base = dict(vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=6, num_key_value_heads=2, head_dim=8, rope_theta=500.0)
    base.update(kw)
    return LlamaConfig(**base)


def tiny_state(config: LlamaConfig, bias: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    c = config

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    state = {"model.embed_tokens.weight": w(c.vocab_size, c.hidden_size), "model.norm.weight": 1 + w(c.hidden_size)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        state |= {
            p + "input_layernorm.weight": 1 + w(c.hidden_size),
            p + "post_attention_layernorm.weight": 1 + w(c.hidden_size),
            p + "self_attn.q_proj.weight": w(q, c.hidden_size),
            p + "self_attn.k_proj.weight": w(kv, c.hidden_size),
            p + "self_attn.v_proj.weight": w(kv, c.hidden_size),
            p + "self_attn.o_proj.weight": w(c.hidden_size, q),
            p + "mlp.gate_proj.weight": w(c.intermediate_size, c.hidden_size),
            p + "mlp.up_proj.weight": w(c.intermediate_size, c.hidden_size),
            p + "mlp.down_proj.weight": w(c.hidden_size, c.intermediate_size),
        }
        if bias:
            state |= {p + "self_attn.q_proj.bias": w(q), p + "self_attn.k_proj.bias": w(kv),
                      p + "self_attn.v_proj.bias": w(kv)}
    return state


@pytest.fixture(scope="module")
def tiny() -> Llama:
    c = tiny_config()
    return Llama(c, tiny_state(c))


def test_incremental_decode_matches_full_forward(tiny):
    ids = torch.tensor([[5, 17, 3, 88, 42, 9, 61, 2]])
    full = tiny.forward(ids, tiny.new_cache(16), all_logits=True)[0]
    cache = tiny.new_cache(2)  # too small on purpose: the cache must grow
    steps = [tiny.forward(ids[:, :3], cache, all_logits=True)[0]]
    steps += [tiny.forward(ids[:, i : i + 1], cache, all_logits=True)[0] for i in range(3, 8)]
    torch.testing.assert_close(torch.cat(steps), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 8


def test_rotary_permutation_roundtrip():
    w = torch.arange(4 * 8 * 3, dtype=torch.float32).reshape(32, 3)
    inter = interleave_rotary(w, n_heads=4)
    # Head 0, rows 0..3 (first half) and 4..7 (second half) become pairs (0,4), (1,5), ...
    assert inter[:8, 0].tolist() == [0, 12, 3, 15, 6, 18, 9, 21]
    assert np.array_equal(unpermute_rotary(inter.numpy(), 4), w.numpy())


def test_llama3_rope_scaling_bends_only_long_wavelengths():
    plain = rope_inv_freq(tiny_config(head_dim=64, rope_theta=500000.0))
    scaled = rope_inv_freq(tiny_config(head_dim=64, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}))
    assert torch.equal(scaled[:4], plain[:4])  # short wavelengths: unchanged
    torch.testing.assert_close(scaled[-4:], plain[-4:] / 8)  # long ones: slowed by the factor


# ------------------------------------------------------------------ sampler / text


def test_sampler_greedy_topk_topp_minp_and_seeds():
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0, 2.9])
    assert Sampler(temperature=0).sample(logits.clone()) == 1
    assert Sampler(top_k=1).sample(logits.clone()) == 1
    assert {Sampler(top_p=0.01, seed=s).sample(logits.clone()) for s in range(20)} == {1}
    probs = Sampler(temperature=1.0, top_k=2).probs(logits)
    assert torch.count_nonzero(probs).item() == 2 and probs[1] > probs[4] > 0
    probs = Sampler(min_p=0.5).probs(logits)
    assert set(torch.nonzero(probs).flatten().tolist()) == {1, 4}  # p/p_max: e^-1 ≈ 0.37 < 0.5 drops index 2
    draws = [Sampler(temperature=1.0, seed=7).sample(logits.clone()) for _ in range(3)]
    assert len(set(draws)) == 1
    many = {Sampler(temperature=5.0, seed=s).sample(logits.clone()) for s in range(40)}
    assert len(many) > 1


def test_bitmask_unpacks_and_masks():
    rng = np.random.default_rng(0)
    allowed = rng.random(70) < 0.3
    words = np.zeros((1, 3), dtype=np.uint32)
    for i in np.flatnonzero(allowed):
        words[0, i // 32] |= np.uint32(1 << (i % 32))
    bitmask = words.view(np.int32)
    assert unpack_bitmask(bitmask, 70)[0].tolist() == allowed.tolist()
    logits = torch.zeros(70)
    apply_bitmask(logits, bitmask)
    assert torch.isinf(logits).numpy().tolist() == (~allowed).tolist()


def test_text_tracker_stops_and_multibyte():
    t = TextTracker(stops=("END", "é!"))
    assert t.push(b"caf") is None
    assert t.push(b"\xc3") is None and t.text == "caf"  # half of "é": held in the decoder
    assert t.push(b"\xa9") is None and t.text == "café"
    assert t.stable_len() == 3  # "é" may start the stop string "é!"
    assert t.push(b"!x") == 3  # "é!" found at index 3
    t = TextTracker(stops=("END",))
    t.push(b"abcEN")
    assert t.stable_len() == 3
    assert t.push(b"Dzz") == 3


# --------------------------------------------------------------------- real model


def chat(model, question: str) -> str:
    user = model.role_text("user", question)
    return user[0] + question + user[1] + model.role_text("assistant", "")[0]


def greedy(max_tokens=24, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


def test_role_text_is_chatml(local_model):
    assert local_model.role_text("user", "hi") == ("<|im_start|>user\n", "<|im_end|>\n")
    assert local_model.role_text("system", "x") == ("<|im_start|>system\n", "<|im_end|>\n")
    assert local_model.role_text("assistant", "x") == ("<|im_start|>assistant\n", "<|im_end|>\n")


def test_converted_checkpoint_undoes_gguf_rotary_permutation(local_model):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    reader = GGUFReader(local_model.source)
    raw = next(t for t in reader.tensors if t.name == "blk.3.attn_k.weight")
    gguf_k = dequantize(raw.data, raw.tensor_type)
    with safe_open(str(local_model.path / "model.safetensors"), "pt") as f:
        hf_k = f.get_tensor("model.layers.3.self_attn.k_proj.weight")
    assert not np.array_equal(hf_k.numpy(), gguf_k)
    assert np.array_equal(interleave_rotary(hf_k, local_model.config.num_key_value_heads).numpy(), gguf_k)
    config = json.loads((local_model.path / "config.json").read_text())
    assert config["num_key_value_heads"] == 3 and config["tie_word_embeddings"] is True


def test_greedy_answer_and_determinism(local_model):
    req = GenerateRequest(chat(local_model, "What is the capital of France?"), greedy())
    a, b = local_model.generate(req), local_model.generate(req)
    assert "Paris" in a.text
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.finish_reason == "eos" and a.token_ids[-1] in local_model.eos_token_ids
    assert local_model.decode(a.token_ids) == a.text


def test_seeded_sampling_is_reproducible(local_model):
    prompt = chat(local_model, "Tell me a story.")
    params = SamplingParams(max_tokens=8, temperature=0.9, top_p=0.95, seed=123)
    runs = [local_model.generate(GenerateRequest(prompt, params)).token_ids for _ in range(2)]
    assert runs[0] == runs[1]


def test_max_tokens_and_logprobs(local_model):
    r = local_model.generate(GenerateRequest(chat(local_model, "Write a poem about the sea."), greedy(5, logprobs=True)))
    assert len(r.token_ids) == 5 and r.finish_reason == "length"
    assert len(r.logprobs) == 5 and all(lp <= 0 for lp in r.logprobs)


def test_stop_string_is_cut_and_not_included(local_model):
    prompt = chat(local_model, "Write a poem about the sea.")
    full = local_model.generate(GenerateRequest(prompt, greedy(12))).text
    stop = full.split()[3]
    cut = local_model.generate(GenerateRequest(prompt, greedy(12, stop=(stop,))))
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_min_tokens_delays_eos(local_model):
    prompt = chat(local_model, "What is the capital of France?")
    short = local_model.generate(GenerateRequest(prompt, greedy()))
    longer = local_model.generate(GenerateRequest(prompt, greedy(max_tokens=len(short.token_ids) + 4,
                                                          min_tokens=len(short.token_ids) + 2)))
    assert len(longer.token_ids) >= len(short.token_ids) + 2
    assert not set(longer.token_ids[: len(short.token_ids) + 2]) & set(local_model.eos_token_ids)


def test_stream_and_batch_agree_with_generate(local_model_float):
    local_model = local_model_float  # token for token: bfloat16 rounding differs between batch shapes
    prompts = [chat(local_model, "What is the capital of France?"), "The sky is"]
    deltas = list(local_model.generate_stream(GenerateRequest(prompts[0], greedy(8))))
    singles = [local_model.generate(GenerateRequest(p, greedy(8))) for p in prompts]
    batch = local_model.generate_batch([GenerateRequest(p, greedy(8)) for p in prompts])
    assert [r.token_ids for r in batch] == [r.token_ids for r in singles]
    assert "".join(deltas) == singles[0].text and len(deltas) > 1


def test_regex_constrained_generation(local_model):
    pattern = r"[0-9]{3}-[0-9]{4}"
    r = local_model.generate(GenerateRequest(chat(local_model, "Give me a phone number."), greedy(16),
                                      ConstraintSpec(regex=pattern)))
    assert re.fullmatch(pattern, r.text), r.text
    assert r.finish_reason in ("stop", "eos")


def test_choices_and_json_constraints(local_model):
    r = local_model.generate(GenerateRequest(chat(local_model, "Is the sky blue? Answer yes or no."), greedy(8),
                                      ConstraintSpec(choices=["yes", "no"])))
    assert r.text in ("yes", "no")
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"],
              "additionalProperties": False}
    r = local_model.generate(GenerateRequest(chat(local_model, "How old is Bob? Reply in JSON."), greedy(16),
                                      ConstraintSpec(json_schema=schema)))
    assert r.finish_reason in ("stop", "eos"), r
    assert isinstance(json.loads(r.text)["age"], int)


@pytest.mark.parametrize("method", ["token_length_normalized", "greedy_token_selection",
                                    "unconditional_likelihood_normalized"])
def test_select(local_model, method):
    res = local_model.select(chat(local_model, "What is the capital of France?"), ["Paris", "London", "Berlin"], method)
    assert 0 <= res.index < 3 and len(res.scores) == 3
    assert res.index == max(range(3), key=lambda i: res.scores[i])
    if method != "unconditional_likelihood_normalized":
        assert res.index == 0
    with pytest.raises(ValueError):
        local_model.select("x", [], method)
    empty = local_model.select("", ["The", "zzqx"], method)  # no prompt: scored after the start token
    assert len(empty.scores) == 2
    if method != "unconditional_likelihood_normalized":
        assert empty.index == 0


def test_int4_blocks_are_the_gguf_weights_exactly():
    """Re-packed Q4_1 blocks give back the file's own dequantized values."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from sgl.engine.int4 import q4_blocks
    from sgl.engine.model_loader import default_gguf_path

    try:
        path = default_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    tensors = {t.name: t for t in GGUFReader(str(path)).tensors}
    for name in ("blk.0.attn_q.weight", "blk.5.ffn_down.weight"):
        t = tensors[name]
        q, scale, zero = q4_blocks(t)
        rows, cols = q.shape
        ours = ((q.reshape(rows, -1, 32).astype(np.float32) - 8) * scale[..., None] + zero[..., None]).reshape(rows, cols)
        np.testing.assert_allclose(ours, dequantize(t.data, t.tensor_type), rtol=1e-5, atol=1e-6)


def test_int4_model_stays_close_to_float(local_model, local_model_float):
    """The packed int4 layers (bfloat16 activations) barely move the logits."""
    assert local_model.model.weights == "int4" and local_model_float.model.weights == "float"
    prompt = chat(local_model, "Write a poem about the sea.")
    r = local_model_float.generate(GenerateRequest(prompt, greedy(24)))
    seq = torch.tensor([local_model.encode(prompt) + r.token_ids])
    with torch.inference_mode():
        a = local_model.model.forward(seq, local_model.model.new_cache(seq.shape[1]), all_logits=True)[0].log_softmax(-1)
        b = local_model_float.model.forward(seq, local_model_float.model.new_cache(seq.shape[1]), all_logits=True)[0].log_softmax(-1)
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    p = b.exp()
    kl = (p * (b - a)).sum(-1).max().item()
    assert agree >= 0.9, agree
    assert kl < 0.05, kl


@needs_transformers
def test_logits_and_greedy_tokens_match_transformers(local_model_float):
    """Same logits as transformers on the converted checkpoint, and the same greedy tokens.

    One transformers forward over prompt + our 20 greedy tokens gives its logits at every
    step; its greedy choice at each generated position must be our token. (The float32
    path: the default int4 layers differ by bfloat16 rounding.)
    """
    from transformers import AutoModelForCausalLM

    smol = local_model_float

    hf = AutoModelForCausalLM.from_pretrained(smol.path, dtype=torch.float32).eval()
    prompt = chat(smol, "Write a poem about the sea.")
    ids = smol.encode(prompt)
    r = smol.generate(GenerateRequest(prompt, greedy(20)))
    assert len(r.token_ids) == 20
    seq = torch.tensor([ids + r.token_ids])
    with torch.inference_mode():
        ref = hf(seq).logits[0]
        ours = smol.model.forward(seq, smol.model.new_cache(seq.shape[1]), all_logits=True)[0]
    assert (ref - ours).abs().max().item() < 1e-3
    assert ref[len(ids) - 1 : -1].argmax(-1).tolist() == r.token_ids


@needs_transformers
@pytest.mark.parametrize("kind", ["qwen2", "llama3"])
def test_checkpoint_folder_matches_transformers(tmp_path, kind):
    """A tiny random Qwen2 (q/k/v bias) or Llama-3 (rope scaling) saved by transformers."""
    import transformers

    common = dict(vocab_size=101, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
        model = transformers.LlamaForCausalLM(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    model.save_pretrained(tmp_path)
    ours = Llama.from_folder(tmp_path)
    if kind == "qwen2":
        assert ours.layers[0].qkv_bias is not None
    else:
        assert ours.config.rope_theta == 500000.0 and ours.config.rope_scaling["rope_type"] == "llama3"
    ids = torch.randint(0, 101, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model.eval()(ids).logits[0]
        got = ours.forward(ids, KVCache.allocate(ours.config, 40), all_logits=True)[0]
    assert (ref - got).abs().max().item() < 1e-4


def test_trace_records_every_token_with_its_kind(local_model, tmp_path):
    """With tracing on, the engine writes one record per token; the viz renders them."""
    from sgl.telemetry import trace as tracing
    from sgl.viz.html import render_trace

    path = tmp_path / "trace.jsonl"
    tracing.configure_trace(path)
    try:
        r = local_model.generate(GenerateRequest(chat(local_model, "Pick a colour."), greedy(8),
                                          ConstraintSpec(choices=["blue-green", "red"])))
    finally:
        tracing.configure_trace(None)
        tracing.reset_trace_config()
    records = [rec for rec in tracing.read_trace(path) if rec.get("tokens")]
    assert records, "no trace line was written"
    tokens = records[-1]["tokens"]
    assert len(tokens) == len(r.token_ids)
    assert "".join(t["text"] for t in tokens).startswith(r.text)
    assert {t["kind"] for t in tokens} <= {"sampled", "forced", "jump_forward"}
    assert r.meta["masks"] >= 1 and r.meta["mask_time_s"] >= 0
    html = render_trace(records)
    assert r.text.split("-")[0] in html
