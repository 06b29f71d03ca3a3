"""Two-model "optimal sampling": tokens drawn from a geometric mixture of two models.

At every step the base model gives ``p_base`` and the teacher gives ``p_teacher`` over
the same vocabulary; the sampler draws from

    q_α(x) ∝ p_base(x)^(1-α) · p_teacher(x)^α

with ``α`` chosen per token from the two distributions (see ``docs/decoding.md`` for the
rules and why they are well defined):

* ``kl_symmetry``: the α where KL(q_α‖p_base) = KL(q_α‖p_teacher) (the Chernoff point);
* ``ess_balance``: the α where importance sampling from q_α is equally efficient for
  either target: ESS(p_base/q_α) = ESS(p_teacher/q_α);
* ``entropy``: α = H_base / (H_base + H_teacher);
* ``fixed``: a constant α.

The rules are pure functions on probability vectors (``alpha_kl_symmetry`` ...), tested
against a grid search. ``OptimalSampler`` runs both models batched over prompts, each with
its own KV cache, optionally under a constraint (one ``sgl.constrain.Matcher`` per
sequence, the mask applied to both models before α is chosen).

The module also holds ``LogitModel``, the few pieces of a local model the decoders here
need (forward with a KV cache, tokenizer, vocabulary); it adapts ``LocalModel`` objects
and loads checkpoints on its own when the local backend is not available.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ALPHA_METHODS = ("kl_symmetry", "ess_balance", "entropy", "fixed")
GREEDY_TEMPERATURE = 1e-5  # temperatures at or below this mean argmax
ALPHA_TOL = 1e-6  # bisection tolerance while sampling (~20 halvings)


# =========================================================================== α rules
#
# Internally everything works on log-probabilities of shape (rows, V) on the *common
# support* of the two distributions (tokens both give positive probability), each
# renormalised there: for 0 < α < 1 the mixture lives on that set only, and under a
# constraint both models are masked identically, so nothing is lost.


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log Σ exp over the last axis; rows must have a finite entry."""
    m = np.max(x, axis=-1, keepdims=True)
    with np.errstate(under="ignore"):
        return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


@dataclass
class _Pair:
    """Two distributions on their common support, as log-probabilities (rows, V)."""

    lb: np.ndarray  # log p_base, 0 outside the support (never read there)
    lt: np.ndarray  # log p_teacher, likewise
    support: np.ndarray  # bool (rows, V)

    @classmethod
    def from_logp(cls, logp_base: np.ndarray, logp_teacher: np.ndarray) -> _Pair:
        lb = np.atleast_2d(np.asarray(logp_base, dtype=np.float64))
        lt = np.atleast_2d(np.asarray(logp_teacher, dtype=np.float64))
        if lb.shape != lt.shape:
            raise ValueError(f"distributions differ in shape: {lb.shape} vs {lt.shape}")
        support = np.isfinite(lb) & np.isfinite(lt)
        if not support.any(axis=-1).all():
            raise ValueError("the two distributions share no token with positive probability")
        lb = np.where(support, lb, -np.inf)
        lt = np.where(support, lt, -np.inf)
        lb = lb - _logsumexp(lb)[:, None]
        lt = lt - _logsumexp(lt)[:, None]
        return cls(np.where(support, lb, 0.0), np.where(support, lt, 0.0), support)

    def log_mixture(self, alpha: np.ndarray) -> np.ndarray:
        """log q_α per row (normalised), -inf outside the support."""
        a = np.asarray(alpha, dtype=np.float64).reshape(-1, 1)
        x = np.where(self.support, (1.0 - a) * self.lb + a * self.lt, -np.inf)
        return x - _logsumexp(x)[:, None]

    def kl_gap(self, alpha: np.ndarray) -> np.ndarray:
        """KL(q‖p_base) − KL(q‖p_teacher) = E_q[log p_teacher − log p_base]; increasing in α."""
        q = np.exp(self.log_mixture(alpha))
        return np.sum(q * (self.lt - self.lb), axis=-1)

    def log_inv_ess(self, logp: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """log(1 / ESS) of weights p/q_α under q_α: log Σ p²/q_α."""
        logq = self.log_mixture(alpha)
        x = np.where(self.support, 2.0 * logp - logq, -np.inf)
        return _logsumexp(x)

    def ess_gap(self, alpha: np.ndarray) -> np.ndarray:
        """log ESS_base − log ESS_teacher; decreasing in α."""
        return self.log_inv_ess(self.lt, alpha) - self.log_inv_ess(self.lb, alpha)


def _bisect(fn: Callable[[np.ndarray], np.ndarray], rows: int, lo: float, hi: float,
            increasing: bool, tol: float) -> np.ndarray:
    """Per row, the root of the monotone ``fn`` in [lo, hi]; the nearer end when it has none."""
    sign = 1.0 if increasing else -1.0
    a = np.full(rows, lo)
    b = np.full(rows, hi)
    f_lo = sign * fn(a)
    f_hi = sign * fn(b)
    below = f_lo >= 0  # root at or left of lo: clamp to lo
    above = f_hi <= 0  # root at or right of hi: clamp to hi
    for _ in range(max(1, math.ceil(math.log2(max(hi - lo, tol) / tol)))):
        mid = 0.5 * (a + b)
        neg = sign * fn(mid) < 0
        a = np.where(neg, mid, a)
        b = np.where(neg, b, mid)
    out = 0.5 * (a + b)
    out = np.where(above, hi, out)
    return np.where(below, lo, out)


def _check_range(alpha_min: float, alpha_max: float) -> None:
    if not 0.0 <= alpha_min <= alpha_max <= 1.0:
        raise ValueError(f"need 0 <= alpha_min <= alpha_max <= 1, got {alpha_min}, {alpha_max}")


def _to_logp(p: Any) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if (p < 0).any() or not np.isfinite(p).all():
        raise ValueError("probabilities must be finite and non-negative")
    with np.errstate(divide="ignore"):
        return np.log(p)


def _shape_out(x: np.ndarray, like: Any) -> float | np.ndarray:
    return float(x[0]) if np.ndim(like) == 1 else x


def kl_symmetry_alpha_logp(logp_base: np.ndarray, logp_teacher: np.ndarray, alpha_min: float = 0.0,
                           alpha_max: float = 1.0, tol: float = 1e-7) -> np.ndarray:
    """``alpha_kl_symmetry`` on log-probabilities of shape (rows, V); returns (rows,)."""
    _check_range(alpha_min, alpha_max)
    pair = _Pair.from_logp(logp_base, logp_teacher)
    return _bisect(pair.kl_gap, pair.lb.shape[0], alpha_min, alpha_max, True, tol)


def ess_balance_alpha_logp(logp_base: np.ndarray, logp_teacher: np.ndarray, alpha_min: float = 0.0,
                           alpha_max: float = 1.0, tol: float = 1e-7) -> np.ndarray:
    """``alpha_ess_balance`` on log-probabilities of shape (rows, V); returns (rows,)."""
    _check_range(alpha_min, alpha_max)
    pair = _Pair.from_logp(logp_base, logp_teacher)
    return _bisect(pair.ess_gap, pair.lb.shape[0], alpha_min, alpha_max, False, tol)


def entropy_alpha_logp(logp_base: np.ndarray, logp_teacher: np.ndarray, alpha_min: float = 0.0,
                       alpha_max: float = 1.0) -> np.ndarray:
    """``alpha_entropy`` on log-probabilities of shape (rows, V); returns (rows,)."""
    _check_range(alpha_min, alpha_max)
    hb = _entropy_logp(np.atleast_2d(logp_base))
    ht = _entropy_logp(np.atleast_2d(logp_teacher))
    total = hb + ht
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = np.where(total > 0, hb / np.where(total > 0, total, 1.0), 0.5)
    return np.clip(alpha, alpha_min, alpha_max)


def _entropy_logp(logp: np.ndarray) -> np.ndarray:
    logp = np.asarray(logp, dtype=np.float64)
    finite = np.isfinite(logp)
    return -np.sum(np.where(finite, np.exp(np.where(finite, logp, 0.0)) * np.where(finite, logp, 0.0), 0.0), axis=-1)


def alpha_kl_symmetry(p_base: Any, p_teacher: Any, alpha_min: float = 0.0, alpha_max: float = 1.0,
                      tol: float = 1e-7) -> float | np.ndarray:
    """The α in [alpha_min, alpha_max] where KL(q_α‖p_base) = KL(q_α‖p_teacher).

    ``p_base``, ``p_teacher``: probability vectors (V,) or rows (n, V). The gap
    KL(q_α‖p_base) − KL(q_α‖p_teacher) = E_{q_α}[log p_teacher − log p_base] increases
    with α (its derivative is a variance), from −KL(p_base‖p_teacher) at 0 to
    KL(p_teacher‖p_base) at 1, so the root in [0, 1] exists and bisection finds it;
    outside [alpha_min, alpha_max] the nearer end is returned.
    """
    out = kl_symmetry_alpha_logp(_to_logp(p_base), _to_logp(p_teacher), alpha_min, alpha_max, tol)
    return _shape_out(out, p_base)


def alpha_ess_balance(p_base: Any, p_teacher: Any, alpha_min: float = 0.0, alpha_max: float = 1.0,
                      tol: float = 1e-7) -> float | np.ndarray:
    """The α in [alpha_min, alpha_max] where ESS(p_base/q_α) = ESS(p_teacher/q_α).

    ESS is the normalised effective sample size of importance weights w = p/q under the
    proposal q: ESS = (E_q w)² / E_q w² = 1 / Σ_x p(x)²/q(x) ∈ (0, 1] (Kish's
    (Σw)²/(nΣw²) in the limit of many samples). log ESS_base − log ESS_teacher equals
    A(2−α) − A(−α) with A the (convex) log-partition of the mixture family, so it
    decreases in α, from ≥ 0 at α=0 to ≤ 0 at α=1: bisection, clamped like the KL rule.
    """
    out = ess_balance_alpha_logp(_to_logp(p_base), _to_logp(p_teacher), alpha_min, alpha_max, tol)
    return _shape_out(out, p_base)


def alpha_entropy(p_base: Any, p_teacher: Any, alpha_min: float = 0.0,
                  alpha_max: float = 1.0) -> float | np.ndarray:
    """α = H_base / (H_base + H_teacher), clamped (0.5 when both are deterministic).

    Trust the teacher in proportion to how unsure the base is and vice versa: the
    exponents satisfy α·H_teacher = (1−α)·H_base. Entropies (nats) of each model's full
    distribution.
    """
    out = entropy_alpha_logp(_to_logp(p_base), _to_logp(p_teacher), alpha_min, alpha_max)
    return _shape_out(out, p_base)


def geometric_mixture(p_base: Any, p_teacher: Any, alpha: float) -> np.ndarray:
    """q_α ∝ p_base^(1−α) · p_teacher^α on the common support (α = 0 or 1: that model alone)."""
    lb, lt = _to_logp(p_base), _to_logp(p_teacher)
    if alpha <= 0.0:
        return np.asarray(p_base, dtype=np.float64) / np.sum(p_base, axis=-1, keepdims=True)
    if alpha >= 1.0:
        return np.asarray(p_teacher, dtype=np.float64) / np.sum(p_teacher, axis=-1, keepdims=True)
    pair = _Pair.from_logp(lb, lt)
    q = np.exp(pair.log_mixture(np.full(pair.lb.shape[0], alpha)))
    return q[0] if np.ndim(p_base) == 1 else q


def choose_alpha_logp(method: str, logp_base: np.ndarray, logp_teacher: np.ndarray,
                      alpha_min: float, alpha_max: float, fixed_alpha: float | None = None) -> np.ndarray:
    """α per row for ``method`` (one of ``ALPHA_METHODS``) from log-probabilities (rows, V)."""
    pair = None if method in ("fixed", "entropy") else _Pair.from_logp(logp_base, logp_teacher)
    return _choose_alpha(method, pair, logp_base, logp_teacher, alpha_min, alpha_max, fixed_alpha)


def _choose_alpha(method: str, pair: _Pair | None, logp_base: np.ndarray, logp_teacher: np.ndarray,
                  alpha_min: float, alpha_max: float, fixed_alpha: float | None) -> np.ndarray:
    rows = np.atleast_2d(logp_base).shape[0]
    if method == "fixed":
        if fixed_alpha is None:
            raise ValueError("alpha_method='fixed' needs fixed_alpha")
        return np.full(rows, float(fixed_alpha))
    if method == "entropy":
        return entropy_alpha_logp(logp_base, logp_teacher, alpha_min, alpha_max)
    _check_range(alpha_min, alpha_max)
    if method == "kl_symmetry":
        return _bisect(pair.kl_gap, rows, alpha_min, alpha_max, True, ALPHA_TOL)
    if method == "ess_balance":
        return _bisect(pair.ess_gap, rows, alpha_min, alpha_max, False, ALPHA_TOL)
    raise ValueError(f"unknown alpha_method {method!r} (use one of {', '.join(ALPHA_METHODS)})")


# ===================================================================== local models


@dataclass
class LogitModel:
    """What the decoders here need from a local model: logits with a KV cache, and text.

    ``llama`` is an ``sgl.engine.llama.Llama``; ``vocab`` the ``Vocabulary`` of its
    logits; ``tokenizer`` a ``tokenizers.Tokenizer`` for prompts (special tokens such as
    ``<|im_start|>`` written in the prompt are recognised), or None to use ``vocab``.
    Build one with ``resolve_logit_model``.
    """

    llama: Any
    vocab: Any
    tokenizer: Any = None
    name: str = "model"
    source: Any = None  # the object this view was made from (e.g. the LocalModel)
    _sessions: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_vocab(self) -> int:
        return int(self.llama.config.vocab_size)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt (no BOS added; special-token names are special tokens)."""
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return self.vocab.encode(text)

    def encode_text(self, text: str) -> list[int]:
        """Canonical ids of generated text (special-token names stay plain text)."""
        return self.vocab.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.vocab.decode(ids).decode("utf-8", errors="replace")

    def session(self, capacity: int = 512) -> DecodeSession:
        """A fresh single-sequence decoding session with its own KV cache."""
        return DecodeSession(self, capacity)

    def complete(self, text: str, max_tokens: int = 64, temperature: float = 0.0,
                 stop: Sequence[str] = (), seed: int | None = None, session: str = "default") -> str:
        """The model's unconstrained continuation of ``text`` (a black-box style call).

        Calls with the same ``session`` name reuse the KV cache of the previous call's
        context as far as the new context starts with it.
        """
        with self._lock:
            sess = self._sessions.get(session)
            if sess is None:
                sess = self._sessions[session] = self.session()
            ids, _reason = sess.generate(self.encode_prompt(text), max_tokens, engine_sampler(temperature, seed=seed),
                                         stop_texts=tuple(stop))
        out = self.decode(ids)
        return _cut_at_stop(out, stop)

    def as_black_box(self, max_tokens: int = 64, temperature: float = 0.0,
                     stop: Sequence[str] = ()) -> Callable[[str], str]:
        """``fn(text) -> continuation`` over this model, with its own KV session."""
        name = f"black-box-{id(object())}"

        def fn(text: str) -> str:
            return self.complete(text, max_tokens, temperature, stop, session=name)

        return fn


def engine_sampler(temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int | None = None) -> Any:
    """The engine's `sgl.engine.sampler.Sampler` (one greedy rule, top-k and top-p for every
    decoder); a temperature at or below ``GREEDY_TEMPERATURE`` means argmax."""
    from sgl.engine.sampler import Sampler

    return Sampler(temperature if temperature > GREEDY_TEMPERATURE else 0.0, top_k, top_p, seed=seed)


def sample_rows(sampler: Any, logits: Any) -> Any:
    """One token id per row of ``logits`` ([B, V] tensor) from ``sampler``."""
    import torch

    return torch.tensor([sampler.sample(row) for row in logits.float()], dtype=torch.long)


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return text if cut < 0 else text[:cut]


class DecodeSession:
    """One sequence's KV cache, kept between calls.

    ``prefill(ids)`` runs only the part of ``ids`` after the longest common prefix with
    what the cache already holds (``KVCache.truncate`` drops the rest), which is how
    repeated calls on a growing text (black-box resumption, repairs) stay cheap. The
    engine has no shared prefix cache yet; this is per session.
    """

    def __init__(self, model: LogitModel, capacity: int = 512):
        self.model = model
        self.cache = model.llama.new_cache(capacity, batch=1)
        self.ids: list[int] = []
        self.reused_tokens = 0  # positions served from the cache, over all prefills
        self.computed_tokens = 0  # positions run through the model

    def prefill(self, ids: Sequence[int]) -> Any:
        """Logits ([V] float32) of the next token after ``ids``."""
        import torch

        ids = list(ids)
        if not ids:
            raise ValueError("cannot decode from an empty context")
        n = 0
        limit = min(len(ids) - 1, len(self.ids))  # always run one token to get its logits
        while n < limit and self.ids[n] == ids[n]:
            n += 1
        self.cache.truncate(n)
        self.reused_tokens += n
        self.computed_tokens += len(ids) - n
        with torch.inference_mode():
            logits = self.model.llama.forward(torch.tensor([ids[n:]]), self.cache)[0]
        self.ids = ids
        return logits

    def step(self, token: int) -> Any:
        """Append one token; the logits after it."""
        import torch

        with torch.inference_mode():
            logits = self.model.llama.forward(torch.tensor([[int(token)]]), self.cache)[0]
        self.ids.append(int(token))
        self.computed_tokens += 1
        return logits

    def generate(self, context: Sequence[int], max_tokens: int, sampler: Any = None, *,
                 matcher: Any = None, stop_texts: Sequence[str] = (), healed_prefix: bytes = b"",
                 should_stop: Callable[[list[int]], bool] | None = None) -> tuple[list[int], str]:
        """Sample up to ``max_tokens`` after ``context``; returns (new ids without EOS, reason).

        ``sampler``: an engine ``Sampler`` (`engine_sampler`; default greedy).
        ``matcher``: an ``sgl.constrain.Matcher`` already in the state after the
        context's constrained part; its mask is applied and it is advanced.
        ``healed_prefix``: token healing (the engine's ``HealingConstraint``): the
        generated bytes must begin with these bytes (the context's removed last token).
        ``should_stop(ids)`` is asked after every token. Reasons: "eos", "stop", "length".
        """
        from sgl.constrain import allocate_bitmask, apply_bitmask
        from sgl.engine.token_healing import HealingConstraint, HealingIndex

        vocab = self.model.vocab
        eos = set(vocab.eos_token_ids)
        sampler = sampler if sampler is not None else engine_sampler(0.0)
        healing = HealingConstraint(healed_prefix, HealingIndex.for_vocab(vocab)) if healed_prefix else None
        out: list[int] = []
        if max_tokens <= 0:
            return out, "length"
        logits = self.prefill(context)
        bitmask = allocate_bitmask(1, self.model.n_vocab) if matcher is not None or healing is not None else None
        for i in range(max_tokens):
            logits = logits.clone()
            if matcher is not None:
                matcher.fill_bitmask(bitmask, 0)
                apply_bitmask(logits, bitmask[0])
            if healing is not None and not healing.done:
                healing.fill_bitmask(bitmask, 0)
                apply_bitmask(logits, bitmask[0])
            token = sampler.sample(logits.float())
            if healing is not None:
                healing.advance(token)
            if token in eos:
                if matcher is not None:
                    matcher.advance(token)
                return out, "eos"
            if matcher is not None and not matcher.advance(token):
                raise RuntimeError(f"sampled token {token} that the constraint refuses")
            out.append(token)
            if stop_texts and any(s in self.model.decode(out) for s in stop_texts if s):
                return out, "stop"
            if should_stop is not None and should_stop(out):
                return out, "stop"
            if matcher is not None and matcher.is_terminated():
                return out, "eos"
            if i + 1 < max_tokens:
                logits = self.step(token)
        return out, "length"


@functools.lru_cache(maxsize=4)
def load_logit_model(path: str | None = None) -> LogitModel:
    """The model at ``path`` (``None``: SmolLM2-135M-Instruct), loaded once per process.

    Through ``sgl.backends.local.LocalModel`` when it is available (same vocabulary, EOS
    ids and weights as the local backend), else straight from the checkpoint.
    """
    try:
        from sgl.backends.local import LocalModel
    except ImportError:
        LocalModel = None
    if LocalModel is not None:
        return _adapt_local_model(LocalModel(path))
    from tokenizers import Tokenizer

    from sgl.constrain.vocab import Vocabulary
    from sgl.engine.llama import Llama
    from sgl.engine.model_loader import resolve_checkpoint

    ck = resolve_checkpoint(path)
    llama = Llama.from_folder(ck.folder)
    tok_file = ck.folder / "tokenizer.json"
    vocab = Vocabulary.from_tokenizer(str(tok_file), n_vocab=llama.config.vocab_size)
    return LogitModel(llama, vocab, Tokenizer.from_file(str(tok_file)), name=ck.folder.name)


def resolve_logit_model(model: Any = None) -> LogitModel:
    """A ``LogitModel`` from None (the default model), a path, a ``LogitModel``, a
    ``LocalModel``-like object (attributes holding a ``Llama`` and a tokenizer/vocabulary),
    or a ``(llama, vocab[, tokenizer])`` tuple.
    """
    import os

    if isinstance(model, LogitModel):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_logit_model(None if model is None else str(model))
    if isinstance(model, tuple):
        return LogitModel(*model)
    return _adapt_local_model(model)


def _find(obj: Any, names: Sequence[str], pred: Callable[[Any], bool]) -> Any:
    for name in names:
        cur = obj
        for part in name.split("."):
            cur = getattr(cur, part, None)
            if cur is None:
                break
        if cur is not None and pred(cur):
            return cur
    return None


def _adapt_local_model(obj: Any) -> LogitModel:
    """Duck-typed view of a ``LocalModel`` (the local backend) as a ``LogitModel``."""
    from sgl.constrain.vocab import Vocabulary
    from sgl.engine.llama import Llama

    llama = _find(obj, ("llama", "model", "runner.model", "engine.model", "model_runner.model",
                        "engine.runner.model"), lambda x: isinstance(x, Llama))
    if llama is None:
        raise TypeError(
            f"cannot use {type(obj).__name__} as a local model: no sgl.engine.llama.Llama found "
            "(expected an attribute .model / .llama / .runner.model)"
        )
    vocab = _find(obj, ("vocab", "vocabulary", "engine.vocab", "runner.vocab"), lambda x: isinstance(x, Vocabulary))
    tokenizer = _find(obj, ("tokenizer", "hf_tokenizer", "engine.tokenizer"),
                      lambda x: hasattr(x, "encode") and hasattr(x, "get_vocab_size"))
    if vocab is None:
        if tokenizer is None:
            raise TypeError(f"cannot use {type(obj).__name__} as a local model: no vocabulary or tokenizer")
        vocab = Vocabulary.from_tokenizer(tokenizer, n_vocab=llama.config.vocab_size)
    return LogitModel(llama, vocab, tokenizer, name=type(obj).__name__, source=obj)


def check_same_vocabulary(a: LogitModel, b: LogitModel) -> None:
    """Raise ValueError unless the two models' logits index the same tokens."""
    if a.n_vocab != b.n_vocab or a.vocab.n_vocab != b.vocab.n_vocab:
        raise ValueError(
            f"models do not share a vocabulary: {a.name} has {a.n_vocab} logits, {b.name} has {b.n_vocab}"
        )
    if a.vocab is not b.vocab and a.vocab.fingerprint != b.vocab.fingerprint:
        raise ValueError(
            f"models do not share a vocabulary: fingerprints {a.vocab.fingerprint[:12]} ({a.name}) "
            f"and {b.vocab.fingerprint[:12]} ({b.name}) differ"
        )


# ======================================================================= the sampler


@dataclass
class OptimalResult:
    """What ``OptimalSampler.generate`` returns; also readable as a dict (``r["alphas"]``).

    Per prompt: ``generated_texts``, ``generated_ids``, ``num_tokens``,
    ``finish_reasons``; with diagnostics, per generated token: ``alphas``,
    ``ess_ratios`` (normalised ESS of the weights p_teacher/q of the distribution
    actually sampled: how many teacher samples one draw from q is worth),
    ``ess_base`` (the same for p_base), ``kl_base`` = KL(q‖p_base) and
    ``kl_teacher`` = KL(q‖p_teacher).
    """

    generated_texts: list[str]
    generated_ids: list[list[int]]
    num_tokens: list[int]
    finish_reasons: list[str]
    alphas: list[list[float]] | None = None
    ess_ratios: list[list[float]] | None = None
    ess_base: list[list[float]] | None = None
    kl_base: list[list[float]] | None = None
    kl_teacher: list[list[float]] | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [k for k in self.__dataclass_fields__ if getattr(self, k) is not None]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.keys() else default


@dataclass
class StepMix:
    """One step of the mixture for a batch: what was sampled from and why."""

    logq: np.ndarray  # (B, V) log q of the distribution sampled from (before temperature)
    alpha: np.ndarray  # (B,)
    ess_teacher: np.ndarray  # (B,)
    ess_base: np.ndarray
    kl_base: np.ndarray
    kl_teacher: np.ndarray


class _BatchRun:
    """One model over a batch of prompts: left-padded prefill, then one token per row per step."""

    def __init__(self, model: LogitModel, prompts: list[list[int]], extra: int):
        import torch

        self.model = model
        width = max(len(p) for p in prompts)
        pad = [width - len(p) for p in prompts]
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, pad[i]:] = torch.tensor(p, dtype=torch.long)
        self.cache = model.llama.new_cache(width + extra + 1, batch=len(prompts))
        if any(pad):
            self.cache.pad = torch.tensor(pad, dtype=torch.long)
        with torch.inference_mode():
            self.logits = model.llama.forward(ids, self.cache)

    def step(self, tokens: Any) -> Any:
        import torch

        with torch.inference_mode():
            self.logits = self.model.llama.forward(tokens.view(-1, 1), self.cache)
        return self.logits


class OptimalSampler:
    """Sample from q ∝ p_base^(1−α)·p_teacher^α with α chosen per token.

    ``model_base``, ``model_teacher``: local models sharing a vocabulary (``LocalModel``,
    ``LogitModel``, a checkpoint path, or None for the default model; the same object may
    be both). ``alpha_method``: "kl_symmetry", "ess_balance", "entropy" or "fixed"
    (with ``fixed_alpha``, not clamped). α is clamped to [alpha_min, alpha_max].
    ``constraint_to_target``: sample only among the teacher's top tokens (top-k and/or
    nucleus top-p of p_teacher; ``target_top_k``/``target_top_p``, default top-p 0.95);
    giving either of those turns the restriction on too. ``teacher_prompt``: a prefix (e.g.
    a system message) added to each prompt for the teacher, or a function base prompt ->
    teacher prompt. ``base_temperature``/``teacher_temperature`` scale each model's logits
    before the mixture (the ``temperature`` of ``generate`` applies to q).
    """

    def __init__(self, model_base: Any, model_teacher: Any, alpha_method: str = "kl_symmetry",
                 alpha_min: float = 0.5, alpha_max: float = 1.0, fixed_alpha: float | None = None,
                 constraint_to_target: bool = False, target_top_k: int | None = None,
                 target_top_p: float | None = None, *, teacher_prompt: str | Callable[[str], str] | None = None,
                 base_temperature: float = 1.0, teacher_temperature: float = 1.0):
        if alpha_method not in ALPHA_METHODS:
            raise ValueError(f"unknown alpha_method {alpha_method!r} (use one of {', '.join(ALPHA_METHODS)})")
        if alpha_method == "fixed":
            if fixed_alpha is None or not 0.0 <= fixed_alpha <= 1.0:
                raise ValueError("alpha_method='fixed' needs 0 <= fixed_alpha <= 1")
        _check_range(alpha_min, alpha_max)
        if target_top_k is not None and target_top_k < 1:
            raise ValueError("target_top_k must be >= 1")
        if target_top_p is not None and not 0.0 < target_top_p <= 1.0:
            raise ValueError("target_top_p must be in (0, 1]")
        if base_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError("model temperatures must be positive")
        self.base = resolve_logit_model(model_base)
        self.teacher = self.base if model_teacher is model_base else resolve_logit_model(model_teacher)
        check_same_vocabulary(self.base, self.teacher)
        self.alpha_method = alpha_method
        self.alpha_min, self.alpha_max = alpha_min, alpha_max
        self.fixed_alpha = fixed_alpha
        self.restrict = constraint_to_target or target_top_k is not None or target_top_p is not None
        self.target_top_k = target_top_k
        self.target_top_p = target_top_p if (target_top_p is not None or target_top_k is not None) else 0.95
        self.teacher_prompt = teacher_prompt
        self.base_temperature, self.teacher_temperature = base_temperature, teacher_temperature

    @property
    def vocab(self) -> Any:
        return self.base.vocab

    # -- one step ---------------------------------------------------------------
    def mix(self, logits_base: Any, logits_teacher: Any, bitmask: np.ndarray | None = None) -> StepMix:
        """The mixture for one step from raw logits ([B, V] tensors or arrays)."""
        import torch

        lb_logits = torch.as_tensor(logits_base).double() / self.base_temperature
        lt_logits = torch.as_tensor(logits_teacher).double() / self.teacher_temperature
        lb_logits, lt_logits = lb_logits.reshape(-1, lb_logits.shape[-1]), lt_logits.reshape(-1, lt_logits.shape[-1])
        if bitmask is not None:
            from sgl.constrain import apply_bitmask

            apply_bitmask(lb_logits, bitmask)
            apply_bitmask(lt_logits, bitmask)
        lb = torch.log_softmax(lb_logits, dim=-1).numpy()
        lt = torch.log_softmax(lt_logits, dim=-1).numpy()
        pair = _Pair.from_logp(lb, lt)
        alpha = _choose_alpha(self.alpha_method, pair, lb, lt, self.alpha_min, self.alpha_max, self.fixed_alpha)
        logq = self._log_mixture(pair, lb, lt, alpha)
        if self.restrict:
            logq = self._restrict_to_target(logq, lt)
        return StepMix(logq, alpha, *self._diagnostics(logq, lb, lt))

    @staticmethod
    def _log_mixture(pair: _Pair, lb: np.ndarray, lt: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        logq = pair.log_mixture(np.clip(alpha, 0.0, 1.0))
        # the ends are exactly one model, on its own support (not the common one)
        logq = np.where((alpha <= 0.0)[:, None], lb, logq)
        return np.where((alpha >= 1.0)[:, None], lt, logq)

    def _restrict_to_target(self, logq: np.ndarray, lt: np.ndarray) -> np.ndarray:
        """Keep q only on the teacher's top-k / top-p tokens (the engine's truncation), renormalised."""
        import torch

        cut = engine_sampler(1.0, self.target_top_k or 0, self.target_top_p or 1.0, seed=0)
        kept = torch.stack([cut.probs(row) > 0 for row in torch.from_numpy(lt)]).numpy()
        keep = kept & np.isfinite(lt) & np.isfinite(logq)
        out = np.where(keep, logq, -np.inf)
        empty = ~keep.any(axis=-1)
        out[empty] = logq[empty]  # the teacher's top tokens all refused: keep q as it was
        return out - _logsumexp(out)[:, None]

    @staticmethod
    def _diagnostics(logq: np.ndarray, lb: np.ndarray, lt: np.ndarray) -> tuple[np.ndarray, ...]:
        """(ESS of p_teacher/q, ESS of p_base/q, KL(q‖p_base), KL(q‖p_teacher)) per row."""
        on = np.isfinite(logq)
        q = np.where(on, np.exp(np.where(on, logq, 0.0)), 0.0)

        def ess(logp: np.ndarray) -> np.ndarray:
            both = on & np.isfinite(logp)  # q > 0 but p = 0 adds nothing to Σ p²/q
            x = np.where(both, 2.0 * np.where(both, logp, 0.0) - np.where(both, logq, 0.0), -np.inf)
            return np.exp(-_logsumexp(x))

        def kl(logp: np.ndarray) -> np.ndarray:
            gap = np.where(on, np.where(on, logq, 0.0) - np.where(np.isfinite(logp), logp, -np.inf), 0.0)
            return np.sum(np.where(on, q * gap, 0.0), axis=-1)

        return ess(lt), ess(lb), kl(lb), kl(lt)

    # -- generation ----------------------------------------------------------------
    def _teacher_text(self, prompt: str) -> str:
        tp = self.teacher_prompt
        if tp is None:
            return prompt
        return tp(prompt) if callable(tp) else tp + prompt

    def _compile(self, constraint: Any) -> Any:
        from sgl.constrain import CompiledGrammar, compile_json_schema, compile_spec
        from sgl.types import ConstraintSpec

        vocab = self.vocab
        if constraint is None:
            return None
        if isinstance(constraint, CompiledGrammar):
            if constraint.vocab is None or constraint.vocab.fingerprint != vocab.fingerprint:
                return CompiledGrammar(constraint.grammar, vocab)
            return constraint
        if isinstance(constraint, Mapping):
            return compile_json_schema(dict(constraint), vocab)
        if isinstance(constraint, ConstraintSpec):
            return compile_spec(constraint, vocab)
        raise TypeError(f"constraint must be a ConstraintSpec, CompiledGrammar or JSON schema dict, "
                        f"not {type(constraint).__name__}")

    def generate(self, prompts: str | Sequence[str], max_tokens: int = 100, temperature: float = 1.0,
                 collect_diagnostics: bool = False, constraint: Any = None, seed: int | None = None, *,
                 teacher_prompts: Sequence[str] | None = None, top_k: int = 0, top_p: float = 1.0,
                 stop: Sequence[str] = ()) -> OptimalResult:
        """Generate a continuation of each prompt, batched; both models keep KV caches.

        ``constraint``: a ``ConstraintSpec``, ``CompiledGrammar`` or JSON-schema dict,
        enforced per sequence on both models' distributions before α is chosen.
        ``temperature`` (→ 0: argmax), ``top_k``, ``top_p`` apply to q. ``teacher_prompts``
        overrides the teacher's prompts (default: ``teacher_prompt`` applied to each).
        """
        import torch

        from sgl.constrain import Matcher, allocate_bitmask

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            return OptimalResult([], [], [], [])
        t_prompts = list(teacher_prompts) if teacher_prompts is not None else [self._teacher_text(p) for p in prompts]
        if len(t_prompts) != len(prompts):
            raise ValueError("teacher_prompts must have one entry per prompt")
        base_ids = [self.base.encode_prompt(p) for p in prompts]
        teacher_ids = [self.teacher.encode_prompt(p) for p in t_prompts]
        if any(not ids for ids in base_ids + teacher_ids):
            raise ValueError("prompts must not be empty")
        compiled = self._compile(constraint)
        matchers = [Matcher(compiled) for _ in prompts] if compiled is not None else None
        B = len(prompts)
        sampler = engine_sampler(temperature, top_k, top_p, seed)
        base_run = _BatchRun(self.base, base_ids, max_tokens)
        teacher_run = _BatchRun(self.teacher, teacher_ids, max_tokens)
        eos = set(self.vocab.eos_token_ids)
        pad_token = next(iter(eos), 0)
        out_ids: list[list[int]] = [[] for _ in range(B)]
        reasons = ["length"] * B
        active = [True] * B
        diag: dict[str, list[list[float]]] = {k: [[] for _ in range(B)] for k in
                                              ("alphas", "ess_ratios", "ess_base", "kl_base", "kl_teacher")}
        bitmask = allocate_bitmask(B, self.vocab.n_vocab) if matchers else None
        for step in range(max_tokens):
            if matchers:
                for i in range(B):
                    if active[i]:
                        matchers[i].fill_bitmask(bitmask, i)
                    else:
                        bitmask[i] = -1  # finished rows: anything, so no row is all -inf
            mix = self.mix(base_run.logits, teacher_run.logits, bitmask)
            tokens = sample_rows(sampler, torch.from_numpy(mix.logq))
            for i in range(B):
                if not active[i]:
                    tokens[i] = pad_token
                    continue
                n_before = len(out_ids[i])
                active[i], reasons[i] = self._accept(int(tokens[i]), out_ids[i],
                                                     matchers[i] if matchers else None, eos, stop)
                if collect_diagnostics and len(out_ids[i]) > n_before:  # one entry per token: not the EOS step
                    for key, arr in (("alphas", mix.alpha), ("ess_ratios", mix.ess_teacher),
                                     ("ess_base", mix.ess_base), ("kl_base", mix.kl_base),
                                     ("kl_teacher", mix.kl_teacher)):
                        diag[key][i].append(float(arr[i]))
            if not any(active):
                break
            if step + 1 < max_tokens:
                base_run.step(tokens)
                teacher_run.step(tokens)
        texts = []
        for i in range(B):
            text = self.base.decode(out_ids[i])
            if stop and reasons[i] == "stop":
                text = _cut_at_stop(text, stop)
            texts.append(text)
        result = OptimalResult(texts, out_ids, [len(x) for x in out_ids], reasons)
        if collect_diagnostics:
            for key, values in diag.items():
                setattr(result, key, values)
        return result

    def _accept(self, tok: int, ids: list[int], matcher: Any, eos: set[int],
                stop: Sequence[str]) -> tuple[bool, str]:
        """Record a sampled token; (still active, finish reason)."""
        if tok in eos:
            if matcher is not None:
                matcher.advance(tok)
            return False, "eos"
        if matcher is not None and not matcher.advance(tok):
            raise RuntimeError(f"sampled token {tok} that the constraint refuses")
        ids.append(tok)
        if stop and any(s in self.base.decode(ids) for s in stop if s):
            return False, "stop"
        if matcher is not None and matcher.is_terminated():
            return False, "eos"
        return True, "length"

    def generate_one(self, prompt: str, params: Any = None, constraint_spec: Any = None) -> Any:
        """The runtime's entry point: one ``gen`` call as a ``GenerateResult``.

        ``params``: ``sgl.backends.base.SamplingParams`` (max_tokens, temperature, top_k,
        top_p, seed, stop are honoured); ``constraint_spec``: ``ConstraintSpec`` or None.
        Diagnostics go to ``meta`` ("alphas", "ess_ratios", "alpha_method").
        """
        from sgl.backends.base import GenerateResult
        from sgl.types import SamplingParams

        params = params or SamplingParams()
        stop = tuple(params.stop) if not isinstance(params.stop, str) else (params.stop,)
        r = self.generate([prompt], max_tokens=params.max_tokens, temperature=params.temperature,
                          collect_diagnostics=True, constraint=constraint_spec, seed=params.seed,
                          top_k=params.top_k, top_p=params.top_p, stop=stop)
        meta = {"alpha_method": self.alpha_method, "alphas": r.alphas[0], "ess_ratios": r.ess_ratios[0],
                "sampler": "optimal"}
        return GenerateResult(text=r.generated_texts[0], token_ids=r.generated_ids[0],
                              finish_reason=r.finish_reasons[0], meta=meta)
