"""Bitmasks into numpy arrays and torch tensors (CPU always; CUDA when a GPU is there)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is in the local extra")

from sgl.constrain import (  # noqa: E402
    Matcher,
    allocate_bitmask,
    apply_bitmask,
    compile_regex,
    fill_next_token_bitmasks,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def matchers(llama3_vocab):
    digits = Matcher(compile_regex(r"[0-9]{1,4}", llama3_vocab))
    word = Matcher(compile_regex(r"(yes|no)", llama3_vocab))
    after = digits.copy()
    assert after.advance(llama3_vocab.encode("12")[0])
    return [digits, word, after]


def _numpy_rows(ms, n_vocab):
    ref = allocate_bitmask(len(ms), n_vocab)
    for i, m in enumerate(ms):
        m.fill_bitmask(ref, i)
    return ref


@pytest.mark.parametrize("device", DEVICES)
def test_fill_bitmask_into_tensors_equals_numpy(matchers, llama3_vocab, device):
    ref = _numpy_rows(matchers, llama3_vocab.n_vocab)
    out = torch.full(ref.shape, -1, dtype=torch.int32, device=device)
    for i, m in enumerate(matchers):
        m.fill_bitmask(out, i)
    assert np.array_equal(out.cpu().numpy(), ref)


@pytest.mark.parametrize("device", DEVICES)
def test_batch_fill_with_unconstrained_rows(matchers, llama3_vocab, device):
    ref = _numpy_rows(matchers, llama3_vocab.n_vocab)
    out = torch.zeros((5, ref.shape[1]), dtype=torch.int32, device=device)
    fill_next_token_bitmasks([matchers[0], None, matchers[1], matchers[2]], out, indices=[0, 1, 3, 4])
    got = out.cpu().numpy()
    assert np.array_equal(got[[0, 3, 4]], ref)
    assert (got[1] == -1).all()  # no constraint: everything allowed
    assert (got[2] == 0).all()  # not named: left as the caller had it


@pytest.mark.parametrize("device", DEVICES)
def test_apply_bitmask_on_device(matchers, llama3_vocab, device):
    ref = _numpy_rows(matchers, llama3_vocab.n_vocab)
    width = llama3_vocab.n_vocab + 7  # logits can be wider than the vocabulary
    logits = torch.randn(len(matchers), width, device=device)
    bitmask = torch.from_numpy(ref).to(device)
    apply_bitmask(logits, bitmask)
    allowed = np.unpackbits(ref.view(np.uint8), axis=-1, bitorder="little")[:, :width].astype(bool)
    finite = torch.isfinite(logits).cpu().numpy()[:, : allowed.shape[1]]
    assert np.array_equal(finite, allowed)
    assert not torch.isfinite(logits[:, allowed.shape[1]:]).any()


def test_fill_next_token_bitmasks_threads_agree(matchers, llama3_vocab):
    ref = _numpy_rows(matchers * 4, llama3_vocab.n_vocab)
    out = allocate_bitmask(12, llama3_vocab.n_vocab)
    fill_next_token_bitmasks([m.copy() for m in matchers * 4], out, threads=4)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize("n_vocab", [1, 31, 32, 33, 1000])
def test_pack_unpack_count_round_trip(n_vocab):
    """The one pack/unpack/count of the bitmask layout agree with each other and with
    a hand-set bit; tokens past the mask's end are never allowed."""
    from sgl.constrain.bitmask import count_allowed, pack_bools, unpack_bitmask

    rng = np.random.default_rng(n_vocab)
    allowed = rng.random((2, n_vocab)) < 0.3
    allowed[1, n_vocab - 1] = True
    words = pack_bools(allowed)
    assert words.shape == (2, (n_vocab + 31) // 32)
    assert bool(words[1, (n_vocab - 1) // 32] >> ((n_vocab - 1) % 32) & 1)
    assert (unpack_bitmask(words, n_vocab) == allowed).all()
    assert count_allowed(words) == int(allowed.sum())
    assert not unpack_bitmask(words, n_vocab + 40)[:, n_vocab:].any()
