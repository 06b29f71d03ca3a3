"""The α rules of two-model "optimal sampling" (`optimal.OptimalSampler`).

The sampler draws from q_α(x) ∝ p_base(x)^(1-α) · p_teacher(x)^α with α chosen per token
from the two distributions (see ``docs/decoding.md`` for the rules and why they are well
defined):

* ``kl_symmetry``: the α where KL(q_α‖p_base) = KL(q_α‖p_teacher) (the Chernoff point);
* ``ess_balance``: the α where importance sampling from q_α is equally efficient for
  either target: ESS(p_base/q_α) = ESS(p_teacher/q_α);
* ``entropy``: α = H_base / (H_base + H_teacher);
* ``fixed``: a constant α.

The rules are pure functions on probability vectors (``alpha_kl_symmetry`` ...) or on
log-probability rows (``*_alpha_logp``), tested against a grid search; nothing here
needs a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ALPHA_METHODS = ("kl_symmetry", "ess_balance", "entropy", "fixed")
ALPHA_TOL = 1e-6  # bisection tolerance while sampling (~20 halvings)

# Internally everything works on log-probabilities of shape (rows, V) on the *common
# support* of the two distributions (tokens both give positive probability), each
# renormalised there: for 0 < α < 1 the mixture lives on that set only, and under a
# constraint both models are masked identically, so nothing is lost.


def logsumexp_rows(x: np.ndarray) -> np.ndarray:
    """Row-wise log Σ exp over the last axis; rows must have a finite entry."""
    m = np.max(x, axis=-1, keepdims=True)
    with np.errstate(under="ignore"):
        return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


@dataclass
class LogPair:
    """Two distributions on their common support, as log-probabilities (rows, V)."""

    lb: np.ndarray  # log p_base, 0 outside the support (never read there)
    lt: np.ndarray  # log p_teacher, likewise
    support: np.ndarray  # bool (rows, V)

    @classmethod
    def from_logp(cls, logp_base: np.ndarray, logp_teacher: np.ndarray) -> LogPair:
        lb = np.atleast_2d(np.asarray(logp_base, dtype=np.float64))
        lt = np.atleast_2d(np.asarray(logp_teacher, dtype=np.float64))
        if lb.shape != lt.shape:
            raise ValueError(f"distributions differ in shape: {lb.shape} vs {lt.shape}")
        support = np.isfinite(lb) & np.isfinite(lt)
        if not support.any(axis=-1).all():
            raise ValueError("the two distributions share no token with positive probability")
        lb = np.where(support, lb, -np.inf)
        lt = np.where(support, lt, -np.inf)
        lb = lb - logsumexp_rows(lb)[:, None]
        lt = lt - logsumexp_rows(lt)[:, None]
        return cls(np.where(support, lb, 0.0), np.where(support, lt, 0.0), support)

    def log_mixture(self, alpha: np.ndarray) -> np.ndarray:
        """log q_α per row (normalised), -inf outside the support."""
        a = np.asarray(alpha, dtype=np.float64).reshape(-1, 1)
        x = np.where(self.support, (1.0 - a) * self.lb + a * self.lt, -np.inf)
        return x - logsumexp_rows(x)[:, None]

    def kl_gap(self, alpha: np.ndarray) -> np.ndarray:
        """KL(q‖p_base) − KL(q‖p_teacher) = E_q[log p_teacher − log p_base]; increasing in α."""
        q = np.exp(self.log_mixture(alpha))
        return np.sum(q * (self.lt - self.lb), axis=-1)

    def log_inv_ess(self, logp: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """log(1 / ESS) of weights p/q_α under q_α: log Σ p²/q_α."""
        logq = self.log_mixture(alpha)
        x = np.where(self.support, 2.0 * logp - logq, -np.inf)
        return logsumexp_rows(x)

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


def check_alpha_range(alpha_min: float, alpha_max: float) -> None:
    """ValueError unless 0 <= alpha_min <= alpha_max <= 1."""
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


def entropy_alpha_logp(logp_base: np.ndarray, logp_teacher: np.ndarray, alpha_min: float = 0.0,
                       alpha_max: float = 1.0) -> np.ndarray:
    """``alpha_entropy`` on log-probabilities of shape (rows, V); returns (rows,)."""
    check_alpha_range(alpha_min, alpha_max)
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
    out = choose_alpha_logp("kl_symmetry", _to_logp(p_base), _to_logp(p_teacher), alpha_min, alpha_max, tol=tol)
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
    out = choose_alpha_logp("ess_balance", _to_logp(p_base), _to_logp(p_teacher), alpha_min, alpha_max, tol=tol)
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


def choose_alpha_logp(method: str, logp_base: np.ndarray, logp_teacher: np.ndarray, alpha_min: float,
                      alpha_max: float, fixed_alpha: float | None = None, tol: float = ALPHA_TOL) -> np.ndarray:
    """α per row for ``method`` (one of ``ALPHA_METHODS``) from log-probabilities (rows, V)."""
    pair = None if method in ("fixed", "entropy") else LogPair.from_logp(logp_base, logp_teacher)
    return choose_alpha(method, pair, logp_base, logp_teacher, alpha_min, alpha_max, fixed_alpha, tol)


def choose_alpha(method: str, pair: LogPair | None, logp_base: np.ndarray, logp_teacher: np.ndarray,
                 alpha_min: float, alpha_max: float, fixed_alpha: float | None, tol: float = ALPHA_TOL) -> np.ndarray:
    """``choose_alpha_logp`` given the pair already built (None for "fixed" and "entropy")."""
    rows = np.atleast_2d(logp_base).shape[0]
    if method == "fixed":
        if fixed_alpha is None:
            raise ValueError("alpha_method='fixed' needs fixed_alpha")
        return np.full(rows, float(fixed_alpha))
    if method == "entropy":
        return entropy_alpha_logp(logp_base, logp_teacher, alpha_min, alpha_max)
    check_alpha_range(alpha_min, alpha_max)
    if method == "kl_symmetry":
        return _bisect(pair.kl_gap, rows, alpha_min, alpha_max, True, tol)
    if method == "ess_balance":
        return _bisect(pair.ess_gap, rows, alpha_min, alpha_max, False, tol)
    raise ValueError(f"unknown alpha_method {method!r} (use one of {', '.join(ALPHA_METHODS)})")
