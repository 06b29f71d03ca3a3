"""Every architecture the local engine supports, checked against transformers.

For each one a tiny random checkpoint is written by transformers itself (config with
small sizes, ``from_config``, ``save_pretrained``) next to a small byte-level
tokenizer, and loaded by ``LocalModel``. The configs switch on what makes each
architecture differ (sliding windows shorter than the input, soft caps that bite,
q/k norms, Gemma 3's separate local rotary base with linear scaling on the global
layers, Phi-3's partial rotary and longrope), so a feature the engine ignored would show.
Checked: last-position logits within 1e-4 of transformers' (float32) on an input
longer than any window; greedy tokens equal to transformers' ``generate`` through the
contiguous-cache forward pass and through the batching engine (two requests of
different lengths, prefix cache on, run twice so the second run hits it). Anything
else is refused at load with a clear ValueError.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers checks the numbers (pip install -e .[peers])")

from sgl.backends.base import GenerateRequest, SamplingParams  # noqa: E402
from sgl.backends.local import LocalModel  # noqa: E402
from sgl.engine.llama import Llama, LlamaConfig  # noqa: E402

VOCAB = 260  # 256 byte tokens + <eos> <bos> <pad> + one unused row
EOS, BOS, PAD = 256, 257, 258
WINDOW = 12
SLIDING, FULL = "sliding_attention", "full_attention"
# The batching-engine check (here and in bench/architectures.py): two prompts sharing a
# prefix, each + ENGINE_NEW_TOKENS within every architecture's exact context (64 for the
# longrope checkpoint: past it transformers switches to the long factors, and
# LocalModel stops at its cap).
ENGINE_PROMPTS = (bytes(range(65, 65 + 20)).decode() + "tail one",
                  bytes(range(65, 65 + 20)).decode() + "a longer second tail")
ENGINE_NEW_TOKENS = 16

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
              eos_token_id=EOS, bos_token_id=BOS, pad_token_id=PAD)

# name -> (transformers config class, model class, config overrides)
ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=WINDOW)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM",
              dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               dict(sliding_window=WINDOW, attn_logit_softcapping=1.5, final_logit_softcapping=2.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM",
               dict(sliding_window=WINDOW, layer_types=[SLIDING, FULL, SLIDING, FULL], final_logit_softcapping=2.0,
                    rope_parameters={FULL: {"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
                                     SLIDING: {"rope_type": "default", "rope_theta": 1000.0}})),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(sliding_window=WINDOW)),
    "phi3-partial-rotary": ("Phi3Config", "Phi3ForCausalLM", dict(partial_rotary_factor=0.5)),
    "phi3-longrope": ("Phi3Config", "Phi3ForCausalLM", dict(
        original_max_position_embeddings=64, partial_rotary_factor=0.75,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                         "short_factor": [1.0, 1.3, 1.7, 2.0, 2.5, 3.0], "long_factor": [4.0] * 6})),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
}


def byte_tokenizer():
    """A byte-level BPE tokenizer without merges: one token per byte, plus specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<eos>", "<bos>", "<pad>"])
    return tok


def make_checkpoint(name: str, folder) -> torch.nn.Module:
    """Write a random ``name`` checkpoint + tokenizer into ``folder``; return the HF model."""
    config_cls, model_cls, overrides = ARCHS[name]
    config = getattr(transformers, config_cls)(**(COMMON | overrides))
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():
        for p in model.parameters():  # norms too: a weight read the wrong way shows
            p.normal_(0, 0.1)
    model.save_pretrained(folder)
    byte_tokenizer().save(str(folder / "tokenizer.json"))
    return model.eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def arch(request, tmp_path_factory):
    """(name, transformers model, folder) of one architecture's checkpoint."""
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, make_checkpoint(request.param, folder), folder


@pytest.fixture(scope="module")
def ours(arch) -> Llama:
    """SGL's model of ``arch``'s checkpoint, loaded once for the tests that only read it."""
    return Llama.from_folder(arch[2])


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def _our_greedy(model: Llama, prompt: list[int], n: int) -> list[int]:
    cache = model.new_cache(len(prompt) + n)
    logits = model.forward(torch.tensor([prompt]), cache)[0]
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        if out[-1] == EOS:
            break
        logits = model.forward(torch.tensor([[out[-1]]]), cache)[0]
    return out


def test_logits_match_transformers(arch, ours):
    name, hf, folder = arch
    c = ours.config
    if ARCHS[name][2].get("sliding_window"):
        assert c.sliding_window == WINDOW and any(c.sliding_layers), "the window must be on for this check"
    ids = torch.tensor([_ids(40, 1)])  # longer than the window
    with torch.inference_mode():
        ref = hf(ids).logits[0].float()
        got = ours.forward(ids, ours.new_cache(40), all_logits=True)[0]
    assert (ref[-1] - got[-1]).abs().max().item() < 1e-4
    assert (ref - got).abs().max().item() < 1e-4


def test_greedy_generation_matches_transformers(arch, ours):
    name, hf, folder = arch
    prompt = _ids(30, 2)
    assert _our_greedy(ours, prompt, 16) == _hf_greedy(hf, prompt, 16)


def test_batching_engine_matches_transformers(arch):
    """Two requests of different lengths through LocalModel's engine, prefix cache on."""
    name, hf, folder = arch
    lm = LocalModel(folder, weights="float", kv_budget_mb=4, prefix_cache=True, token_healing=False)
    try:
        prompts = list(ENGINE_PROMPTS)
        for p in prompts:  # past the exact context the engine stops early: no comparison there
            assert len(lm.encode(p)) + ENGINE_NEW_TOKENS < lm.max_context, (name, lm.max_context)
        expected = [_hf_greedy(hf, lm.encode(p), ENGINE_NEW_TOKENS) for p in prompts]
        params = SamplingParams(max_tokens=ENGINE_NEW_TOKENS, temperature=0.0)
        for _ in range(2):  # the second round finds the first one's prompts in the prefix cache
            results = lm.generate_batch([GenerateRequest(p, params) for p in prompts])
            assert [r.token_ids for r in results] == expected
        assert lm.engine.stats.cached_prompt_tokens > 0
    finally:
        lm.engine.close()


# ------------------------------------------------------------------- refusals


def _write_config(folder, **config) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(COMMON | config))


@pytest.mark.parametrize(("config", "message"), [
    (dict(architectures=["GPTNeoXForCausalLM"], model_type="gpt_neox"), "GPTNeoXForCausalLM"),
    (dict(model_type="falcon"), "falcon"),
    (dict(architectures=["Gemma3ForConditionalGeneration"], model_type="gemma3"), "Gemma3ForConditionalGeneration"),
    (dict(architectures=["LlamaForCausalLM"], model_type="qwen3"), "model_type 'qwen3'"),
    ({}, "names no architecture"),
    (dict(architectures=["LlamaForCausalLM"], model_type="llama",
          rope_scaling={"rope_type": "yarn", "factor": 4.0}), "'yarn'"),
    (dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
          rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "'dynamic'"),
    (dict(architectures=["LlamaForCausalLM"], model_type="llama",
          rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8}), "'longrope'"),
    (dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="relu"), "activation 'relu'"),
    (dict(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", attn_logit_softcapping=50.0),
     "attn_logit_softcapping"),
    (dict(architectures=["Gemma2ForCausalLM"], model_type="gemma2", use_bidirectional_attention=True),
     "bidirectional"),
    (dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", layer_types=["chunked_attention"] * 4),
     "chunked_attention"),
])
def test_unsupported_configs_are_refused_clearly(tmp_path, config, message):
    _write_config(tmp_path, **config)
    with pytest.raises(ValueError, match="not supported|no architecture|ambiguous") as err:
        LlamaConfig.from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert message in str(err.value)
    # and the same through the public entry point, before any weight is read
    byte_tokenizer().save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=message.replace("'", ".").replace("(", ".").replace(")", ".")):
        LocalModel(tmp_path, weights="float", kv_budget_mb=4)


def test_longrope_context_is_capped_where_it_stays_exact(tmp_path):
    """Phi-3's longrope switches to its long factors past original_max_position_embeddings,
    recomputing the whole sequence; the engine stops there instead of drifting."""
    make_checkpoint("phi3-longrope", tmp_path)
    ours = Llama.from_folder(tmp_path)
    assert ours.config.max_position_embeddings == 64
    cache = ours.new_cache(70)
    ours.forward(torch.tensor([_ids(64, 5)]), cache)
    with pytest.raises(ValueError, match="longrope: .* past the exact range of 64"):
        ours.forward(torch.tensor([[1]]), cache)
    lm = LocalModel(tmp_path, weights="float", kv_budget_mb=4)
    try:
        assert lm.max_context == 64
    finally:
        lm.engine.close()


def test_unknown_tensors_are_refused_not_dropped(tmp_path):
    """A Llama checkpoint with an MLP bias (mlp_bias=True): the engine has no MLP bias,
    so it must refuse rather than load and silently ignore it."""
    config = transformers.LlamaConfig(**COMMON, mlp_bias=True)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"does not use \(model\.layers\.0\.mlp\.down_proj\.bias"):
        Llama.from_folder(tmp_path)


def test_gguf_architecture_is_checked():
    from sgl.engine.model_loader import gguf_config

    with pytest.raises(ValueError, match="GGUF architecture 'falcon' is not supported.*llama, qwen2, qwen3"):
        gguf_config({"general.architecture": "falcon"})
