"""sgl.integrations.vllm against a faithful fake of vLLM's V1 calling sequence.

vLLM cannot be installed here (it would replace torch), so the tests drive the backend
the way vLLM's scheduler and ``StructuredOutputManager`` do, and the logits processor
the way vLLM's persistent batch does, with the packaged model's real logits
(transformers) deciding every token.
"""

from __future__ import annotations

import enum
import json
import random
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
jsonschema = pytest.importorskip("jsonschema")

from sgl.constrain import ConstraintError  # noqa: E402
from sgl.integrations.vllm import SGLBackend, SGLGrammar, SGLLogitsProcessor  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "maximum": 99}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


class StructuredOutputOptions(enum.Enum):  # vLLM's enum, by name
    JSON = enum.auto()
    JSON_OBJECT = enum.auto()
    REGEX = enum.auto()
    GRAMMAR = enum.auto()
    CHOICE = enum.auto()
    STRUCTURAL_TAG = enum.auto()


class MoveDirectionality(enum.Enum):
    UNIDIRECTIONAL = enum.auto()
    SWAP = enum.auto()


@dataclass(frozen=True)
class BatchUpdate:
    batch_size: int
    removed: list
    added: list
    moved: list


@pytest.fixture(scope="module")
def hf(packaged_hf):
    return packaged_hf


def vllm_config(hf, compact=True):
    return SimpleNamespace(
        model_config=SimpleNamespace(tokenizer=str(hf.folder), model=str(hf.folder),
                                     get_vocab_size=lambda: hf.vocab_size, trust_remote_code=False),
        structured_outputs_config=SimpleNamespace(disable_any_whitespace=compact),
        speculative_config=None,
    )


def prompt_ids(tok, ask):
    text = tok.apply_chat_template([{"role": "user", "content": ask}], tokenize=False,
                                   add_generation_prompt=True)
    return tok(text)["input_ids"]


@torch.inference_mode()
def next_logits(model, ids, n):
    """Logits for the last ``n`` positions of ``ids`` (one sequence)."""
    return model(torch.tensor([ids])).logits[0, -n:].float()


# --------------------------------------------------------------------------- the backend
@dataclass
class Req:
    req_id: str
    prompt: list[int]
    grammar: SGLGrammar
    output: list[int] = field(default_factory=list)
    spec: list[int] = field(default_factory=list)
    finished: bool = False


def grammar_bitmask(backend, bitmask, reqs):
    """vLLM's StructuredOutputManager.grammar_bitmask (serial path): one mask per
    speculative position plus the bonus one, accepting each draft token to reach the next
    state, then rolling all of them back."""
    index = 0
    for req in reqs:
        advanced = 0
        for token in [*req.spec, None]:
            if not req.grammar.is_terminated():
                req.grammar.fill_bitmask(bitmask, index)
            else:
                bitmask[index].fill_(-1)
            if token is not None and not req.grammar.is_terminated():
                assert req.grammar.accept_tokens(req.req_id, [token])
                advanced += 1
            index += 1
        if advanced:
            req.grammar.rollback(advanced)
    return bitmask[:index].numpy()


def run_engine(hf, backend, reqs, drafter, max_tokens=40, stats=None):
    """The scheduler loop: drafts validated (update_draft_token_ids), masks built, the
    model verifies drafts greedily (rejection at the first mismatch, plus a bonus token),
    then update_from_output accepts the new tokens."""
    eos = set(backend.vocab.eos_token_ids)
    bitmask = backend.allocate_token_bitmask(len(reqs) * 4)
    while not all(r.finished for r in reqs):
        live = [r for r in reqs if not r.finished]
        for r in live:
            draft = drafter(r)
            r.spec = r.grammar.validate_tokens(draft)
            if stats is not None:
                stats["trimmed"] += len(draft) - len(r.spec)
        masks = torch.from_numpy(grammar_bitmask(backend, bitmask, live).copy())
        from sgl.constrain import apply_bitmask

        row = 0
        for r in live:
            logits = next_logits(hf.model, r.prompt + r.output + r.spec, len(r.spec) + 1)
            apply_bitmask(logits, masks[row:row + len(r.spec) + 1])
            row += len(r.spec) + 1
            choice = logits.argmax(dim=-1).tolist()
            new = []
            for j, best in enumerate(choice):
                new.append(best)
                if j >= len(r.spec) or best != r.spec[j]:
                    break
            if any(t in eos for t in new):
                new = new[: next(i for i, t in enumerate(new) if t in eos) + 1]
            assert r.grammar.accept_tokens(r.req_id, new)
            if stats is not None:
                stats["accepted"] += len(new) - 1
                stats["rejected"] += len(r.spec) - (len(new) - 1)
            r.output += new
            r.finished = bool(eos & set(new)) or len(r.output) >= max_tokens
    return [hf.tok.decode(r.output, skip_special_tokens=True) for r in reqs]


SMALL = {"type": "object", "properties": {"age": {"type": "integer", "maximum": 99}},
         "required": ["age"], "additionalProperties": False}


def test_backend_greedy_and_speculative_give_the_same_valid_json(hf):
    backend = SGLBackend(vllm_config(hf), tokenizer=hf.tok, vocab_size=hf.vocab_size)
    asks = ["How old is a pirate? JSON.", "A robot's age, as JSON please."]

    def fresh():
        return [Req(f"r{i}", prompt_ids(hf.tok, a),
                    backend.compile_grammar(StructuredOutputOptions.JSON, json.dumps(SMALL)))
                for i, a in enumerate(asks)]

    plain_reqs = fresh()
    plain = run_engine(hf, backend, plain_reqs, drafter=lambda r: [])
    for text in plain:
        jsonschema.validate(json.loads(text), SMALL)

    # speculative: drafts from the plain run's tokens, every other one corrupted, so
    # drafts are trimmed by validate_tokens, accepted, or rejected by the model
    reference = {r.req_id: r.output for r in plain_reqs}
    rng = random.Random(0)

    def drafter(r):
        ref = list(reference[r.req_id][len(r.output): len(r.output) + 3])
        if ref and rng.random() < 0.5:
            ref[rng.randrange(len(ref))] = rng.randrange(hf.vocab_size)
        return ref

    stats = {"trimmed": 0, "accepted": 0, "rejected": 0}
    assert run_engine(hf, backend, fresh(), drafter, stats=stats) == plain  # lossless
    assert all(stats.values()), stats  # drafts were trimmed, accepted and rejected


def test_grammar_state_methods(hf):
    backend = SGLBackend(vllm_config(hf), tokenizer=hf.tok, vocab_size=hf.vocab_size)
    g = backend.compile_grammar(StructuredOutputOptions.CHOICE, json.dumps(["yes", "no"]))
    yes = hf.tok("yes", add_special_tokens=False)["input_ids"]
    eos = backend.vocab.eos_token_ids[0]
    bad = hf.tok("maybe", add_special_tokens=False)["input_ids"]
    assert g.validate_tokens(bad) == []
    assert g.validate_tokens([*yes, eos, *yes]) == [*yes, eos]  # stops at the end
    assert g.num_processed_tokens == 0  # validate never advances
    assert g.find_jump_string() is None  # "yes" or "no": nothing forced yet
    assert g.accept_tokens("r", yes) and not g.is_terminated()
    assert g.accept_tokens("r", [eos]) and g.is_terminated()
    assert g.accept_tokens("r", [123])  # after the end: ignored, as vLLM expects
    g.rollback(1)
    assert not g.is_terminated() and g.num_processed_tokens == len(yes)
    assert not g.accept_tokens("r", bad[:1])
    g.reset()
    assert g.num_processed_tokens == 0 and g.validate_tokens(yes) == yes


def test_bitmask_is_sized_by_the_model_and_jump_forward(hf):
    wide = hf.vocab_size + 64
    backend = SGLBackend(vllm_config(hf), tokenizer=hf.tok, vocab_size=wide)
    bitmask = backend.allocate_token_bitmask(3)
    assert tuple(bitmask.shape) == (3, (wide + 31) // 32) and bitmask.dtype == torch.int32
    g = backend.compile_grammar(StructuredOutputOptions.REGEX, r'\{"id": [0-9]+\}')
    g.fill_bitmask(bitmask, 1)
    assert (bitmask[0] == -1).all() and (bitmask[2] == -1).all()  # other rows untouched
    assert (bitmask[1, hf.vocab_size // 32 + 1:] == 0).all()  # ids past the tokenizer: never
    assert g.find_jump_string() == '{"id": '


@pytest.mark.parametrize(("kind", "spec", "text"), [
    ("JSON_OBJECT", "", '{"a": 1}'),
    ("GRAMMAR", 'start: "a" "b"+', "abb"),
    ("GRAMMAR", 'root ::= "x" [0-9]', "x7"),
])
def test_other_request_types(hf, kind, spec, text):
    backend = SGLBackend(vllm_config(hf, compact=False), tokenizer=hf.tok, vocab_size=hf.vocab_size)
    g = backend.compile_grammar(StructuredOutputOptions[kind], spec)
    ids = hf.tok(text, add_special_tokens=False)["input_ids"]
    assert g.validate_tokens(ids) == ids


def test_unsupported_and_bad_specs_are_value_errors(hf):
    backend = SGLBackend(vllm_config(hf), tokenizer=hf.tok, vocab_size=hf.vocab_size)
    with pytest.raises(ConstraintError, match="STRUCTURAL_TAG"):
        backend.compile_grammar(StructuredOutputOptions.STRUCTURAL_TAG, "{}")
    for kind, spec in [("JSON", "{"), ("REGEX", "(a"), ("CHOICE", "not json"), ("GRAMMAR", "start: missing_rule")]:
        with pytest.raises(ValueError):
            backend.compile_grammar(StructuredOutputOptions[kind], spec)


def test_stop_token_ids_override_eos(hf):
    backend = SGLBackend(vllm_config(hf), tokenizer=hf.tok, vocab_size=hf.vocab_size)
    stop = hf.tok("\n", add_special_tokens=False)["input_ids"][0]
    g = backend.compile_grammar(StructuredOutputOptions.REGEX, "ok", stop_token_ids={stop})
    ok = hf.tok("ok", add_special_tokens=False)["input_ids"]
    assert g.accept_tokens("r", [*ok, stop]) and g.is_terminated()


# --------------------------------------------------------------------------- the logits processor
def test_logits_processor_follows_the_persistent_batch(hf):
    proc = SGLLogitsProcessor(vllm_config(hf), torch.device("cpu"), False)
    eos = set(proc.vocab.eos_token_ids)
    params = [
        SimpleNamespace(extra_args={"sgl_json_schema": json.dumps(SCHEMA)}),
        SimpleNamespace(extra_args=None),  # unconstrained
        SimpleNamespace(extra_args={"sgl_choices": ["red", "green", "blue"]}),
        SimpleNamespace(extra_args={"sgl_regex": "[0-9]{2}"}),  # joins when a slot frees
    ]
    asks = ["A pirate as JSON.", "Say hi.", "Pick a colour.", "A number?"]
    for p in params:
        SGLLogitsProcessor.validate_params(p)
    prompts = [prompt_ids(hf.tok, a) for a in asks]
    outputs: list[list[int]] = [[] for _ in asks]
    slots = [0, 1, 2]  # slot -> request
    pending = [3]
    update = BatchUpdate(3, [], [(i, params[i], prompts[i], outputs[i]) for i in range(3)], [])
    limits = [40, 6, 6, 6]
    done: set[int] = set()
    while slots:
        proc.update_state(update)
        logits = torch.cat([next_logits(hf.model, prompts[r] + outputs[r], 1) for r in slots])
        logits = proc.apply(logits)
        for slot, r in enumerate(slots):
            outputs[r].append(int(logits[slot].argmax()))  # vLLM appends to the live list
        # as vLLM's persistent batch: finished requests leave, a waiting one takes the
        # first hole, then the batch is condensed by moving the last request into holes
        removed = [slot for slot, r in enumerate(slots)
                   if outputs[r][-1] in eos or len(outputs[r]) >= limits[r]]
        done.update(slots[slot] for slot in removed)
        table: list[int | None] = [None if slot in removed else r for slot, r in enumerate(slots)]
        added, moved = [], []
        if pending and removed:
            r = pending.pop()
            added.append((removed[0], params[r], prompts[r], outputs[r]))
            table[removed[0]] = r
        while None in table:
            hole = table.index(None)
            last = max(i for i, r in enumerate(table) if r is not None) if any(
                r is not None for r in table) else -1
            if last < hole:
                table = table[:hole]
                break
            moved.append((last, hole, MoveDirectionality.UNIDIRECTIONAL))
            table[hole], table[last] = table[last], None
        slots = [r for r in table if r is not None]
        if len(slots) == 2 and not removed and not added:  # exercise a swap too
            moved.append((0, 1, MoveDirectionality.SWAP))
            slots.reverse()
        update = BatchUpdate(len(slots), removed, added, moved) if (removed or added or moved) else None
    texts = [hf.tok.decode(o, skip_special_tokens=True) for o in outputs]
    jsonschema.validate(json.loads(texts[0]), SCHEMA)
    assert texts[2] in ("red", "green", "blue")
    assert len(texts[3]) == 2 and texts[3].isdigit()
    assert done == {0, 1, 2, 3}


def test_logits_processor_rejects_bad_requests():
    bad = SimpleNamespace(extra_args={"sgl_regex": "(unclosed"})
    with pytest.raises(ValueError):
        SGLLogitsProcessor.validate_params(bad)
    two = SimpleNamespace(extra_args={"sgl_regex": "a", "sgl_choices": ["b"]})
    with pytest.raises(ConstraintError, match="one of"):
        SGLLogitsProcessor.validate_params(two)
    SGLLogitsProcessor.validate_params(SimpleNamespace(extra_args={"other": 1}))  # not ours


def test_install_makes_the_manager_build_an_sgl_backend(hf, monkeypatch):
    """install() patches StructuredOutputManager.grammar_init (a fake of vLLM's module)."""
    import sys
    import types

    class StructuredOutputManager:  # vLLM's, reduced to what install() touches
        def __init__(self, config, tokenizer):
            self.backend, self.vllm_config, self.tokenizer = None, config, tokenizer

        def grammar_init(self, request):
            if request.structured_output_request is None:
                return
            if self.backend is None:
                raise AssertionError("vLLM would build its own backend here")
            kind, spec = request.structured_output_request.structured_output_key
            request.structured_output_request.grammar = self.backend.compile_grammar(kind, spec)

    module = types.ModuleType("vllm.v1.structured_output")
    module.StructuredOutputManager = StructuredOutputManager
    for name in ("vllm", "vllm.v1"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "vllm.v1.structured_output", module)
    from sgl.integrations.vllm import install

    install()
    install()  # idempotent
    manager = StructuredOutputManager(vllm_config(hf), hf.tok)
    request = SimpleNamespace(structured_output_request=SimpleNamespace(
        structured_output_key=(StructuredOutputOptions.REGEX, "[0-9]+"), grammar=None))
    manager.grammar_init(request)
    assert isinstance(manager.backend, SGLBackend)
    assert isinstance(request.structured_output_request.grammar, SGLGrammar)
    manager.grammar_init(SimpleNamespace(structured_output_request=None))  # not structured
