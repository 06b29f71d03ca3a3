"""GGUF files of the newer architectures (qwen3, gemma2, gemma3, phi3) load exactly.

For each one a tiny random checkpoint is made by transformers (as in
``test_architectures.py``) and written as a GGUF file the way llama.cpp's converter
writes that architecture: its tensor names, Gemma's RMSNorm weights stored as ``1 + w``,
Phi-3's fused projections and longrope factor tensors, llama's q/k row permutation, and
the metadata keys llama.cpp reads. Two independent readers then load the file:

* transformers' own GGUF loader must give back the original weights, which checks that
  the file follows the conventions transformers (and llama.cpp) expect;
* SGL's converter (`convert_gguf`) must give logits within 1e-4 of the original model's
  on an input longer than any sliding window.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers makes and checks the models")
gguf = pytest.importorskip("gguf", reason="the gguf package writes the files (pip install -e .[local])")

from test_architectures import BOS, COMMON, EOS, PAD, SLIDING, VOCAB, WINDOW, byte_tokenizer  # noqa: E402

from sgl.engine.llama import Llama, interleave_rotary  # noqa: E402
from sgl.engine.model_loader import convert_gguf  # noqa: E402

FULL = "full_attention"
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "short_factor": [1.0, 1.3, 1.7, 2.0, 2.5, 3.0], "long_factor": [4.0] * 6}
# name -> (GGUF architecture, transformers config class, model class, overrides). The
# configs follow what llama.cpp assumes where GGUF has no key: Gemma's query scale is
# head_dim ** -0.5 (query_pre_attn_scalar = head_dim), Gemma 2 alternates sliding and
# global layers, Gemma 3 has one global layer in six and a local rotary base of 10000.
CASES = {
    "llama": ("llama", "LlamaConfig", "LlamaForCausalLM", {}),
    "qwen3": ("qwen3", "Qwen3Config", "Qwen3ForCausalLM", {}),
    "gemma2": ("gemma2", "Gemma2Config", "Gemma2ForCausalLM",
               dict(sliding_window=WINDOW, attn_logit_softcapping=1.5, final_logit_softcapping=2.0,
                    query_pre_attn_scalar=16)),
    "gemma3": ("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(num_hidden_layers=6, sliding_window=WINDOW, query_pre_attn_scalar=16,
                    rope_parameters={FULL: {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                                     SLIDING: {"rope_type": "default", "rope_theta": 10000.0}})),
    "phi3": ("phi3", "Phi3Config", "Phi3ForCausalLM", dict(sliding_window=WINDOW, partial_rotary_factor=0.5)),
    "phi3-longrope": ("phi3", "Phi3Config", "Phi3ForCausalLM",
                      dict(original_max_position_embeddings=64, partial_rotary_factor=0.75,
                           rope_parameters=LONGROPE)),
}

_LAYER = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
_GEMMA_LAYER = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                "post_feedforward_layernorm": "post_ffw_norm"}
_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}


def make_model(name: str):
    _, config_cls, model_cls, overrides = CASES[name]
    config = getattr(transformers, config_cls)(**(COMMON | overrides))
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def gguf_name(hf_name: str, arch: str) -> str:
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    table = _LAYER | (_GEMMA_LAYER if arch.startswith("gemma") else {})
    return f"blk.{layer}.{table[module]}.{kind}"


def write_gguf(model, arch: str, path, tokenizer: str = "gpt2") -> None:
    """``model`` as llama.cpp's converter writes an ``arch`` file (float32 tensors)."""
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    rope = c.rope_parameters.get(FULL, c.rope_parameters) if arch == "gemma3" else c.rope_parameters
    w.add_rope_freq_base(rope["rope_theta"])
    if arch == "phi3":
        w.add_rope_dimension_count(int(c.head_dim * rope.get("partial_rotary_factor", c.partial_rotary_factor)))
    else:
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    if arch == "llama":
        w.add_rope_dimension_count(c.head_dim)
    if getattr(c, "sliding_window", None) is not None:
        w.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
    if getattr(c, "final_logit_softcapping", None) is not None:
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if rope.get("rope_type") == "longrope":
        original = c.original_max_position_embeddings
        scale = c.max_position_embeddings / original
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)))
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_tensor("rope_factors_long.weight", np.asarray(rope["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.asarray(rope["short_factor"], dtype=np.float32))
    _write_tokenizer(w, tokenizer)
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        data = t.detach().float()
        if arch == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):
            heads = c.num_attention_heads if ".q_proj." in hf_name else c.num_key_value_heads
            data = interleave_rotary(data, heads)
        if arch.startswith("gemma") and hf_name.endswith("norm.weight"):
            data = data + 1.0
        w.add_tensor(gguf_name(hf_name, arch), data.numpy().copy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _write_tokenizer(w, kind: str = "gpt2") -> None:
    """The byte-level tokenizer of ``test_architectures`` in llama.cpp's "gpt2" form."""
    vocab = byte_tokenizer().get_vocab(with_added_tokens=True)
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    tokens += [f"<unused{i}>" for i in range(VOCAB - len(tokens))]
    w.add_tokenizer_model(kind)
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t.startswith("<") else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges([])
    w.add_bos_token_id(BOS)
    w.add_eos_token_id(EOS)
    w.add_pad_token_id(PAD)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, transformers model, GGUF file) of one architecture."""
    folder = tmp_path_factory.mktemp(request.param)
    model = make_model(request.param)
    path = folder / f"{request.param}.gguf"
    write_gguf(model, CASES[request.param][0], path)
    return request.param, model, path


def test_transformers_reads_the_file_back_to_the_weights(case):
    name, model, path = case
    # transformers' qwen3 GGUF mapping ignores attention.key_length (it takes Qwen3's
    # default head size, 128): give it the config, the tensor conventions are what counts
    kw = {"config": model.config} if name == "qwen3" else {}
    try:
        back = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kw)
    except Exception as e:  # noqa: BLE001 - an older transformers without this GGUF architecture
        pytest.skip(f"transformers cannot load a GGUF {CASES[name][0]} file here: {type(e).__name__}: {e}")
    ours, theirs = model.state_dict(), back.state_dict()
    for key, value in ours.items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        torch.testing.assert_close(theirs[key], value, atol=1e-6, rtol=0, msg=f"{name}: {key}")


def test_converted_model_matches_transformers(case, tmp_path):
    name, model, path = case
    folder = convert_gguf(path, out=tmp_path / "converted", progress=False)
    ours = Llama.from_folder(folder)
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(1))  # longer than the window
    with torch.inference_mode():
        ref = model(ids).logits[0].float()
        got = ours.forward(ids, ours.new_cache(40), all_logits=True)[0]
    assert (ref - got).abs().max().item() < 1e-4


def test_conversion_shows_progress_and_disk_cost(tmp_path, capfd):
    model = make_model("qwen3")
    write_gguf(model, "qwen3", tmp_path / "m.gguf")
    convert_gguf(tmp_path / "m.gguf", out=tmp_path / "converted")
    err = capfd.readouterr().err
    assert "sgl: dequantizing" in err and "tensor" in err
    assert "MiB on disk" in err
    convert_gguf(tmp_path / "m.gguf", out=tmp_path / "converted")  # already there: nothing printed
    assert capfd.readouterr().err == ""


def test_sentencepiece_tokenizer_is_refused_before_converting(tmp_path):
    model = make_model("gemma2")
    write_gguf(model, "gemma2", tmp_path / "m.gguf", tokenizer="llama")
    with pytest.raises(ValueError, match="tokenizer model 'llama' is not supported.*checkpoint folder"):
        convert_gguf(tmp_path / "m.gguf", out=tmp_path / "converted", progress=False)
    assert not (tmp_path / "converted").exists()
