"""sgl.integrations.transformers: SGLLogitsProcessor inside real ``model.generate``.

The model is the packaged SmolLM2-135M-Instruct (the GGUF the local engine converts to a
Hugging Face folder), loaded by transformers itself.
"""

from __future__ import annotations

import json
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
jsonschema = pytest.importorskip("jsonschema")

from sgl.constrain import ConstraintError  # noqa: E402
from sgl.integrations.transformers import SGLLogitsProcessor  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
COMPACT = {"whitespace": "compact"}
# how long a test waits for the prefetch helper: a job is a few masks (tens of ms of CPU),
# but a starved 2-core machine can stretch that past the helper's default 10 s
IDLE_S = 120.0


@pytest.fixture(scope="module")
def hf(packaged_hf):
    """(model, tokenizer) of the packaged model."""
    return packaged_hf.model, packaged_hf.tok


def chat_batch(tok, asks):
    prompts = [tok.apply_chat_template([{"role": "user", "content": a}], tokenize=False,
                                       add_generation_prompt=True) for a in asks]
    return tok(prompts, return_tensors="pt", padding=True)


def completions(tok, inputs, out):
    n = inputs["input_ids"].shape[1]
    return [tok.decode(row[n:], skip_special_tokens=True) for row in out]


ASKS = ["Invent a pirate. Reply in JSON.", "Describe an old robot as JSON with a name and age."]


def test_greedy_batch_is_valid_json(hf):
    model, tok = hf
    proc = SGLLogitsProcessor(tok, json_schema=SCHEMA, json_options=COMPACT)
    inputs = chat_batch(tok, ASKS)
    out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=40, do_sample=False)
    texts = completions(tok, inputs, out)
    assert len(texts) == 2
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    # every row ended with EOS (the constraint completed), not at the token limit
    n = inputs["input_ids"].shape[1]
    assert all(tok.eos_token_id in row[n:].tolist() for row in out)


def test_sampled_batch_with_warpers_is_valid_json(hf):
    model, tok = hf
    proc = SGLLogitsProcessor(tok, json_schema=SCHEMA, json_options=COMPACT)
    inputs = chat_batch(tok, ASKS + ["A wizard, as JSON."])
    torch.manual_seed(0)
    out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=40, do_sample=True,
                         temperature=1.3, top_k=40, top_p=0.95, num_return_sequences=2)
    texts = completions(tok, inputs, out)
    assert len(texts) == 6
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_pydantic_model_and_reuse_across_generate_calls(hf):
    pydantic = pytest.importorskip("pydantic")

    class Pet(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")  # additionalProperties: false
        name: str = pydantic.Field(max_length=12)
        legs: int = pydantic.Field(ge=0, le=8)

    model, tok = hf
    proc = SGLLogitsProcessor(tok, json_schema=Pet, json_options=COMPACT)
    for asks in (["A cat as JSON."], ["A spider as JSON.", "A bird as JSON, please, with its name."]):
        inputs = chat_batch(tok, asks)
        out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=30, do_sample=False)
        for text in completions(tok, inputs, out):
            Pet.model_validate_json(text)


def test_regex_choices_and_grammar(hf):
    model, tok = hf
    inputs = chat_batch(tok, ["What is 2+3?", "Name a colour."])
    cases = [
        (dict(regex=r"[0-9]{1,3}( apples)?"), lambda t: re.fullmatch(r"[0-9]{1,3}( apples)?", t)),
        (dict(choices=["red", "green", "blue"]), lambda t: t in ("red", "green", "blue")),
        (dict(grammar='start: "yes" | "no" | "maybe " /[a-z]{1,8}/'),
         lambda t: re.fullmatch(r"yes|no|maybe [a-z]{1,8}", t)),
    ]
    for kwargs, ok in cases:
        proc = SGLLogitsProcessor(tok, **kwargs)
        out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=12, do_sample=False)
        for text in completions(tok, inputs, out):
            assert ok(text), (kwargs, text)


def test_beam_search_follows_reordered_rows(hf):
    model, tok = hf
    proc = SGLLogitsProcessor(tok, regex=r"(ha|ho)+!", eos_token_id=tok.eos_token_id)
    inputs = chat_batch(tok, ["Laugh."])
    out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=8, num_beams=3,
                         num_return_sequences=3, do_sample=False)
    for text in completions(tok, inputs, out):
        # beams may stop at the length limit: each is a prefix of a match
        assert re.fullmatch(r"(ha|ho)+!|(ha|ho)*h?", text), text


def test_assisted_generation_rolls_back_rejected_candidates(hf):
    model, tok = hf
    ask = 'Repeat this JSON exactly: {"name":"Ann","age":30}'
    inputs = chat_batch(tok, [ask])
    for kwargs in ({"prompt_lookup_num_tokens": 4}, {"assistant_model": model}):
        proc = SGLLogitsProcessor(tok, json_schema=SCHEMA, json_options=COMPACT)
        out = model.generate(**inputs, logits_processor=[proc], max_new_tokens=30, do_sample=False,
                             **kwargs)
        (text,) = completions(tok, inputs, out)
        jsonschema.validate(json.loads(text), SCHEMA)


# -- the processor called directly, the way generate calls it ---------------------------
def test_logits_wider_than_the_tokenizer_and_finished_rows(hf):
    _, tok = hf
    proc = SGLLogitsProcessor(tok, choices=["yes"])
    width = len(tok) + 64  # models often pad their embedding past the tokenizer
    prompt = torch.tensor([[5, 6, 7], [5, 6, 8]])
    scores = proc(prompt, torch.zeros(2, width))
    allowed = torch.isfinite(scores)
    yes = tok.encode("yes")
    assert allowed[:, len(tok):].sum() == 0
    assert allowed[0, yes[0]] and allowed[1, yes[0]]
    # row 0 finishes (its text, then EOS); row 1 goes on
    eos = tok.eos_token_id
    step = torch.cat([prompt, torch.tensor([[yes[0]], [yes[0]]])], dim=1)
    if len(yes) == 1:
        scores = proc(step, torch.zeros(2, width))
        assert torch.isfinite(scores[0]).sum() == 1 and torch.isfinite(scores[0, eos])
        step = torch.cat([step, torch.tensor([[eos], [eos]])], dim=1)
        scores = proc(step, torch.zeros(2, width))
        assert proc.finished == [True, True]
        assert torch.isfinite(scores).all()  # finished rows are left alone
        # generate pads finished rows; they stay alone
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        step = torch.cat([step, torch.tensor([[pad], [pad]])], dim=1)
        assert torch.isfinite(proc(step, torch.zeros(2, width))).all()


def test_a_token_the_constraint_refuses_is_an_error(hf):
    _, tok = hf
    proc = SGLLogitsProcessor(tok, regex="[0-9]+")
    proc(torch.tensor([[5, 6]]), torch.zeros(1, len(tok)))
    letter = tok.encode("x")[0]
    with pytest.raises(ConstraintError, match="does not allow"):
        proc(torch.tensor([[5, 6, letter]]), torch.zeros(1, len(tok)))


def test_bad_constraints_are_constraint_errors(hf):
    _, tok = hf
    with pytest.raises(ConstraintError, match="exactly one"):
        SGLLogitsProcessor(tok, regex="a", choices=["b"])
    with pytest.raises(ConstraintError, match="exactly one"):
        SGLLogitsProcessor(tok)
    with pytest.raises(ConstraintError):
        SGLLogitsProcessor(tok, regex="(unclosed")
    with pytest.raises(ConstraintError):
        SGLLogitsProcessor(tok, json_schema='{"type": "object",')


def test_prefetch_has_the_next_mask_ready_and_changes_no_output(hf):
    """The helper thread computes the masks one token ahead; greedy outputs are the same
    with it on or off, and (waiting for the helper before each step) every step after the
    first finds its mask cached: greedy takes the best allowed token, which was prefetched."""
    from sgl.integrations.prefetch import shared_prefetcher

    model, tok = hf
    schema = {**SCHEMA, "properties": {"ship": {"type": "string", "maxLength": 12},
                                       "crew": {"type": "integer", "minimum": 1, "maximum": 99}},
              "required": ["ship", "crew"]}  # a schema of its own: no masks cached by other tests
    helper = shared_prefetcher()
    # prefetch=1: every step ("auto" backs off on steps whose state is known; off by default)
    proc = SGLLogitsProcessor(tok, json_schema=schema, json_options=COMPACT, prefetch=1)
    ready: list[bool] = []

    def watched(input_ids, scores):
        assert helper.wait_idle(IDLE_S)
        if proc.matchers and input_ids.shape[1] > prompt_len:
            probe = proc.matchers[0].copy()  # the state the call is about to reach
            assert probe.advance(int(input_ids[0, -1]))
            ready.append(probe.mask_is_cached())
        return proc(input_ids, scores)

    inputs = chat_batch(tok, ASKS[:1])
    prompt_len = inputs["input_ids"].shape[1]
    before = helper.masks
    out = model.generate(**inputs, logits_processor=[watched], max_new_tokens=30, do_sample=False)
    assert helper.wait_idle(IDLE_S) and helper.masks > before
    assert ready and all(ready)
    off = SGLLogitsProcessor(tok, json_schema=schema, json_options=COMPACT, prefetch=0)
    again = model.generate(**inputs, logits_processor=[off], max_new_tokens=30, do_sample=False)
    assert torch.equal(out, again)
    value = json.loads(completions(tok, inputs, out)[0])
    jsonschema.validate(value, schema)
    # greedy: the helper saw the best token taken at every step and never the second
    stats = proc.prefetch_stats
    assert stats["steps"] >= len(ready) - 1 and stats["took_best"] == stats["steps"]
    assert stats["took_second"] == 0
    for bad in (-1, "sometimes", True):
        with pytest.raises(ValueError, match="prefetch"):
            SGLLogitsProcessor(tok, regex="[0-9]+", prefetch=bad)


def test_auto_prefetch_asks_for_the_second_best_only_while_rows_take_it(hf, monkeypatch):
    """prefetch="auto": under greedy picks the helper prefetches one token per row; when
    rows take their second-best token (sampling), it adds the second-best, and drops it
    again once greedy picks return. The processor is called directly, with seeded
    random logits, and the picks are made from its masked scores."""
    from sgl.constrain import Matcher
    from sgl.integrations import prefetch as prefetch_mod

    _, tok = hf
    helper = prefetch_mod.shared_prefetcher()
    asked: list[int] = []  # per prefetch call: how many tokens the helper was asked for
    real = Matcher.prefetch

    def spy(self, token_ids):
        token_ids = list(token_ids)
        asked.append(len(token_ids))
        return real(self, token_ids)

    assert helper.wait_idle(IDLE_S)  # no job of an earlier test still running (or counted)
    monkeypatch.setattr(Matcher, "prefetch", spy)
    jobs = helper.jobs
    default = SGLLogitsProcessor(tok, regex="[a-z]+")  # prefetch is off by default
    default(torch.tensor([[5, 6, 7]]), torch.randn(1, len(tok)))
    default(torch.tensor([[5, 6, 7, tok.encode("ab")[0]]]), torch.randn(1, len(tok)))
    assert helper.wait_idle(IDLE_S) and helper.jobs == jobs and not asked and default.prefetch_stats["steps"] == 0
    proc = SGLLogitsProcessor(tok, regex="[a-z]+", prefetch="auto")
    gen = torch.Generator().manual_seed(0)
    ids = torch.tensor([[5, 6, 7]])

    def steps(n: int, rank: int) -> list[int]:
        nonlocal ids
        asked.clear()
        for _ in range(n):
            scores = proc(ids, torch.randn(1, len(tok), generator=gen))
            assert helper.wait_idle(IDLE_S)
            pick = prefetch_mod.top_two(scores[0].numpy())[rank]
            ids = torch.cat([ids, torch.tensor([[pick]])], dim=1)
        return list(asked)

    # greedy: the best token only, and only when its state has no mask yet (the state
    # after one letter is the same every step: one prefetch at most)
    greedy = steps(30, 0)
    assert set(greedy) <= {1} and len(greedy) <= 2
    stats = proc.prefetch_stats
    assert stats["steps"] == stats["took_best"] and stats["ranks"] == [0]
    # the state is known: look-aheads back off (1, 2, 4, 8, 8 ... steps apart)
    assert stats["steps"] + stats["skipped"] == 30 and stats["skipped"] >= 20
    sampled = steps(40, 1)  # rows take their second-best: it is learnt within a few steps
    assert len(sampled) >= 20 and sampled[-1] == 2 and sampled.index(2) <= 20
    assert proc.prefetch_stats["ranks"] == [0, 1]
    steps(90, 0)  # greedy again: back to the best token only, predicted by the caller
    assert proc.prefetch_stats["ranks"] == [0] and set(steps(20, 0)) <= {1}
    fixed = SGLLogitsProcessor(tok, regex="[a-z]+", prefetch=2)  # an int: always that many
    asked.clear()
    fixed(torch.tensor([[5, 6, 7]]), torch.randn(1, len(tok), generator=gen))
    assert helper.wait_idle(IDLE_S) and asked == [2]


def test_top_two_matches_best_allowed():
    import numpy as np

    from sgl.integrations.prefetch import best_allowed, top_two

    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 50):
        for _ in range(50):
            row = rng.integers(0, 4, size=n).astype(np.float32)  # ties on purpose
            row[rng.random(n) < 0.4] = -np.inf
            want = best_allowed(row, 2)
            got = [t for t in top_two(row) if t is not None]
            assert [row[t] for t in got] == [row[t] for t in want], (row, got, want)
            assert len(set(got)) == len(got)


def test_best_allowed_skips_masked_tokens():
    import numpy as np

    from sgl.integrations.prefetch import best_allowed

    row = np.full(10, -np.inf, dtype=np.float32)
    row[[2, 7]] = [1.0, 3.0]
    assert best_allowed(row, 1) == [7]
    assert best_allowed(row, 3) == [7, 2]
    assert best_allowed(np.full(4, -np.inf, dtype=np.float32), 1) == []


def test_row_path_masks_like_the_general_path():
    """The processor's CPU path (mask words applied row by row in C) gives the logits of
    its general path (a bitmask filled, then `apply_bitmask`, which other devices and
    dtypes take) at every step: float32/16/64, NaN and inf logits, logits wider than the
    vocabulary, and a row that finished (EOS taken) is left alone."""
    import numpy as np

    from sgl.constrain import Vocabulary, compile_regex

    vocab = Vocabulary([b"a", b"b", b"{", b"}", b"ab", b"ba", b"1", None], (7,), frozenset({7}))
    compiled = compile_regex("a+b|1", vocab)
    # three rows: "a" "b"; "1" EOS (finished at the last step); "a" "ab"
    steps = [[[2], [2], [2]], [[2, 0], [2, 6], [2, 0]], [[2, 0, 1], [2, 6, 7], [2, 0, 4]]]
    rng = np.random.default_rng(5)
    for dtype in (torch.float32, torch.float16, torch.float64):
        for width in (8, 40):  # 40: wider than the vocabulary (the extra ids stay masked)
            fast = SGLLogitsProcessor.from_compiled(compiled)
            general = SGLLogitsProcessor.from_compiled(compiled)
            for n, ids in enumerate(steps):
                logits = torch.from_numpy(rng.standard_normal((3, width))).to(dtype)
                logits[0, 0], logits[1, 6], logits[2, 3] = float("nan"), float("inf"), float("nan")
                got = fast(torch.tensor(ids), logits.clone())
                wide = torch.stack([logits.clone(), logits.clone()], dim=-1)
                assert not wide[..., 0].is_contiguous()  # so the general path runs
                want = general(torch.tensor(ids), wide[..., 0])
                assert torch.equal(got.isnan(), want.isnan()), (dtype, width, n)
                assert torch.equal(got.nan_to_num(0.5), want.nan_to_num(0.5)), (dtype, width, n)
                live = [0, 2] if n == 2 else [0, 1, 2]  # row 1 took EOS at the last step
                assert bool((got[live, 8:] == float("-inf")).all())
                if n == 0:  # "a" and "1" allowed, "{" and EOS not
                    assert got[1, 6] == float("inf") and bool((got[:, [2, 3, 7]] == float("-inf")).all())
            assert fast.finished == [False, True, False]
            assert torch.equal(got[1].nan_to_num(0.5), logits[1].nan_to_num(0.5))  # left alone


def test_one_step_check_sees_changed_history():
    """The one-token step compares the CPU ids' bytes with the last call's; rows that
    were swapped (beam search), a token changed in the middle (assisted generation) or
    ids of another dtype are not taken as one step: each row follows its own history."""
    from sgl.constrain import Vocabulary, compile_regex

    vocab = Vocabulary([b"a", b"b", b"1", b"2", None], (4,), frozenset({4}))
    compiled = compile_regex("a1a|a2b|b(1|2)b", vocab)
    proc = SGLLogitsProcessor.from_compiled(compiled)
    scores = torch.zeros(2, 5)
    inf = float("-inf")
    proc(torch.tensor([[9], [9]]), scores.clone())
    proc(torch.tensor([[9, 0], [9, 1]]), scores.clone())  # row 0 "a", row 1 "b"
    # swapped rows plus one token each: row 0 continues "b" ("b1": only "b" next), row 1
    # "a" ("a2": only "b" next); taken as one step, row 0 would be "a1" (only "a")
    out = proc(torch.tensor([[9, 1, 2], [9, 0, 3]]), scores.clone())
    assert out[:, 1].tolist() == [0, 0] and out[:, 0].tolist() == [inf, inf]
    # row 1's middle token replaced ("a2" -> "a1") and "a" appended: rewound to "a1a",
    # complete; a one-token step would have read "a2a", which the constraint refuses
    out = proc(torch.tensor([[9, 1, 2, 1], [9, 0, 2, 0]]), scores.clone())
    assert out[:, 4].tolist() == [0, 0] and bool((out[:, :4] == inf).all())
    # int32 ids of the same values: the same history, read through the general check
    proc(torch.tensor([[9, 1, 2, 1, 4], [9, 0, 2, 0, 4]], dtype=torch.int32), scores.clone())
    assert proc.finished == [True, True]


def test_mask_logits_row_native_and_numpy_agree(monkeypatch):
    """`mask_logits_row`'s C pass and its numpy twin give the same logits, for masks with
    all-clear, all-set and mixed words, shorter or longer than the row."""
    import numpy as np

    from sgl.constrain import native
    from sgl.constrain.bitmask import mask_logits_row, unpack_bitmask

    if not hasattr(native.extension, "mask_logits"):
        pytest.skip("the C extension is not built")
    rng = np.random.default_rng(11)
    for dtype in (np.float16, np.float32, np.float64):
        for width, n_words in ((100, 4), (100, 2), (96, 5), (33, 1), (49152, 1536)):
            words = rng.integers(0, 2**32, size=n_words, dtype=np.uint64).astype(np.uint32)
            words[::3], words[1::4] = 0, 0xFFFFFFFF
            row = rng.standard_normal(width).astype(dtype)
            row[3], row[7] = np.nan, np.inf
            native_row, numpy_row, want = row.copy(), row.copy(), row.copy()
            mask_logits_row(native_row, words)
            monkeypatch.setenv("SGL_NATIVE", "0")
            mask_logits_row(numpy_row, words.view(np.int32))
            monkeypatch.delenv("SGL_NATIVE")
            want[~unpack_bitmask(words, width)] = -np.inf
            assert np.array_equal(native_row, want, equal_nan=True), (dtype, width, n_words)
            assert np.array_equal(numpy_row, want, equal_nan=True), (dtype, width, n_words)
    with pytest.raises(ValueError):
        mask_logits_row(np.zeros(4, dtype=np.int32), np.zeros(1, dtype=np.uint32))


def test_max_fraction_digits_lets_greedy_end_a_number(hf):
    """MaskBench Github_easy/o17460 (closed): greedy SmolLM2 writes ``10.000000…`` (a valid
    JSON number and multiple of 0.01) until the token limit under the default grammar;
    the opt-in ``max_fraction_digits=6`` makes it stop at six digits, valid."""
    from sgl.constrain import Matcher

    model, tok = hf
    schema = {"$schema": "http://json-schema.org/draft-04/schema#", "title": "Expense", "type": "object",
              "properties": {"amount": {"title": "Amount", "type": "number", "multipleOf": 0.01, "minimum": 0,
                                        "description": "Expenses associated with the running of the business"}},
              "required": ["amount"], "additionalProperties": False}
    ask = ("Reply with only a JSON value, a typical example, that satisfies this JSON Schema:\n"
           + json.dumps(schema))
    inputs = chat_batch(tok, [ask])
    n = inputs["input_ids"].shape[1]
    default = SGLLogitsProcessor(tok, json_schema=schema)
    out = model.generate(**inputs, logits_processor=[default], max_new_tokens=30, do_sample=False)
    body = [t for t in out[0, n:].tolist() if t != tok.eos_token_id]
    assert Matcher(default.compiled).consume_tokens(body) == len(body)  # valid, finished or not
    capped = SGLLogitsProcessor(tok, json_schema=schema, json_options={"max_fraction_digits": 6})
    out = model.generate(**inputs, logits_processor=[capped], max_new_tokens=30, do_sample=False)
    assert tok.eos_token_id in out[0, n:].tolist()
    (text,) = completions(tok, inputs, out)
    jsonschema.validate(json.loads(text), schema)
    assert re.fullmatch(r'\{"amount": ?[0-9]+(\.[0-9]{1,6})?\}', text), text
