"""SGLang's ``stop_regex`` and ``repetition_penalty`` gen arguments: the sampler's rule
(exact, on small tensors), the engine's stop check on decoded text, and both through
``sgl.gen`` on the real model (temperature 0; API behaviour, not answer quality)."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

import sgl
from sgl.backends.base import GenerateRequest
from sgl.engine.request import TextTracker
from sgl.engine.sampler import Sampler, apply_penalties_batch
from sgl.types import SamplingParams


def test_repetition_penalty_scales_seen_logits_by_sign_prompt_included():
    sampler = Sampler(temperature=0, repetition_penalty=2.0)
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    sampler.apply_penalties(logits, [0, 1], prompt_len=1)  # token 0 in the prompt, 1 generated
    assert logits.tolist() == [1.0, -4.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="repetition_penalty"):
        Sampler(repetition_penalty=0.0)
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=-1.0)


def test_batched_penalties_equal_one_row_at_a_time():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=gen)
    samplers = [Sampler(temperature=0, repetition_penalty=1.3, frequency_penalty=0.4),
                Sampler(temperature=0),
                Sampler(temperature=0, presence_penalty=-0.7)]
    tokens = [[1, 2, 3, 3, 7], [4, 5], [9, 9, 9, 1]]
    prompt_lens = [2, 1, 1]
    expected = logits.clone()
    for row, s, t, n in zip(expected, samplers, tokens, prompt_lens, strict=True):
        s.apply_penalties(row, t, n)
    apply_penalties_batch(logits, tokens, prompt_lens, samplers)
    assert torch.equal(logits, expected)
    assert torch.equal(logits[1], torch.randn(3, 50, generator=torch.Generator().manual_seed(0))[1])


def test_text_tracker_stops_at_the_first_regex_match():
    tracker = TextTracker((), stop_regex=[r"\d{2}", "END"])
    assert tracker.push(b"abc 1") is None
    assert tracker.stable_len() == 0  # nothing is final before the end with a regex
    assert tracker.push(b"2 more") == 4  # "12" starts at 4
    with pytest.raises(ValueError, match="does not compile"):
        TextTracker((), stop_regex="(")


@pytest.mark.slow
def test_stop_regex_and_repetition_penalty_on_the_real_model(model):
    prompt = "Count from one to twenty: 1, 2, 3, 4,"
    plain = model.generate(GenerateRequest(prompt, SamplingParams(max_tokens=16, temperature=0)))
    assert re.search(r"[78]", plain.text)  # the model keeps counting
    cut = model.generate(GenerateRequest(prompt, SamplingParams(max_tokens=16, temperature=0,
                                                               stop_regex=r"[78]")))
    assert cut.finish_reason == "stop" and not re.search(r"[78]", cut.text)
    assert plain.text.startswith(cut.text)
    streamed = "".join(model.generate_stream(GenerateRequest(
        prompt, SamplingParams(max_tokens=16, temperature=0, stop_regex=r"[78]"))))
    assert streamed == cut.text
    with pytest.raises(ValueError, match="stop_regex"):
        model.generate(GenerateRequest(prompt, SamplingParams(max_tokens=4, stop_regex="[")))

    repeat = "1, 1, 1, 1, 1, 1, 1, 1, 1, 1,"

    def most_repeated(**penalty) -> int:
        r = model.generate(GenerateRequest(repeat, SamplingParams(max_tokens=16, temperature=0, **penalty)))
        return Counter(r.token_ids).most_common(1)[0][1]

    assert most_repeated(repetition_penalty=1.8) < most_repeated()


@pytest.mark.slow
def test_gen_takes_stop_regex_and_repetition_penalty(model):
    @sgl.function
    def prog(s):
        s += "Count from one to twenty: 1, 2, 3, 4,"
        s += sgl.gen("count", max_tokens=16, temperature=0, stop_regex=r"[78]", repetition_penalty=1.0)

    state = prog.run(backend=model)
    assert not re.search(r"[78]", state["count"])
    assert state.get_meta_info("count")["finish_reason"] == "stop"
