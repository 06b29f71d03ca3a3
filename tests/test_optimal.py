"""Optimal sampling: the α rules against direct numerical computation, and the sampler on
the real model (SmolLM2-135M-Instruct as both base and teacher, the teacher with a system
prompt)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from sgl.decode.alpha import (
    alpha_entropy,
    alpha_ess_balance,
    alpha_kl_symmetry,
    choose_alpha_logp,
)
from sgl.decode.optimal import OptimalSampler

GRID = np.linspace(0.0, 1.0, 20001)
STEP = GRID[1] - GRID[0]


def _dists(seed: int, n: int = 7, conc: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(n, conc)), rng.dirichlet(np.full(n, conc))


def _mixture_direct(pb: np.ndarray, pt: np.ndarray, a: np.ndarray) -> np.ndarray:
    """q_α for every α of ``a`` (rows), straight from the definition."""
    a = np.asarray(a, dtype=np.float64)[:, None]
    q = pb[None] ** (1 - a) * pt[None] ** a
    return q / q.sum(axis=1, keepdims=True)


def _kl_direct(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.sum(q * np.log(q / p[None]), axis=1)


def _ess_direct(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    # normalised ESS of importance weights w = p/q under proposal q: (E_q w)^2 / E_q w^2
    w = p[None] / q
    return np.sum(q * w, axis=1) ** 2 / np.sum(q * w**2, axis=1)


def _grid_argmin(fn, lo: float, hi: float) -> float:
    grid = GRID[(GRID >= lo - 1e-12) & (GRID <= hi + 1e-12)]
    return float(grid[np.argmin(fn(grid))])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (0.5, 1.0), (0.2, 0.45)])
def test_kl_symmetry_matches_grid_search(seed: int, lo: float, hi: float) -> None:
    pb, pt = _dists(seed)

    def gap(a: float) -> float:
        q = _mixture_direct(pb, pt, a)
        return np.abs(_kl_direct(q, pb) - _kl_direct(q, pt))

    expected = _grid_argmin(gap, lo, hi)
    got = alpha_kl_symmetry(pb, pt, lo, hi)
    assert lo <= got <= hi
    assert got == pytest.approx(expected, abs=2 * STEP)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (0.5, 1.0), (0.6, 0.9)])
def test_ess_balance_matches_grid_search(seed: int, lo: float, hi: float) -> None:
    pb, pt = _dists(seed + 100)

    def gap(a: float) -> float:
        q = _mixture_direct(pb, pt, a)
        return np.abs(_ess_direct(pb, q) - _ess_direct(pt, q))

    expected = _grid_argmin(gap, lo, hi)
    got = alpha_ess_balance(pb, pt, lo, hi)
    assert got == pytest.approx(expected, abs=2 * STEP)


@pytest.mark.parametrize("seed", range(6))
def test_entropy_rule_matches_direct_computation(seed: int) -> None:
    pb, pt = _dists(seed + 200)
    hb = -np.sum(pb * np.log(pb))
    ht = -np.sum(pt * np.log(pt))
    # the α where α·H_teacher = (1-α)·H_base, by grid search, then clamped
    expected = _grid_argmin(lambda a: np.abs(a * ht - (1 - a) * hb), 0.0, 1.0)
    assert alpha_entropy(pb, pt) == pytest.approx(expected, abs=2 * STEP)
    assert alpha_entropy(pb, pt, 0.5, 1.0) == pytest.approx(max(0.5, expected), abs=2 * STEP)


def test_rules_on_batches_and_edge_cases() -> None:
    pb, pt = _dists(7)
    rows_b, rows_t = np.stack([pb, pt, pb]), np.stack([pt, pb, pb])
    batch = alpha_kl_symmetry(rows_b, rows_t)
    assert batch.shape == (3,)
    assert batch[0] == pytest.approx(alpha_kl_symmetry(pb, pt), abs=1e-6)
    # swapping the models mirrors the KL rule: α ↔ 1-α
    assert batch[1] == pytest.approx(1 - batch[0], abs=1e-5)
    # identical distributions: every α balances; the bisection keeps the lower end
    assert batch[2] == pytest.approx(0.0)
    # both deterministic: entropy rule falls back to 1/2
    one = np.array([1.0, 0.0, 0.0])
    assert alpha_entropy(one, one) == 0.5
    # disjoint supports cannot be mixed
    with pytest.raises(ValueError, match="share no token"):
        alpha_kl_symmetry(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    # zeros in one distribution: the rules work on the common support
    pz = np.array([0.5, 0.5, 0.0])
    assert 0.0 <= alpha_ess_balance(pz, np.array([0.2, 0.3, 0.5])) <= 1.0
    assert choose_alpha_logp("fixed", np.log(rows_b), np.log(rows_t), 0.5, 1.0, 0.25).tolist() == [0.25] * 3


# ----------------------------------------------------------------- real model

SYSTEM = "<|im_start|>system\nYou are a pirate. Always answer like a pirate.<|im_end|>\n"
USER = "<|im_start|>user\nName a color.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model(local_model):
    """The session's LocalModel, viewed as a LogitModel (no second load)."""
    from sgl.decode.logit_model import resolve_logit_model

    return resolve_logit_model(local_model)


def _greedy(model, prompt: str, n: int) -> list[int]:
    return model.generate(model.encode_prompt(prompt), n).ids


def _first_logits(model, prompt: str):
    """The model's logits for the first token after ``prompt`` (a plain forward pass)."""
    import torch

    ids = model.encode_prompt(prompt)
    with torch.inference_mode():
        return model.llama.forward(torch.tensor([ids]), model.llama.new_cache(len(ids)))[0]


def test_constructor_checks(model, llama3_vocab) -> None:
    from sgl.decode.logit_model import LogitModel

    with pytest.raises(ValueError, match="fixed_alpha"):
        OptimalSampler(model, model, alpha_method="fixed")
    with pytest.raises(ValueError, match="unknown alpha_method"):
        OptimalSampler(model, model, alpha_method="median")
    with pytest.raises(ValueError, match="alpha_min"):
        OptimalSampler(model, model, alpha_min=0.8, alpha_max=0.2)
    # same sizes are not enough: a different token table must be refused too
    other = LogitModel(model.llama, llama3_vocab, name="llama3-vocab")
    with pytest.raises(ValueError, match="do not share a vocabulary"):
        OptimalSampler(model, other)
    shuffled = list(model.vocab.token_bytes)
    shuffled[100], shuffled[101] = shuffled[101], shuffled[100]
    twin = LogitModel(model.llama, dataclasses.replace(model.vocab, token_bytes=shuffled), name="twin")
    with pytest.raises(ValueError, match="fingerprints"):
        OptimalSampler(model, twin)


@pytest.mark.slow
def test_fixed_alpha_ends_are_the_single_models(model) -> None:
    n = 4
    base_only = OptimalSampler(model, model, alpha_method="fixed", fixed_alpha=0.0, teacher_prompt=SYSTEM)
    prompts = [USER, "The capital of France is"]  # different lengths: left padding in the batch
    r = base_only.generate(prompts, max_tokens=n, temperature=0.0)
    for prompt, ids in zip(prompts, r.generated_ids, strict=True):
        assert ids == _greedy(model, prompt, n)[: len(ids)]
    assert r["num_tokens"] == [len(x) for x in r.generated_ids]

    teacher_only = OptimalSampler(model, model, alpha_method="fixed", fixed_alpha=1.0, teacher_prompt=SYSTEM)
    r1 = teacher_only.generate(USER, max_tokens=n, temperature=0.0)
    assert r1.generated_ids[0] == _greedy(model, SYSTEM + USER, n)[: len(r1.generated_ids[0])]
    assert r1.generated_ids[0] != r.generated_ids[0]  # the system prompt matters, so the ends differ


@pytest.mark.slow
def test_adaptive_alpha_with_constraint_and_diagnostics(model) -> None:
    import torch

    sampler = OptimalSampler(model, model, alpha_method="kl_symmetry", alpha_min=0.0, alpha_max=1.0,
                             teacher_prompt=SYSTEM, teacher_temperature=0.8)
    # the α of the first step is the pure rule applied to the two models' first logits
    lb, lt = _first_logits(model, USER), _first_logits(model, SYSTEM + USER)
    step = sampler.mix(lb[None], lt[None])
    pb = torch.softmax(lb.double(), -1).numpy()
    pt = torch.softmax(lt.double() / 0.8, -1).numpy()
    assert step.alpha[0] == pytest.approx(alpha_kl_symmetry(pb, pt), abs=1e-5)

    pattern = r"(red|green|blue|yellow)"
    from sgl.types import ConstraintSpec

    r = sampler.generate(USER, max_tokens=6, temperature=0.7, seed=3, collect_diagnostics=True,
                         constraint=ConstraintSpec(regex=pattern))
    assert re.fullmatch(pattern, r.generated_texts[0])
    assert r.finish_reasons[0] == "eos"
    n = r.num_tokens[0]
    # one α per token: the constraint ended the text itself (no EOS step)
    assert len(r.alphas[0]) == len(r.ess_ratios[0]) == n
    assert r.alphas[0][0] == pytest.approx(
        choose_alpha_logp("kl_symmetry", *_masked_first_step(model, sampler, pattern), 0.0, 1.0)[0], abs=1e-5)
    assert all(0.0 < e <= 1.0 + 1e-9 for e in r.ess_ratios[0])


def _masked_first_step(model, sampler, pattern):
    import torch

    from sgl.constrain import Matcher, allocate_bitmask, apply_bitmask, compile_regex

    bm = allocate_bitmask(1, model.vocab.n_vocab)
    Matcher(compile_regex(pattern, model.vocab)).fill_bitmask(bm, 0)
    out = []
    for prompt, temp in ((USER, 1.0), (SYSTEM + USER, 0.8)):
        logits = _first_logits(model, prompt).double()[None] / temp
        apply_bitmask(logits, bm)
        out.append(torch.log_softmax(logits, -1).numpy())
    return out


@pytest.mark.slow
def test_other_rules_and_generate_one(model) -> None:
    import torch

    from sgl.backends.base import GenerateResult
    from sgl.types import SamplingParams

    lb, lt = _first_logits(model, USER)[None], _first_logits(model, SYSTEM + USER)[None]
    pb, pt = torch.softmax(lb.double(), -1).numpy(), torch.softmax(lt.double(), -1).numpy()
    entropy = OptimalSampler(model, model, alpha_method="entropy", teacher_prompt=SYSTEM)
    assert entropy.mix(lb, lt).alpha[0] == pytest.approx(alpha_entropy(pb[0], pt[0], 0.5, 1.0), abs=1e-9)

    sampler = OptimalSampler(model, model, alpha_method="ess_balance", teacher_prompt=SYSTEM,
                             constraint_to_target=True, target_top_k=5)
    step = sampler.mix(lb, lt)
    assert step.alpha[0] == pytest.approx(alpha_ess_balance(pb[0], pt[0], 0.5, 1.0), abs=1e-5)
    # sampling support: the teacher's 5 best tokens only
    assert set(np.nonzero(np.isfinite(step.logq[0]))[0]) <= set(np.argsort(-pt[0])[:5].tolist())
    r = sampler.generate(USER, max_tokens=3, temperature=1.0, seed=0, collect_diagnostics=True)
    assert r.num_tokens[0] == 3
    assert all(0.5 <= a <= 1.0 for a in r.alphas[0])  # default clamp [0.5, 1]
    res = sampler.generate_one(USER, SamplingParams(max_tokens=2, temperature=0.0, seed=1))
    assert isinstance(res, GenerateResult)
    assert len(res.meta["alphas"]) == len(res.token_ids) == 2
    assert res.text == model.decode(res.token_ids)


def test_one_alpha_per_token_when_the_text_ends_with_eos(model) -> None:
    """Issue 10: the EOS step used to add an α (12 tokens, 13 alphas)."""
    prompt = "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n"
    sampler = OptimalSampler(model, model, teacher_prompt=SYSTEM)
    r = sampler.generate([prompt, USER], max_tokens=40, temperature=0.0, collect_diagnostics=True)
    assert "eos" in r.finish_reasons  # the case under test happens
    for i in range(2):
        n = r.num_tokens[i]
        assert n == len(r.generated_ids[i])
        for key in ("alphas", "ess_ratios", "ess_base", "kl_base", "kl_teacher"):
            assert len(getattr(r, key)[i]) == n, key


def test_a_mixture_request_decodes_in_the_same_engine_steps_as_a_plain_request(model, local_model) -> None:
    """Issue 10: OptimalSampler's sequences are requests in the engine's batch, not a second runtime."""
    from sgl.engine.request import SeqRequest
    from sgl.types import SamplingParams

    n = 6
    sampler = OptimalSampler(model, model, alpha_method="kl_symmetry", teacher_prompt=SYSTEM)
    alone = sampler.generate(USER, max_tokens=n, temperature=0.0, collect_diagnostics=True)
    engine = model.engine
    assert engine is local_model.engine  # the LocalModel's own engine, no second one
    plain = SeqRequest(local_model.encode("The capital of France is"),
                       SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    before = engine.stats.steps
    plain_alone = engine.generate([plain])[0]
    steps_plain = engine.stats.steps - before

    (mixed,) = sampler.requests(USER, max_tokens=n, temperature=0.0)
    plain = SeqRequest(plain.prompt_ids, plain.params)
    before, generated = engine.stats.steps, engine.stats.generated_tokens
    out_plain, out_base, _ = engine.generate([plain, mixed.base, mixed.teacher])
    together = engine.stats.steps - before
    # the engine sampled the mixture's tokens itself (the teacher only follows)
    assert engine.stats.generated_tokens - generated == len(out_plain.token_ids) + len(out_base.token_ids)
    # one forward pass per token for all three sequences: the plain one's steps (one more if the
    # engine thread ran a step before the others were submitted), not the sum (>= steps_plain + n)
    assert together <= steps_plain + 1 < steps_plain + n
    assert out_plain.token_ids == plain_alone.token_ids
    own = out_base.token_ids[: alone.num_tokens[0]]
    assert own == alone.generated_ids[0]
    assert [float(m.alpha[0]) for m in mixed.pairing.infos[: len(own)]] == pytest.approx(alone.alphas[0])


def test_a_teacher_in_another_engine_gives_the_same_tokens(model) -> None:
    """A teacher that is another model runs in its own engine, stepped in lockstep."""
    from sgl.decode.logit_model import LogitModel

    other = LogitModel(model.llama, model.vocab, model.tokenizer, name="twin")  # its own engine
    assert other.engine is not model.engine
    prompts = [USER, "The capital of France is"]
    same = OptimalSampler(model, model, teacher_prompt=SYSTEM).generate(prompts, max_tokens=5, temperature=0.0)
    two = OptimalSampler(model, other, teacher_prompt=SYSTEM).generate(prompts, max_tokens=5, temperature=0.0)
    assert two.generated_ids == same.generated_ids
    assert two.finish_reasons == same.finish_reasons
    other.engine.close()


def test_a_pair_runs_in_an_engine_of_one_running_slot(model) -> None:
    """A leader holding the only slot admits its partner past ``max_running`` (else it
    would wait for the partner's row forever)."""
    from sgl.engine.scheduler import Engine, EngineConfig

    engine = Engine(model.llama, model.vocab.token_bytes, model.vocab.eos_token_ids,
                    EngineConfig(kv_budget_mb=64.0, max_running=1), vocab=model.vocab)
    try:
        sampler = OptimalSampler(model, model, teacher_prompt=SYSTEM)
        (pair,) = sampler.requests(USER, max_tokens=4, temperature=0.0)
        handles = [engine.submit(pair.base), engine.submit(pair.teacher)]
        base, _ = [h.result(timeout=120) for h in handles]
        assert base.finish_reason in ("length", "stop") and len(base.token_ids) >= 1
    finally:
        engine.close()
