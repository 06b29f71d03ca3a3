"""sgl.integrations.sglang against a faithful fake of SGLang's calling sequence.

SGLang cannot be installed here (it would replace torch), so the test drives the
backend as SGLang's scheduler does: compiled grammars cached and copied per request,
one vocab mask per batch allocated by the first grammar and filled per row (rows
without a grammar stay all-allowed), moved and applied by the grammar class, each
sampled token accepted, ``finished`` set, and jump-forward by re-tokenizing the output
with the forced text appended. The packaged model's real logits pick the tokens.
Speculative decoding: the masks over a draft tree, with each draft rolled back after
its subtree, as SGLang's ``traverse_tree`` does, then the verified tokens accepted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
jsonschema = pytest.importorskip("jsonschema")

from sgl.constrain import ConstraintError  # noqa: E402
from sgl.integrations.sglang import SGLGrammarBackend, SGLGrammarObject, create_backend  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "maximum": 99}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def hf(packaged_hf):
    return packaged_hf


@dataclass
class Req:
    prompt: list[int]
    grammar: SGLGrammarObject | None
    output: list[int] = field(default_factory=list)
    finished: bool = False
    jumps: int = 0
    max_tokens: int = 40


class FakeScheduler:
    """The parts of SGLang's scheduler and sampler that touch a grammar backend."""

    def __init__(self, backend, hf, jump_forward):
        self.backend, self.hf, self.jump_forward = backend, hf, jump_forward
        self.cache: dict[tuple[str, str], SGLGrammarObject] = {}
        self.eos = {hf.tok.eos_token_id}

    def grammar_for(self, key):
        if key is None:
            return None
        if key not in self.cache:  # _init_value_dispatch, then set_cache
            kind, text = key
            value = getattr(self.backend, f"dispatch_{kind}")(text)
            assert value is not None, key
            self.cache[key] = value
        return self.cache[key].copy()

    def prompt(self, ask):
        text = self.hf.tok.apply_chat_template([{"role": "user", "content": ask}], tokenize=False,
                                               add_generation_prompt=True)
        return self.hf.tok(text)["input_ids"]

    def maybe_jump(self, req):
        helper = req.grammar.try_jump_forward(self.hf.tok)
        if helper is None:
            return
        text, state = req.grammar.jump_forward_str_state(helper)
        old = list(req.output)
        new = self.hf.tok(self.hf.tok.decode(old) + text, add_special_tokens=False)["input_ids"]
        req.grammar.jump_and_retokenize(old, new, state)
        req.output = new
        req.jumps += 1

    @torch.inference_mode()
    def run(self, reqs, seed=None):
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        while not all(r.finished for r in reqs):
            batch = [r for r in reqs if not r.finished]
            if self.jump_forward:
                for r in batch:
                    if r.grammar is not None and r.output:
                        self.maybe_jump(r)
            grammars = [r.grammar for r in batch]
            first = next((g for g in grammars if g is not None), None)
            logits = torch.cat([self.hf.model(torch.tensor([r.prompt + r.output])).logits[:, -1].float()
                                for r in batch])
            if first is not None:  # SamplingBatchInfo.update_regex_vocab_mask, then the sampler
                mask = first.allocate_vocab_mask(vocab_size=self.hf.vocab_size, batch_size=len(batch),
                                                 device="cpu")
                for i, g in enumerate(grammars):
                    if g is not None and not g.finished and not g.is_terminated():
                        g.fill_vocab_mask(mask, i)
                mask = first.move_vocab_mask(mask, "cpu")
                first.apply_vocab_mask(logits=logits, vocab_mask=mask)
            if gen is None:
                tokens = logits.argmax(dim=-1).tolist()
            else:
                tokens = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0].tolist()
            for r, t in zip(batch, tokens, strict=True):  # process_batch_result_decode
                r.output.append(t)
                r.finished = t in self.eos or len(r.output) >= r.max_tokens
                if r.grammar is not None:
                    r.grammar.accept_token(t)
                    r.grammar.finished = r.finished
        return [self.hf.tok.decode(r.output, skip_special_tokens=True) for r in reqs]


@pytest.mark.parametrize(("jump_forward", "seed"), [(False, None), (True, 7)])
def test_batch_under_the_fake_scheduler(hf, jump_forward, seed):
    backend = create_backend(SimpleNamespace(constrained_json_disable_any_whitespace=True),
                             hf.tok, hf.vocab_size, {hf.tok.eos_token_id})
    sched = FakeScheduler(backend, hf, jump_forward)
    schema_key = ("json", json.dumps(SCHEMA))
    reqs = [
        Req(sched.prompt("Invent a pirate, as JSON."), sched.grammar_for(schema_key)),
        Req(sched.prompt("A robot's name and age, in JSON."), sched.grammar_for(schema_key)),
        Req(sched.prompt("Say hello."), None, max_tokens=5),  # no grammar, in the same batch
        Req(sched.prompt("A date?"), sched.grammar_for(("regex", r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"))),
        Req(sched.prompt("Yes or no?"), sched.grammar_for(("ebnf", 'root ::= "yes" | "no"'))),
    ]
    texts = sched.run(reqs, seed=seed)
    for text in texts[:2]:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", texts[3])
    assert texts[4] in ("yes", "no")
    assert all(r.grammar.is_terminated() for r in reqs if r.grammar is not None)
    if jump_forward:
        assert sum(r.jumps for r in reqs) > 0  # '{"name": "' and '", "age": ' are forced


def test_rollback_copy_and_any_json(hf):
    backend = SGLGrammarBackend(hf.tok, hf.vocab_size)
    g = backend.dispatch_json("$$ANY$$")
    ids = hf.tok('[1, {"a": null}]', add_special_tokens=False)["input_ids"]
    for t in ids:
        g.accept_token(t)
    g.accept_token(hf.tok.eos_token_id)
    assert g.is_terminated()
    g.rollback(2)  # speculative-decoding style: back before EOS and the last token
    assert not g.is_terminated()
    g.accept_token(ids[-1])
    fresh = g.copy()
    mask = fresh.allocate_vocab_mask(hf.vocab_size, 2, "cpu")
    fresh.fill_vocab_mask(mask, 0)
    assert (mask[1] == -1).all()  # a row nobody filled stays all-allowed
    logits = torch.zeros(2, hf.vocab_size)
    fresh.apply_vocab_mask(logits, fresh.move_vocab_mask(mask, "cpu"))
    assert torch.isinf(logits[0]).any() and not torch.isinf(logits[1]).any()
    with pytest.raises(ConstraintError):
        g.accept_token(hf.tok("x", add_special_tokens=False)["input_ids"][0])


def test_invalid_constraints_are_reported_not_raised(hf):
    backend = SGLGrammarBackend(hf.tok, hf.vocab_size)
    assert backend.dispatch_regex("(unclosed") is None
    assert backend.dispatch_json("{not json") is None
    assert backend.dispatch_ebnf("root ::= missing") is None
    assert backend.dispatch_structural_tag("{}") is None


def traverse_draft_tree(grammar, draft, next_token, next_sibling, mask):
    """SGLang's grammar walk over a speculative draft tree (``spec_utils.traverse_tree``,
    EAGLE): depth first from node 0 (the token the target model already emitted, so
    already accepted); a node whose token its parent's row allows is accepted, its own row
    filled unless the grammar has terminated, its first child visited, then it is rolled
    back; siblings follow. A rejected node's subtree is never visited."""

    def visit(node, parent):
        token = draft[node]
        if node == 0 or (int(mask[parent, token // 32]) >> (token % 32)) & 1:
            if node:
                grammar.accept_token(token)
            if not grammar.is_terminated():
                grammar.fill_vocab_mask(mask, node)
                if next_token[node] != -1:
                    visit(next_token[node], node)
            if node:
                grammar.rollback(1)
        if next_sibling[node] != -1:
            visit(next_sibling[node], parent)

    visit(0, -1)


def test_speculative_draft_tree_then_verify(hf):
    """SGLang's speculative decoding with a grammar: masks over a draft tree with a valid
    branch ending in EOS and a rejected sibling (its subtree skipped), every draft rolled
    back after its subtree, the rows written into the request's slice of the batch mask;
    then the verified tokens are accepted."""
    backend = SGLGrammarBackend(hf.tok, hf.vocab_size, {hf.tok.eos_token_id})
    regex = r"(cat|dog) [0-9]{2}"
    grammar = backend.dispatch_regex(regex).copy()
    ids = hf.tok("dog 42", add_special_tokens=False)["input_ids"]
    eos, bad = hf.tok.eos_token_id, hf.tok("x", add_special_tokens=False)["input_ids"][0]
    grammar.accept_token(ids[0])  # node 0: the target's last token, accepted last step
    chain = [*ids[1:], eos]
    # nodes: 0 root, 1..len(chain) the chain, then a rejected sibling of node 1 with a child
    draft = [ids[0], *chain, bad, chain[0]]
    n = len(draft)
    next_token = [1, *range(2, len(chain) + 1), -1, -1, -1]
    next_token[len(chain) + 1] = len(chain) + 2  # the rejected node's child
    next_sibling = [-1] * n
    next_sibling[1] = len(chain) + 1
    batch = grammar.allocate_vocab_mask(hf.vocab_size, 2 * n, "cpu")  # two requests' trees
    traverse_draft_tree(grammar, draft, next_token, next_sibling, batch[n:2 * n])  # the second one's slice

    assert (batch[:n] == -1).all()  # the other request's rows are untouched
    rows = batch[n:2 * n]
    expect = grammar.copy()
    expect.accept_token(ids[0])
    for node, token in enumerate([None, *chain[:-1]]):  # the chain's rows: its grammar states
        if token is not None:
            expect.accept_token(token)
        want = expect.allocate_vocab_mask(hf.vocab_size, 1, "cpu")
        expect.fill_vocab_mask(want, 0)
        assert torch.equal(rows[node], want[0]), node
    for node in (len(chain), len(chain) + 1, len(chain) + 2):  # after EOS; rejected; its child
        assert (rows[node] == -1).all(), node
    assert not grammar.is_terminated()  # every draft rolled back: node 0's state again
    again = grammar.allocate_vocab_mask(hf.vocab_size, 1, "cpu")
    grammar.fill_vocab_mask(again, 0)
    assert torch.equal(again[0], rows[0])
    for token in chain:  # verify accepted the whole chain (process_batch_result: accept_token each)
        grammar.accept_token(token)
    assert grammar.is_terminated()
    assert re.fullmatch(regex, hf.tok.decode([ids[0], *chain], skip_special_tokens=True))
