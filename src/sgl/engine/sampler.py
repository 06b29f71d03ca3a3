"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p,
OpenAI/SGLang frequency and presence penalties over the tokens generated so far, and
the HF/SGLang repetition penalty over the prompt and the generated tokens.

One `Sampler` per request: it owns the request's ``torch.Generator``, so a seeded
request gives the same tokens whatever else runs in the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Sampler:
    """Sampling settings of one request, with its own random generator.

    ``temperature == 0`` (or ``top_k == 1``) is greedy decoding. ``seed=None`` seeds
    the generator from the OS, so unseeded requests differ from run to run.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    seed: int | None = None
    device: str | torch.device = "cpu"
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        self.generator = torch.Generator(device=self.device)
        if self.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(self.seed)

    @property
    def penalized(self) -> bool:
        return self.frequency_penalty != 0.0 or self.presence_penalty != 0.0 or self.repetition_penalty != 1.0

    def apply_penalties(self, logits: torch.Tensor, tokens: Sequence[int], prompt_len: int = 0) -> None:
        """Penalize (in place) the logits of tokens seen before.

        ``tokens`` is the prompt (its first ``prompt_len`` ids) and what was generated.
        The repetition penalty (HF's and SGLang's rule) divides a positive logit and
        multiplies a negative one by ``repetition_penalty``, for every token id in the
        prompt or the output. ``frequency_penalty`` per occurrence in the output plus
        ``presence_penalty`` once (OpenAI's definition) are then subtracted.
        """
        apply_penalties_batch(logits[None], [tokens], [prompt_len], [self])

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    def sample(self, logits: torch.Tensor, host: np.ndarray | None = None) -> int:
        """Pick a token id from one row of logits (``[V]``, float32; may hold -inf).

        ``host``: a numpy view of the same row, if the caller has one: greedy decoding
        then takes numpy's argmax (the same id: the first maximum), whose short code path
        is cheaper than torch's right after a forward pass has flushed the CPU caches
        (docs/benchmarks.md, h11-stall)."""
        if self.greedy:
            return int(torch.argmax(logits) if host is None else host.argmax())
        return int(torch.multinomial(self.probs(logits), 1, generator=self.generator))

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """The distribution actually sampled from, after temperature and truncation."""
        x = logits / self.temperature
        vocab = x.shape[-1]
        if 0 < self.top_k < vocab:
            kth = torch.topk(x, self.top_k).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p < 1.0:
            x = _top_p(x, self.top_p)
        probs = torch.softmax(x, dim=-1)
        if self.min_p > 0.0:
            probs = probs.masked_fill(probs < self.min_p * probs.max(), 0.0)
        return probs


def apply_penalties_batch(logits: torch.Tensor, tokens: Sequence[Sequence[int]], prompt_lens: Sequence[int],
                          samplers: Sequence[Sampler]) -> None:
    """`Sampler.apply_penalties` for the rows of ``logits`` (``[B, V]``) in one pass."""
    if not tokens:
        return
    vocab, device = logits.shape[-1], logits.device
    dtype = logits.dtype
    rep_row = [i for i, s in enumerate(samplers) if s.repetition_penalty != 1.0]
    if rep_row:
        seen = _counts([list(tokens[i]) for i in rep_row], vocab, device, dtype) > 0
        pen = torch.tensor([samplers[i].repetition_penalty for i in rep_row], dtype=dtype, device=device)[:, None]
        idx = torch.tensor(rep_row, device=device)
        x = logits[idx]
        scaled = torch.where(x > 0, x / pen, x * pen)
        logits[idx] = torch.where(seen, scaled, x)
    out_row = [i for i, s in enumerate(samplers) if s.frequency_penalty or s.presence_penalty]
    if out_row:  # counts of each id in each row's output
        ids = [list(tokens[i][prompt_lens[i]:]) for i in out_row]
        counts = _counts(ids, vocab, device, dtype)
        freq = torch.tensor([samplers[i].frequency_penalty for i in out_row], dtype=dtype, device=device)[:, None]
        pres = torch.tensor([samplers[i].presence_penalty for i in out_row], dtype=dtype, device=device)[:, None]
        idx = torch.tensor(out_row, device=device)
        logits[idx] -= freq * counts + pres * (counts > 0).to(dtype)


def _counts(ids: list[list[int]], vocab: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """``[len(ids), vocab]``: how often each id occurs in each list (ids >= vocab ignored)."""
    out = torch.zeros(len(ids), vocab, dtype=dtype, device=device)
    for r, row in enumerate(ids):
        if row:
            t = torch.as_tensor(row, dtype=torch.long, device=device)
            t = t[t < vocab]
            out[r].index_add_(0, t, torch.ones(t.shape[0], dtype=dtype, device=device))
    return out


def _top_p(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches ``top_p``."""
    sorted_x, order = torch.sort(x, descending=True)
    p = torch.softmax(sorted_x, dim=-1)
    # A token is dropped when the tokens before it already reach top_p (the first stays).
    drop_sorted = (p.cumsum(-1) - p) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return x.masked_fill(drop, float("-inf"))


def token_logprob(logits: torch.Tensor, token_id: int) -> float:
    """log p(token) under the model's own distribution (no temperature, no masks)."""
    return float(logits[token_id] - torch.logsumexp(logits, dim=-1))


def top_logprobs(logits: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The ``k`` most likely tokens and their log p under the model's own distribution."""
    logp = logits.float() - torch.logsumexp(logits.float(), dim=-1)
    values, ids = torch.topk(logp, min(k, logp.shape[-1]))
    return [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
