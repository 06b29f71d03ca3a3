"""Sampler-aware lazy masking: ask the matcher about likely tokens instead of masking them all.

The full path builds the constraint's mask over the whole vocabulary, sets disallowed
logits to -inf and samples with `Sampler`. The mask can walk the whole vocabulary on a
cache miss, while the token chosen is nearly always one of the few most likely ones, and
asking about one token (`Matcher.accepts_token`) is cheap. `sample_with_lazy_mask`
samples from exactly the distribution of the full path, or says it cannot:

* greedy: the most likely token the matcher accepts; ties go to the lowest id, as
  ``torch.argmax`` on the masked logits does;
* top-k: the k most likely *allowed* tokens (with any tied with the k-th, which the
  full path's ``x < kth`` test keeps too), found by walking the tokens in descending
  order; `Sampler.probs` on just those logits then applies temperature, top-p and min-p
  exactly as on the masked vector, where every other logit is -inf;
* temperature alone (with min-p or not): rejection sampling from the unmasked
  distribution. A draw of an already refused token is drawn again, so every draw
  comes from the distribution with the refused tokens removed; the accepted token
  follows the masked distribution. min-p is relative to the best *allowed* token,
  found first by the greedy walk;
* top-p < 1 without top-k: not handled. The nucleus of the masked distribution depends
  on the total allowed mass, which only the full mask gives (bounds from the tokens
  seen could settle it sometimes; not done), so it falls back.

The random draws differ from the full path's, the distribution does not (up to float
rounding exactly at a top-p or min-p boundary: the full path normalises over the whole
vector, this over the candidates). Every rule falls back (``token=None``: build the
full mask) rather than guess: when ``max_candidates`` tokens were checked without an
answer, when the walk meets a NaN or only -inf logits are left, when the draws run out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .sampler import Sampler

if TYPE_CHECKING:
    from sgl.constrain import Matcher

FIRST_CHUNK = 8  # the walk's first torch.topk; later chunks grow 4x
DRAWS_PER_CANDIDATE = 8  # rejection sampling: at most this many draws per checkable token
DRAW_BATCH = 16


@dataclass
class LazyResult:
    """The token chosen (None: build the full mask) and how many tokens the matcher was asked."""

    token: int | None
    candidates_checked: int
    fell_back: bool


def sample_with_lazy_mask(
    logits: torch.Tensor,
    sampler: Sampler,
    matcher: Matcher,
    max_candidates: int = 32,
) -> LazyResult:
    """Sample one token from ``logits`` (``[V]``) under ``matcher``'s constraint, lazily.

    The distribution is the full path's: disallowed ids set to -inf, then
    ``sampler.sample`` (banned ids are -inf in ``logits`` already: the step bans them).
    At most ``max_candidates`` distinct tokens are checked with `Matcher.accepts_token`;
    ``token=None`` means the caller must build the full mask.
    ``logits`` is not modified; the matcher does not advance.
    """
    check = _Checker(matcher, max_candidates)
    if sampler.greedy:
        token = _greedy(logits, check)
    elif 0 < sampler.top_k < logits.shape[-1]:
        token = _top_k(logits, sampler, check)
    elif sampler.top_p < 1.0:
        token = None  # see the module docstring: needs the allowed mass
    else:
        token = _rejection(logits, sampler, check)
    return LazyResult(token, len(check.answers), token is None)


class _Checker:
    """Asks the matcher about tokens, remembering answers."""

    def __init__(self, matcher: Matcher, budget: int) -> None:
        self.matcher = matcher
        self.budget = budget
        self.answers: dict[int, bool] = {}

    def __call__(self, token: int) -> bool | None:
        """Is ``token`` allowed? None once the budget is spent."""
        known = self.answers.get(token)
        if known is not None:
            return known
        if len(self.answers) >= self.budget:
            return None
        ok = self.answers[token] = self.matcher.accepts_token(token)
        return ok


def _descending(
    logits: torch.Tensor, temperature: float | None = None
) -> Iterator[tuple[int, float]]:
    """Token ids by descending logit, with ``logit / temperature`` (or the logit).

    The division runs on the chunk's float tensor, the same operation as the full
    path's ``logits / temperature``, so equal (tied) values stay equal. Ties may be cut
    differently by two ``topk`` calls; ids already given are skipped.
    """
    vocab = logits.shape[-1]
    n, given = min(FIRST_CHUNK, vocab), set()
    while True:
        values, ids = torch.topk(logits, n)
        if temperature is not None:
            values = values / temperature
        for tok, v in zip(ids.tolist(), values.tolist(), strict=True):
            if tok not in given:
                given.add(tok)
                yield tok, v
        if n == vocab:
            return
        n = min(n * 4, vocab)


def _best_allowed(
    walk: Iterator[tuple[int, float]], check: _Checker, k: int
) -> list[tuple[int, float]] | None:
    """The ``k`` best allowed tokens and every allowed one tied with the k-th; None if unsure.

    Past the last finite value only -inf logits are left, which the full path gives
    probability 0: what was found by then is the whole support (if anything was).
    """
    found: list[tuple[int, float]] = []
    for tok, v in walk:
        if v != v:  # NaN: the full path's argmax / softmax would see it; do not guess
            return None
        if len(found) >= k and v < found[-1][1]:
            return found
        if v == float("-inf"):
            break
        ok = check(tok)
        if ok is None:
            return None
        if ok:
            found.append((tok, v))
    return found or None


def _greedy(logits: torch.Tensor, check: _Checker) -> int | None:
    found = _best_allowed(_descending(logits), check, 1)
    return None if found is None else min(tok for tok, _ in found)  # torch.argmax: the first of tied maxima


def _top_k(logits: torch.Tensor, sampler: Sampler, check: _Checker) -> int | None:
    found = _best_allowed(_descending(logits, sampler.temperature), check, sampler.top_k)
    if found is None:
        return None
    ids = torch.tensor([tok for tok, _ in found], device=logits.device)
    # Outside these ids the full path's masked, truncated logits are all -inf: the
    # sampler's own temperature / top-p / min-p on them give the same distribution.
    probs = sampler.probs(logits[ids])
    pick = torch.multinomial(probs, 1, generator=sampler.generator)
    return int(ids[pick])


def _rejection(logits: torch.Tensor, sampler: Sampler, check: _Checker) -> int | None:
    """Temperature (and min-p) sampling: draw from the unmasked distribution until allowed."""
    weights = _unmasked_weights(logits, sampler, check)
    if weights is None:
        return None
    cdf = np.cumsum(weights, dtype=np.float64)
    total = float(cdf[-1])
    if not 0.0 < total < float("inf"):
        return None
    refused: set[int] = set()
    for _ in range(0, check.budget * DRAWS_PER_CANDIDATE, DRAW_BATCH):
        u = torch.rand(DRAW_BATCH, dtype=torch.float64, generator=sampler.generator)
        for tok in np.searchsorted(cdf, u.numpy() * total, side="right").tolist():
            if tok >= len(cdf) or tok in refused:
                continue  # u * total rounded up to total; or a token known to be refused
            ok = check(tok)
            if ok is None:
                return None
            if ok:
                return tok
            refused.add(tok)
    return None


def _unmasked_weights(logits: torch.Tensor, sampler: Sampler, check: _Checker) -> np.ndarray | None:
    """Unnormalised probabilities before the mask, min-p applied; None if unsure."""
    x = logits.detach().to("cpu", torch.float32).numpy()
    # numpy, single-threaded: torch's parallel elementwise ops stall badly on a busy CPU
    z = x / np.float32(sampler.temperature)
    top = z.max()
    if not np.isfinite(top):  # all -inf, or a NaN somewhere (max propagates it)
        return None
    weights = np.exp(z - top)
    if sampler.min_p > 0.0:
        best = _best_allowed(_descending(logits), check, 1)
        if best is None:
            return None
        # p < min_p * p_best, with the masked softmax's normaliser cancelled on both sides
        weights[weights < sampler.min_p * weights[best[0][0]]] = 0.0
    return weights
