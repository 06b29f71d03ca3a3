"""Speculative decoding for one sequence: a cheap drafter proposes, the target verifies.

Each step a `Drafter` proposes up to ``k`` tokens; the target model scores the pending
token plus all drafts in ONE forward pass (``all_logits=True``), keeps the longest
acceptable prefix, adds one token of its own (the correction, or a bonus token when
every draft was accepted), and both KV caches roll back to what was accepted.

* Greedy (``sampler.greedy``): a draft is kept while it equals the target's argmax,
  so the output is exactly plain greedy decoding (up to float rounding differences
  between a batched and a one-token forward pass).
* Sampling: rejection sampling (Leviathan et al., 2023, "Fast Inference from
  Transformers via Speculative Decoding"): draft ``x`` drawn from ``q`` is accepted with
  probability ``min(1, p(x) / q(x))``; on rejection the token is drawn from
  ``normalize(max(0, p - q))``. ``p`` and ``q`` are what `Sampler.probs` gives
  (temperature, top-k, top-p, min-p, constraint mask applied), so the output has the
  same distribution as plain sampling. The n-gram drafter is deterministic: its ``q``
  is a point mass on the proposed token.
* Constraints: drafters propose under the `Matcher`'s mask, and the target's ``p`` at
  each verified position is masked with the matcher state after the tokens before it.

Masking, end checks (EOS, stop tokens, stop strings, constraint complete, length) and
the recording of tokens are the engine's own `step.SeqState`; this module adds only
drafting, the verification pass and the acceptance rule. `plain_generate` is the
non-speculative loop over the same state; tests and ``bench/speculative.py`` compare
against it.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sgl.constrain.torch_utils import apply_bitmask

from .sampler import Sampler
from .step import SeqState, StepContext, plain_params

if TYPE_CHECKING:
    import numpy as np

    from sgl.constrain import Matcher

    from .llama import Llama


@dataclass
class Draft:
    """Proposed tokens and, for sampled drafts, the distributions they were drawn from.

    ``q`` is ``[len(tokens), vocab]`` (the drafter's `Sampler.probs`), or None when the
    proposal is deterministic (a point mass on each token) or decoding is greedy.
    """

    tokens: list[int] = field(default_factory=list)
    q: torch.Tensor | None = None


@dataclass
class SpecResult:
    """What one speculative (or plain) generation produced, with its counters.

    ``forward_passes`` counts target forward passes after the prefill (one per emitted
    token for plain decoding). ``proposed`` / ``accepted`` count draft tokens.
    """

    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "eos" | "stop" | "length" | "error"
    text: str = ""  # the generated text, cut at a stop string
    forward_passes: int = 0
    proposed: int = 0
    accepted: int = 0
    prefill_time_s: float = 0.0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    error: str | None = None

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        """Emitted tokens per target forward pass (1.0 for plain decoding)."""
        return len(self.token_ids) / self.forward_passes if self.forward_passes else 0.0


# ------------------------------------------------------------------------- drafters


class Drafter(ABC):
    """Proposes draft tokens for one sequence at a time.

    The decode loop calls `start` once, then per step `propose` with the whole token
    history (prompt + generated), then `rollback` with how many leading history tokens
    are confirmed, so stateful drafters can drop what the target rejected.
    """

    end_ids: frozenset[int] = frozenset()

    def start(self, target: Llama, prompt_ids: Sequence[int], end_ids: Collection[int] = (),
              capacity: int = 0) -> None:
        """Begin a sequence: ``end_ids`` (EOS, stop tokens) end a proposal early."""
        self.end_ids = frozenset(end_ids)

    @abstractmethod
    def propose(self, history: Sequence[int], k: int, sampler: Sampler,
                matcher: Matcher | None = None) -> Draft:
        """Up to ``k`` tokens likely to follow ``history``, each allowed by ``matcher``.

        ``matcher`` is in the state after ``history`` and must not be changed (probe a copy).
        """

    def rollback(self, n_tokens: int) -> None:  # noqa: B027 - stateless drafters keep nothing
        """Only the first ``n_tokens`` tokens of the history are confirmed; forget the rest."""


class CachedSequence:
    """One sequence's contiguous KV cache, kept between calls: a new history runs only
    what follows its longest common prefix with the tokens the cache already holds."""

    def __init__(self, model: Llama, capacity: int, n_layers: int | None = None) -> None:
        self.model, self.n_layers = model, n_layers
        self.cache = model.new_cache(capacity, n_layers=n_layers)
        self.ids: list[int] = []  # the tokens whose keys/values are in the cache

    def rollback(self, n_tokens: int) -> None:
        """Keep only the first ``n_tokens`` tokens in the cache."""
        n = min(n_tokens, len(self.ids))
        del self.ids[n:]
        self.cache.truncate(n)

    def catch_up(self, history: Sequence[int]) -> torch.Tensor:
        """Logits ``[V]`` after ``history``: keep the cached common prefix, feed the rest."""
        keep = min(_common_prefix(self.ids, history), len(history) - 1)  # at least one token must run to get logits
        self.rollback(keep)
        return self.feed(list(history[keep:]))

    def feed(self, ids: list[int]) -> torch.Tensor:
        """Run ``ids`` through the model; return the last position's logits ``[V]``."""
        with torch.inference_mode():
            logits = self.model.forward(torch.tensor([ids], device=self.model.device), self.cache,
                                        n_layers=self.n_layers)[0]
        self.ids.extend(ids)
        return logits


class _LlamaDrafter(Drafter):
    """A drafter that runs a `Llama` (whole, or its first layers) with its own cache."""

    def __init__(self, model: Llama, n_layers: int | None = None) -> None:
        self.model = model
        self.n_layers = n_layers
        self.seq: CachedSequence | None = None
        self._bitmask: np.ndarray | None = None

    def start(self, target: Llama, prompt_ids: Sequence[int], end_ids: Collection[int] = (),
              capacity: int = 0) -> None:
        super().start(target, prompt_ids, end_ids, capacity)
        check_vocab(target, self.model)
        self.seq = CachedSequence(self.model, max(capacity, len(prompt_ids) + 1), self.n_layers)
        if len(prompt_ids) > 1:  # the last prompt token is fed by the first propose
            self.seq.feed(list(prompt_ids[:-1]))

    def rollback(self, n_tokens: int) -> None:
        self.seq.rollback(n_tokens)

    def propose(self, history: Sequence[int], k: int, sampler: Sampler,
                matcher: Matcher | None = None) -> Draft:
        if self.seq is None:
            raise RuntimeError("call start() before propose()")
        logits = self.seq.catch_up(history)
        probe = matcher.copy() if matcher is not None else None
        draft = Draft()
        qs: list[torch.Tensor] = []
        for step in range(k):
            if probe is not None and not self._mask(logits, probe):
                break
            if sampler.greedy:
                tok = int(torch.argmax(logits))
            else:
                q = sampling_probs(sampler, logits)
                tok = int(torch.multinomial(q, 1, generator=sampler.generator))
                qs.append(q)
            if probe is not None and not probe.advance(tok):
                qs = qs[: len(draft.tokens)]
                break
            draft.tokens.append(tok)
            if tok in self.end_ids or step == k - 1:
                break  # the last draft is never fed: the target may reject it anyway
            logits = self.seq.feed([tok])
        draft.q = torch.stack(qs) if qs else None
        return draft

    def _mask(self, logits: torch.Tensor, matcher: Matcher) -> bool:
        """Apply ``matcher``'s mask in place; False when it allows nothing (stop drafting)."""
        if matcher.is_terminated():
            return False
        if self._bitmask is None:
            from sgl.constrain import allocate_bitmask

            self._bitmask = allocate_bitmask(1, logits.shape[-1])
        matcher.fill_bitmask(self._bitmask, 0)
        if not self._bitmask.any():
            return False
        apply_bitmask(logits, self._bitmask)
        return True


class ModelDrafter(_LlamaDrafter):
    """A second (smaller) local model with the same vocabulary drafts the tokens."""

    def __init__(self, model: Llama) -> None:
        super().__init__(model)


class EarlyExitDrafter(_LlamaDrafter):
    """The target's own first ``n_layers`` layers (then its final norm + lm_head) draft.

    It keeps a separate, smaller cache (``new_cache(n_layers=...)``): the target's
    cache holds the full model's keys, which differ from the truncated model's only
    in the later layers, but sharing it would tie the two rollbacks together.
    """

    def __init__(self, target: Llama, n_layers: int) -> None:
        total = target.config.num_hidden_layers
        if not 1 <= n_layers < total:
            raise ValueError(f"n_layers must be in [1, {total - 1}] for a {total}-layer model, got {n_layers}")
        super().__init__(target, n_layers)


class NgramDrafter(Drafter):
    """Prompt lookup: copy what followed the latest earlier occurrence of the last tokens.

    Looks for the last ``n`` tokens of the history earlier in it (prompt + generated),
    falling back to shorter suffixes down to ``min_n``, and proposes the tokens that
    followed. Deterministic, so its ``q`` is a point mass. Cheap and effective when
    the output copies from the prompt (extraction, editing, code).
    """

    def __init__(self, n: int = 3, min_n: int = 1) -> None:
        if not 1 <= min_n <= n:
            raise ValueError(f"need 1 <= min_n <= n, got n={n}, min_n={min_n}")
        self.n = n
        self.min_n = min_n

    def propose(self, history: Sequence[int], k: int, sampler: Sampler,
                matcher: Matcher | None = None) -> Draft:
        tokens = self.lookup(history, k)
        probe = matcher.copy() if matcher is not None else None
        out: list[int] = []
        for tok in tokens:
            if probe is not None and not probe.advance(tok):
                break  # the first refused token ends the proposal
            out.append(tok)
            if tok in self.end_ids:
                break
        return Draft(out)

    def lookup(self, history: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` tokens after the latest earlier match of the longest suffix found."""
        h = list(history)
        for m in range(min(self.n, len(h) - 1), self.min_n - 1, -1):
            start = _last_occurrence(h, h[-m:], len(h) - m - 1)
            if start >= 0:
                return h[start + m : start + m + k]
        return []


def _common_prefix(a: list[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if a[:n] == list(b[:n]):  # the usual case, checked in one C-level comparison
        return n
    return next(i for i in range(n) if a[i] != b[i])


def _last_occurrence(h: list[int], pattern: list[int], last_start: int) -> int:
    """The largest ``i <= last_start`` with ``h[i:i+len(pattern)] == pattern``, or -1."""
    first, m = pattern[0], len(pattern)
    for i in range(last_start, -1, -1):
        if h[i] == first and h[i : i + m] == pattern:
            return i
    return -1


def sampling_probs(sampler: Sampler, logits: torch.Tensor) -> torch.Tensor:
    """`Sampler.probs`, normalised: min-p zeroes tokens without renormalising, and the
    acceptance ratio ``p(x) / q(x)`` needs true probabilities."""
    probs = sampler.probs(logits)
    return probs / probs.sum()


def check_vocab(target: Llama, draft: Llama) -> None:
    """Raise ValueError unless the two models share the vocabulary size."""
    vt, vd = target.config.vocab_size, draft.config.vocab_size
    if vt != vd:
        raise ValueError(
            f"the draft model's vocabulary ({vd} tokens) differs from the target's ({vt}): "
            "speculative decoding needs both models to share one tokenizer"
        )


# ------------------------------------------------------------------ the decode loops


class _Sequence:
    """One sequence being decoded: the engine's `SeqState` plus the target's own cache.

    Invariant between steps: the target cache holds ``history[:-1]``; the last token is
    pending (fed at the start of the next forward pass).
    """

    def __init__(self, target: Llama, prompt_ids: Sequence[int], max_tokens: int, sampler: Sampler,
                 eos_ids: Collection[int], matcher: Matcher | None, stop_token_ids: Collection[int],
                 extra_capacity: int = 0, params: Any = None, token_bytes: Sequence[bytes | None] | None = None
                 ) -> None:
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        self.target = target
        if token_bytes is None:  # no vocabulary: every token is textless
            token_bytes = [None] * target.config.vocab_size
        ctx = StepContext(token_bytes, frozenset(eos_ids), lazy_masks=False, jump_forward=False, device=target.device)
        self.state = SeqState(ctx, prompt_ids, params if params is not None else plain_params(
            max_tokens, stop_token_ids), max_tokens, matcher, sampler=sampler)
        self.sampler, self.matcher = sampler, matcher
        self.eos_ids = ctx.eos_ids
        self.stop_ids = self.state.stop_token_ids
        self.out = SpecResult()
        if max_tokens <= 0:
            self.state.finish("length")
        self.cache = target.new_cache(len(prompt_ids) + max(max_tokens, 0) + extra_capacity + 1)
        t0 = time.perf_counter()
        if len(prompt_ids) > 1 and not self.done:
            target.forward(torch.tensor([list(prompt_ids[:-1])], device=target.device), self.cache)
        self.out.prefill_time_s = time.perf_counter() - t0

    @property
    def history(self) -> list[int]:
        return self.state.tokens

    @property
    def done(self) -> bool:
        return self.state.done

    def forward(self, drafts: Sequence[int] = ()) -> torch.Tensor:
        """Logits ``[1 + len(drafts), V]`` for the pending token and the drafts after it."""
        ids = torch.tensor([[self.history[-1], *drafts]], device=self.target.device)
        self.out.forward_passes += 1
        return self.target.forward(ids, self.cache, all_logits=True)[0]

    def masked(self, logits: torch.Tensor) -> torch.Tensor | None:
        """``logits`` with the constraint's mask applied (in place); None if it allows nothing."""
        return None if self.state.constrain(logits) is False else logits

    def check_terminated(self) -> bool:
        """Finish (``stop``) when the constraint is complete and nothing can follow."""
        self.state.finish_if_complete()
        return self.done

    def result(self) -> SpecResult:
        """The counters with the state's tokens, finish reason and text."""
        out, st = self.out, self.state.out
        out.token_ids, out.text = list(st.token_ids), st.text
        out.finish_reason = st.finish_reason if self.done else "length"
        out.error = st.meta.get("error")
        return out

    def sync_cache(self) -> None:
        """Roll the target cache back to ``history[:-1]`` (drop rejected drafts' keys)."""
        self.cache.truncate(min(self.cache.length, len(self.history) - 1))


def plain_generate(target: Llama, prompt_ids: Sequence[int], max_tokens: int, sampler: Sampler,
                   eos_ids: Collection[int], matcher: Matcher | None = None,
                   stop_token_ids: Collection[int] = ()) -> SpecResult:
    """Decode one token per target forward pass (the reference for `speculative_generate`).

    ``matcher`` (optional) is advanced over the generated tokens.
    """
    with torch.inference_mode():
        seq = _Sequence(target, prompt_ids, max_tokens, sampler, eos_ids, matcher, stop_token_ids)
        while not seq.done and not seq.check_terminated():
            t0 = time.perf_counter()
            logits = seq.masked(seq.forward()[0])
            if logits is not None:
                seq.state.accept(sampler.sample(logits))
            seq.out.verify_time_s += time.perf_counter() - t0
        return seq.result()


def speculative_generate(target: Llama, drafter: Drafter, prompt_ids: Sequence[int], max_tokens: int,
                         sampler: Sampler, eos_ids: Collection[int], k: int = 4,
                         matcher: Matcher | None = None, stop_token_ids: Collection[int] = (),
                         params: Any = None, token_bytes: Sequence[bytes | None] | None = None) -> SpecResult:
    """Generate up to ``max_tokens`` tokens after ``prompt_ids`` with speculative decoding.

    Per step ``drafter`` proposes up to ``k`` tokens, the target verifies them in one
    forward pass, and 1 to ``k + 1`` tokens are emitted. The output equals plain greedy
    decoding when ``sampler`` is greedy, and has the distribution of plain sampling
    otherwise. ``matcher`` (optional, advanced over the generated tokens) constrains
    both the drafts and the target. Generation ends at an ``eos_ids`` or
    ``stop_token_ids`` token (included in the output), when the constraint is complete,
    or after ``max_tokens`` tokens. With ``params`` (a `SamplingParams`: stop strings,
    ``stop_regex``, ``min_tokens``) and ``token_bytes`` (the vocabulary's), the text
    ends exactly as in the engine.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    with torch.inference_mode():
        seq = _Sequence(target, prompt_ids, max_tokens, sampler, eos_ids, matcher, stop_token_ids,
                        extra_capacity=k, params=params, token_bytes=token_bytes)
        t0 = time.perf_counter()
        drafter.start(target, prompt_ids, seq.eos_ids | seq.stop_ids, capacity=seq.cache.capacity)
        seq.out.prefill_time_s += time.perf_counter() - t0
        while not seq.done and not seq.check_terminated():
            _speculative_step(seq, drafter, k)
        return seq.result()


def _speculative_step(seq: _Sequence, drafter: Drafter, k: int) -> None:
    """Draft, verify in one target pass, emit the accepted tokens plus one, roll back."""
    t0 = time.perf_counter()
    # The target always adds one token of its own, so drafting past remaining - 1 is waste.
    n_draft = min(k, seq.state.remaining - 1)
    draft = drafter.propose(seq.history, n_draft, seq.sampler, seq.matcher) if n_draft > 0 else Draft()
    del draft.tokens[n_draft:]
    t1 = time.perf_counter()
    confirmed = len(seq.history)
    logits = seq.forward(draft.tokens)
    seq.out.proposed += len(draft.tokens)
    accepted = _verify(seq, logits, draft)
    seq.out.accepted += accepted
    seq.sync_cache()
    drafter.rollback(confirmed + accepted)
    seq.out.draft_time_s += t1 - t0
    seq.out.verify_time_s += time.perf_counter() - t1


def _verify(seq: _Sequence, logits: torch.Tensor, draft: Draft) -> int:
    """Emit the accepted drafts and the target's own next token; return how many were accepted.

    ``logits[i]`` is the target's prediction after the history and ``draft.tokens[:i]``;
    the matcher advances as tokens are emitted, so each mask matches its position.
    """
    for i, d in enumerate(draft.tokens):
        p_logits = seq.masked(logits[i])
        if p_logits is None:
            return i
        q = None if draft.q is None else draft.q[i]
        tok, ok = _accept_or_correct(seq.sampler, p_logits, d, q)
        if seq.state.accept(tok) or not ok:
            return i + ok
    # Every draft was accepted: the last position gives a bonus token for free.
    p_logits = seq.masked(logits[len(draft.tokens)])
    if p_logits is not None:
        seq.state.accept(seq.sampler.sample(p_logits))
    return len(draft.tokens)


def _accept_or_correct(sampler: Sampler, p_logits: torch.Tensor, d: int,
                       q: torch.Tensor | None) -> tuple[int, bool]:
    """Accept draft ``d`` or replace it: ``(token, accepted)``.

    Greedy: accept iff ``d`` is the argmax. Sampling: accept with probability
    ``min(1, p(d) / q(d))``, else draw from ``normalize(max(0, p - q))``; ``q=None``
    means a point mass on ``d`` (so the residual is ``p`` without ``d``).
    """
    if sampler.greedy:
        tok = sampler.sample(p_logits)
        return tok, tok == d
    p = sampling_probs(sampler, p_logits)
    q_d = 1.0 if q is None else float(q[d])
    u = float(torch.rand((), generator=sampler.generator))
    if q_d > 0 and u * q_d < float(p[d]):  # u < p/q without dividing
        return d, True
    if q is None:
        residual = p.clone()
        residual[d] = 0.0
    else:
        residual = (p - q).clamp_(min=0.0)
    if not float(residual.sum()) > 0.0:
        residual = p  # p == q up to rounding: rejection had probability ~0
    return int(torch.multinomial(residual, 1, generator=sampler.generator)), False
