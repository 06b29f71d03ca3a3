"""Speculative decoding: a cheap drafter proposes, the target verifies, in the engine's batch.

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
accepted). Drafts from a draft model (or the target's first layers) are produced in the
batch too: every sequence drafting from one draft model feeds it together, one batched
paged forward per draft position (`DraftPool`, the engine's own `forward_rows`), not one
sequence at a time. This module adds only drafting and the acceptance rule. `plain_generate` and
`speculative_generate` run one request in an engine of their own (tests and
``bench/speculative.py`` compare the two).
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sgl.constrain.torch_utils import apply_bitmask

from .request import common_prefix
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
    draft_forwards: int = 0  # forward passes of a draft model (0 for n-gram lookup)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft tokens (0 when nothing was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0


# ------------------------------------------------------------------------- drafters


class Drafter(ABC):
    """Proposes draft tokens for one sequence.

    The decode loop calls `start` once, then per step `propose` with the whole token
    history (prompt + generated), then `rollback` with how many leading history tokens
    are confirmed, so stateful drafters can drop what the target rejected; `release`
    when the sequence leaves the engine's batch (it ended or was preempted).
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

    def release(self) -> None:  # noqa: B027 - stateless drafters hold nothing
        """Give back what the sequence holds (a draft model's KV blocks)."""


class ModelDrafter(Drafter):
    """A second (smaller) local model with the same vocabulary drafts the tokens (or, with
    ``n_layers``, the first layers of a model).

    Its keys and values live in a `DraftPool`. In an engine that is the pool every
    sequence drafting from this model shares, and their drafts come from one batched
    forward of the draft model per draft position (`propose_drafts`); `propose` alone
    drafts for this one sequence, in a pool of its own.
    """

    def __init__(self, model: Llama, n_layers: int | None = None) -> None:
        self.model = model
        self.n_layers = n_layers
        self.pool: DraftPool | None = None
        self.ids: list[int] = []  # the tokens whose keys/values are in the pool
        self.blocks: list[int] = []
        self._capacity = 0

    def start(self, target: Llama, prompt_ids: Sequence[int], end_ids: Collection[int] = (),
              capacity: int = 0) -> None:
        super().start(target, prompt_ids, end_ids, capacity)
        check_vocab(target, self.model)
        self.release()
        self._capacity = max(capacity, len(prompt_ids) + 1)

    def rollback(self, n_tokens: int) -> None:
        del self.ids[n_tokens:]  # the blocks stay: the next drafts overwrite those slots

    def release(self) -> None:
        if self.pool is not None:
            self.pool.kv.release(self.blocks)
        self.ids, self.blocks = [], []

    def propose(self, history: Sequence[int], k: int, sampler: Sampler,
                matcher: Matcher | None = None) -> Draft:
        need = len(history) + k
        if self.pool is None or self.pool.kv.capacity_tokens < need:
            self.release()
            self.pool = DraftPool(self.model, self.n_layers, 2 * max(need, self._capacity))
        return self.pool.propose([DraftJob(self, history, k, sampler, matcher)])[0]


class EarlyExitDrafter(ModelDrafter):
    """The target's own first ``n_layers`` layers (then its final norm + lm_head) draft.

    They keep a separate, smaller KV pool (``n_layers`` layers): the target's holds the
    full model's keys, which differ from the truncated model's only in the later
    layers, but sharing it would tie the two rollbacks together.
    """

    def __init__(self, target: Llama, n_layers: int) -> None:
        total = target.config.num_hidden_layers
        if not 1 <= n_layers < total:
            raise ValueError(f"n_layers must be in [1, {total - 1}] for a {total}-layer model, got {n_layers}")
        super().__init__(target, n_layers)


@dataclass
class DraftJob:
    """One sequence's request for drafts from a `DraftPool`."""

    drafter: ModelDrafter
    history: Sequence[int]  # prompt + generated tokens
    k: int  # drafts at most
    sampler: Sampler
    matcher: Matcher | None = None  # in the state after ``history`` (probed on a copy)


class DraftPool:
    """The paged KV of one draft model (its first ``n_layers`` layers for early exit),
    shared by the sequences that draft from it: `propose` drafts for all of them with
    one batched forward per draft position, as the engine's step does for the target.

    ``forwards`` counts the draft model's forward passes.
    """

    def __init__(self, model: Llama, n_layers: int | None, capacity_tokens: int, block_size: int = 16) -> None:
        from .kv_pool import KVPool, bytes_per_token

        config = model.config if n_layers is None else dataclasses.replace(model.config, num_hidden_layers=n_layers)
        blocks = max(2, -(-capacity_tokens // block_size))
        self.kv = KVPool(config, blocks * block_size * bytes_per_token(config, model.dtype), block_size,
                         device=model.device, dtype=model.dtype)
        self.model, self.n_layers = model, n_layers
        self.forwards = 0
        self._bitmask: np.ndarray | None = None

    def propose(self, jobs: Sequence[DraftJob], before_forward: Callable[[int], None] | None = None) -> list[Draft]:
        """Each job's drafts. Every job first feeds what its pool KV lacks of its history
        (after a rollback or a preemption, or the prompt the first time); then the jobs
        still drafting feed their newest draft together, until each has ``k`` drafts, an
        end token, or a token its matcher refuses. The last draft is never fed (the
        target may reject it anyway). ``before_forward(n_tokens)`` runs before each forward."""
        from .paged_forward import RowInput, forward_rows

        drafts = [Draft() for _ in jobs]
        qs: list[list[torch.Tensor]] = [[] for _ in jobs]
        probes = [None if job.matcher is None else job.matcher.copy() for job in jobs]
        feed: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            d = job.drafter
            keep = min(common_prefix(d.ids, job.history), len(job.history) - 1)  # one token must run for logits
            d.rollback(keep)
            if job.k > 0 and self._reserve(d, len(job.history) + job.k - 1):
                feed[i] = list(job.history[keep:])
        with torch.inference_mode():
            while feed:
                active = list(feed)
                rows = [RowInput(feed[i], len(jobs[i].drafter.ids), jobs[i].drafter.blocks) for i in active]
                if before_forward is not None:
                    before_forward(sum(len(row.tokens) for row in rows))
                logits = forward_rows(self.model, self.kv, rows, self.n_layers)
                self.forwards += 1
                for i, row_logits in zip(active, logits, strict=True):
                    job = jobs[i]
                    job.drafter.ids.extend(feed.pop(i))
                    tok = self._pick(job, row_logits, probes[i], qs[i])
                    if tok is None:
                        continue
                    drafts[i].tokens.append(tok)
                    if tok not in job.drafter.end_ids and len(drafts[i].tokens) < job.k:
                        feed[i] = [tok]
        for draft, q in zip(drafts, qs, strict=True):
            draft.q = torch.stack(q) if q else None
        return drafts

    def _reserve(self, drafter: ModelDrafter, n_tokens: int) -> bool:
        """Make ``drafter``'s blocks hold ``n_tokens``; False (no drafts this step) when the pool is full."""
        got = self.kv.alloc(max(0, self.kv.blocks_for(n_tokens) - len(drafter.blocks)))
        if got is not None:
            drafter.blocks.extend(got)
        return got is not None

    def _pick(self, job: DraftJob, logits: torch.Tensor, probe: Matcher | None,
              qs: list[torch.Tensor]) -> int | None:
        """The next draft from the draft model's ``logits`` (its ``q`` appended to ``qs``
        when sampled), or None when the matcher allows nothing or refuses it."""
        if probe is not None and not self._mask(logits, probe):
            return None
        sampler = job.sampler
        q = None if sampler.greedy else sampling_probs(sampler, logits)
        tok = sampler.sample(logits) if q is None else int(torch.multinomial(q, 1, generator=sampler.generator))
        if probe is not None and not probe.advance(tok):
            return None
        if q is not None:
            qs.append(q)
        return tok

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


class DraftPools:
    """An engine's `DraftPool`s, one per draft model, each holding as many tokens as the
    engine's own KV pool (a sequence the engine holds never lacks draft KV for long)."""

    def __init__(self, capacity_tokens: int, block_size: int) -> None:
        self.capacity_tokens, self.block_size = capacity_tokens, block_size
        self.pools: dict[tuple[int, int | None], DraftPool] = {}

    def pool_for(self, drafter: ModelDrafter) -> DraftPool:
        """The pool of ``drafter``'s model, made ``drafter``'s own (made on first use)."""
        key = (id(drafter.model), drafter.n_layers)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = DraftPool(drafter.model, drafter.n_layers, self.capacity_tokens,
                                               self.block_size)
        if drafter.pool is not pool:
            drafter.release()
            drafter.pool = pool
        return pool


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
            pattern, first = h[-m:], h[-m]
            for i in range(len(h) - m - 1, -1, -1):  # the latest earlier start first
                if h[i] == first and h[i : i + m] == pattern:
                    return h[i + m : i + m + k]
        return []


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

    When the sequence's row is scheduled (one pending token, the prompt fed), the engine
    reserves `room` drafts and, once the batch is known, `propose_drafts` proposes them
    for every speculative row together; the row feeds the pending token and the drafts,
    with the logits of every position; `verify` then keeps the longest acceptable prefix
    and adds one token of the target's own, and the engine keeps the KV of what was
    accepted. Every token of the request goes through `verify` (``drafter=None``: plain
    decoding, one token per pass, counted the same way).
    """

    def __init__(self, drafter: Drafter | None, k: int = 4) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.drafter, self.k = drafter, k
        self.draft = Draft()
        self.n = 0  # drafts this step at most (`room`)
        self._started = False
        self.forward_passes = self.proposed = self.accepted = 0

    def room(self, state: SeqState) -> int:
        """How many drafts ``state`` may feed after its pending token this step (0: none)."""
        self.draft = Draft()
        stop = self.drafter is None or state.done or (state.matcher and state.matcher.is_terminated())
        self.n = 0 if stop else max(0, min(self.k, state.remaining - 1))  # the target adds one token of its own
        return self.n

    def begin(self, state: SeqState, target: Llama) -> None:
        """Start the drafter on the sequence's prompt (the first time it drafts)."""
        if not self._started:
            self._started = True
            self.drafter.start(target, state.tokens[:state.prompt_len], state.ctx.eos_ids | state.stop_token_ids,
                               capacity=len(state.tokens) + state.remaining + self.k + 1)

    def take(self, draft: Draft) -> None:
        """The drafts this step feeds (at most `room`)."""
        del draft.tokens[self.n:]
        self.draft = draft

    def fail(self, state: SeqState, error: Exception) -> None:
        """Drafting failed: this request ends with the error, not the engine's whole batch."""
        state.out.meta["error"] = f"drafting failed: {type(error).__name__}: {error}"
        state.finish("error")
        self.draft = Draft()

    def release(self) -> None:
        """The sequence left the batch (ended or preempted): the drafter gives back its KV."""
        if self.drafter is not None:
            self.drafter.release()

    def verify(self, state: SeqState, logits: torch.Tensor, i: int, rows: torch.Tensor | None) -> int:
        """Emit the accepted drafts and one token of the target's own from ``rows`` (one
        row per fed position: after the pending token, then after each draft; None when
        nothing was drafted: the step's row ``i`` of ``logits``); how many drafts were
        accepted."""
        if state.finish_if_complete():
            return 0
        confirmed = len(state.tokens)
        draft, self.draft = self.draft, Draft()
        self.forward_passes += 1
        self.proposed += len(draft.tokens)
        accepted = _verify(state, logits[i][None] if rows is None else rows, draft)
        self.accepted += accepted
        if self._started:
            self.drafter.rollback(confirmed + accepted)
        if self.drafter is not None:
            state.out.meta.update(forward_passes=self.forward_passes, draft_tokens=self.proposed,
                                  accepted_draft_tokens=self.accepted)
        return accepted


def propose_drafts(target: Llama, requests: Sequence[tuple[Speculation, SeqState]], pools: DraftPools,
                   before_forward: Callable[[int], None] | None = None) -> int:
    """Set the drafts of each ``(acceptor, state)`` (its `Speculation.room` taken): the
    sequences drafting from one draft model together, one batched forward of that model
    per draft position (`DraftPool.propose`), the others (n-gram lookup, no forward) one
    by one. How many draft-model forwards ran."""
    groups: dict[DraftPool, list[tuple[Speculation, SeqState]]] = {}
    for spec, state in requests:
        try:
            spec.begin(state, target)
            if isinstance(spec.drafter, ModelDrafter):
                groups.setdefault(pools.pool_for(spec.drafter), []).append((spec, state))
            else:
                spec.take(spec.drafter.propose(state.tokens, spec.n, state.sampler, state.matcher))
        except Exception as e:  # noqa: BLE001 - this request fails, not the engine's whole batch
            spec.fail(state, e)
    forwards = 0
    for pool, group in groups.items():
        before = pool.forwards
        try:
            drafts = pool.propose([DraftJob(spec.drafter, state.tokens, spec.n, state.sampler, state.matcher)
                                   for spec, state in group], before_forward)
        except Exception as e:  # noqa: BLE001 - these requests fail, not the engine's whole batch
            for spec, state in group:
                spec.fail(state, e)
            continue
        finally:
            forwards += pool.forwards - before
        for (spec, _), draft in zip(group, drafts, strict=True):
            spec.take(draft)
    return forwards


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
    return speculative_generate(target, None, prompt_ids, max_tokens, sampler, eos_ids, matcher=matcher,
                                stop_token_ids=stop_token_ids)


def speculative_generate(target: Llama, drafter: Drafter | None, prompt_ids: Sequence[int], max_tokens: int,
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
    ends exactly as in the engine. One request in an engine of its own (every token
    sampled, nothing cached; ``drafter=None``: plain decoding); a `LocalModel` puts
    `Speculation` requests in its shared engine instead.
    """
    from sgl.types import SamplingParams

    from .kv_pool import bytes_per_token
    from .request import SeqRequest
    from .scheduler import Engine, EngineConfig

    if isinstance(drafter, ModelDrafter):  # refused here, before the engine runs it
        check_vocab(target, drafter.model)
    acceptor = Speculation(drafter, k)
    if not prompt_ids:
        raise ValueError("the prompt has no tokens")
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
                      acceptor.accepted, out.meta.get("error"), engine.stats.draft_steps)


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
