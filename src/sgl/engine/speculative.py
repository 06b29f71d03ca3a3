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
the recording of tokens are the engine's own `step.SeqState`, and a speculative request
is a request in the engine's continuous batch (`Speculation`, its acceptor: the row of
a step feeds the pending token and the drafts, and the engine keeps the KV of what was
accepted). This module adds only drafting and the acceptance rule. `plain_generate` and
`speculative_generate` run one request in an engine of their own (tests and
``bench/speculative.py`` compare the two).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sgl.constrain.torch_utils import apply_bitmask

from .sampler import Sampler
from .step import SeqState

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


class ModelDrafter(Drafter):
    """A second (smaller) local model with the same vocabulary drafts the tokens (or, with
    ``n_layers``, the first layers of a model), with its own contiguous cache."""

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


class EarlyExitDrafter(ModelDrafter):
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


# ------------------------------------------------------------------ in the engine


class Speculation:
    """A request's acceptor in the engine's batch: drafts, then verification.

    Before the sequence's row is scheduled (one pending token, the prompt fed), the
    drafter proposes up to ``k`` tokens (`propose`); the row feeds the pending token and
    the drafts, with the logits of every position; `verify` then keeps the longest
    acceptable prefix and adds one token of the target's own, and the engine keeps the
    KV of what was accepted. Every token of the request goes through `verify`
    (``drafter=None``: plain decoding, one token per pass, counted the same way).
    """

    def __init__(self, drafter: Drafter | None, k: int = 4) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.drafter, self.k = drafter, k
        self.draft = Draft()
        self._started = False
        self.forward_passes = self.proposed = self.accepted = 0

    def propose(self, state: SeqState, target: Llama) -> list[int]:
        """The drafts to feed after ``state``'s pending token."""
        self.draft = Draft()
        n = min(self.k, state.remaining - 1)  # the target adds one token of its own
        if self.drafter is None or n <= 0 or state.done or (state.matcher and state.matcher.is_terminated()):
            return []
        try:
            if not self._started:
                self._started = True
                self.drafter.start(target, state.tokens[:state.prompt_len], state.ctx.eos_ids | state.stop_token_ids,
                                   capacity=len(state.tokens) + state.remaining + self.k + 1)
            with torch.inference_mode():
                self.draft = self.drafter.propose(state.tokens, n, state.sampler, state.matcher)
        except Exception as e:  # noqa: BLE001 - this request fails, not the engine's whole batch
            state.out.meta["error"] = f"drafting failed: {type(e).__name__}: {e}"
            state.finish("error")
            return []
        del self.draft.tokens[n:]
        return self.draft.tokens

    def cancel(self, state: SeqState) -> None:
        """The row was not scheduled: forget the drafts."""
        if self.draft.tokens:
            self.drafter.rollback(len(state.tokens))
        self.draft = Draft()

    def verify(self, state: SeqState, logits: torch.Tensor) -> int:
        """Emit the accepted drafts and one token of the target's own from ``logits``
        (``[1 + len(drafts), V]``: after the pending token, then after each draft);
        how many drafts were accepted."""
        if state.finish_if_complete():
            return 0
        confirmed = len(state.tokens)
        draft, self.draft = self.draft, Draft()
        self.forward_passes += 1
        self.proposed += len(draft.tokens)
        accepted = _verify(state, logits, draft)
        self.accepted += accepted
        if self._started:
            self.drafter.rollback(confirmed + accepted)
        if self.drafter is not None:
            state.out.meta.update(forward_passes=self.forward_passes, draft_tokens=self.proposed,
                                  accepted_draft_tokens=self.accepted)
        return accepted


def _verify(state: SeqState, logits: torch.Tensor, draft: Draft) -> int:
    """Emit the accepted drafts and the target's own next token; return how many were accepted.

    ``logits[i]`` is the target's prediction after the history and ``draft.tokens[:i]``;
    the matcher advances as tokens are emitted, so each mask matches its position.
    """
    sampler, keep_raw = state.sampler, state.out.logprobs is not None
    for i, d in enumerate(draft.tokens):
        raw = logits[i].clone() if keep_raw else None  # logprobs: before bans, penalties and masks
        if state.constrain(logits[i]) is False:
            return i
        q = None if draft.q is None else draft.q[i]
        tok, ok = _accept_or_correct(sampler, logits[i], d, q)
        if state.accept(tok, raw) or not ok:
            return i + ok
    # Every draft was accepted: the last position gives a bonus token for free.
    last = logits[len(draft.tokens)]
    raw = last.clone() if keep_raw else None
    if state.constrain(last) is not False:
        state.accept(sampler.sample(last), raw)
    return len(draft.tokens)


def plain_generate(target: Llama, prompt_ids: Sequence[int], max_tokens: int, sampler: Sampler,
                   eos_ids: Collection[int], matcher: Matcher | None = None,
                   stop_token_ids: Collection[int] = ()) -> SpecResult:
    """Decode one token per target forward pass (the reference for `speculative_generate`).

    ``matcher`` (optional) is advanced over the generated tokens.
    """
    return _alone(target, Speculation(None), prompt_ids, max_tokens, sampler, eos_ids, matcher, stop_token_ids)


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
    ends exactly as in the engine. One request in an engine of its own; a `LocalModel`
    puts `Speculation` requests in its shared engine instead.
    """
    if isinstance(drafter, ModelDrafter):  # refused here, before the engine runs it
        check_vocab(target, drafter.model)
    return _alone(target, Speculation(drafter, k), prompt_ids, max_tokens, sampler, eos_ids, matcher,
                  stop_token_ids, params, token_bytes)


def _alone(target: Llama, acceptor: Speculation, prompt_ids: Sequence[int], max_tokens: int, sampler: Sampler,
           eos_ids: Collection[int], matcher: Matcher | None, stop_token_ids: Collection[int],
           params: Any = None, token_bytes: Sequence[bytes | None] | None = None) -> SpecResult:
    """``acceptor``'s request in an engine of its own (every token sampled, nothing cached)."""
    from .kv_pool import bytes_per_token
    from .request import SeqRequest
    from .scheduler import Engine, EngineConfig

    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
    from sgl.types import SamplingParams

    if params is None:
        params = SamplingParams(max_tokens=max_tokens, stop_token_ids=tuple(stop_token_ids))
    else:
        params = copy.copy(params)
        params.max_tokens = max_tokens
    if token_bytes is None:  # no vocabulary: every token is textless
        token_bytes = [None] * target.config.vocab_size
    block = 16
    room = (len(prompt_ids) + max(max_tokens, 0) + acceptor.k + 2 * block) * bytes_per_token(target.config,
                                                                                           target.dtype)
    config = EngineConfig(kv_budget_mb=room / 2**20, block_size=block, max_running=1, prefix_cache=False,
                          jump_forward=False, lazy_masks=False)
    engine = Engine(target, token_bytes, eos_ids, config)
    try:
        out = engine.generate([SeqRequest(list(prompt_ids), params, matcher, sampler=sampler, acceptor=acceptor)])[0]
    finally:
        engine.close()
    return SpecResult(list(out.token_ids), out.finish_reason, out.text, acceptor.forward_passes, acceptor.proposed,
                      acceptor.accepted, out.meta.get("error"))


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
