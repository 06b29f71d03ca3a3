"""One decoding step of one sequence, shared by every generation path.

Given the logits the model produced for a sequence, `SeqState.step` does everything
that happens before the next forward pass: ban EOS / stop tokens (``min_tokens``,
``ignore_eos``), apply penalties, the token-healing mask, the constraint (a lazy check
of likely tokens, or the full mask), sample, advance the matcher, record logprobs and
traces, check every end (EOS, stop tokens, stop strings, ``stop_regex``, constraint
complete, ``max_tokens``), then jump forward over text the constraint forces.

The continuous-batching engine (`scheduler.Engine`), speculative decoding
(`speculative`: its verification uses `SeqState.constrain` and `SeqState.accept`) and
prompt scoring all go through here, so an end condition or a sampling rule is written
once. A `StepContext` holds what is shared by the sequences of one engine (token bytes,
EOS ids, switches, counters, one mask buffer: it is used from one thread).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sgl.constrain.bitmask import count_allowed, mask_logits_row, unpack_bitmask
from sgl.constrain.torch_utils import apply_bitmask

from .lazy_mask import sample_with_lazy_mask
from .request import PromptLogprobs, SeqOutput, TextTracker
from .sampler import Sampler, token_logprob, top_logprobs

if TYPE_CHECKING:
    from sgl.constrain import Matcher, Vocabulary

    from .policy import LogitsPolicy


@dataclass
class StepCounters:
    """What the steps did, summed over sequences."""

    generated_tokens: int = 0
    forced_tokens: int = 0
    mask_time_s: float = 0.0
    masks: int = 0
    lazy_hits: int = 0


@dataclass
class StepContext:
    """What the sequences of one engine share. Not thread-safe (one mask buffer)."""

    token_bytes: Sequence[bytes | None]
    eos_ids: frozenset[int]
    vocab: Vocabulary | None = None  # needed for jump-forward (canonical tokenization)
    lazy_masks: bool = True
    jump_forward: bool = True
    counters: StepCounters = field(default_factory=StepCounters)
    device: str | torch.device = "cpu"
    _bitmask: np.ndarray | None = None

    def mask_buffer(self, n_vocab: int) -> np.ndarray:
        """The one-row bitmask buffer (allocated once, at the logits' width)."""
        if self._bitmask is None:
            from sgl.constrain import allocate_bitmask

            self._bitmask = allocate_bitmask(1, n_vocab)
        return self._bitmask


class SeqState:
    """The decoding state of one sequence: tokens, sampler, matcher, output, end checks.

    ``params`` is a `SamplingParams` (or anything with its fields; missing optional
    fields take their defaults). ``tokens`` is the prompt followed by what was generated.
    """

    def __init__(self, ctx: StepContext, prompt_ids: Sequence[int], params: Any, max_tokens: int,
                 matcher: Matcher | None = None, healing: Any = None, sampler: Sampler | None = None,
                 prompt_logprobs: PromptLogprobs | None = None, policy: LogitsPolicy | None = None) -> None:
        self.ctx, self.params, self.matcher, self.healing = ctx, params, matcher, healing
        self.policy = policy  # a logits policy (`policy.Pairing`): what is sampled from
        self.prompt_len = len(prompt_ids)
        self.tokens = list(prompt_ids)
        self.max_tokens = max_tokens
        self.min_tokens = getattr(params, "min_tokens", 0)
        self.stop_token_ids = frozenset(getattr(params, "stop_token_ids", ()) or ())
        self.sampler = sampler or Sampler(
            params.temperature, params.top_k, params.top_p, params.min_p, params.seed, device=ctx.device,
            frequency_penalty=getattr(params, "frequency_penalty", 0.0),
            presence_penalty=getattr(params, "presence_penalty", 0.0),
            repetition_penalty=getattr(params, "repetition_penalty", 1.0))
        device = ctx.device
        self.ban = torch.tensor(sorted(ctx.eos_ids | self.stop_token_ids), dtype=torch.long, device=device)
        self.eos_ban = (torch.tensor(sorted(ctx.eos_ids), dtype=torch.long, device=device)
                        if getattr(params, "ignore_eos", False) and ctx.eos_ids else None)
        self.tracker = TextTracker(getattr(params, "stop", None), getattr(params, "stop_regex", None))
        want_lp = bool(getattr(params, "logprobs", False))
        want_top = want_lp and getattr(params, "top_logprobs", 0) > 0
        self.out = SeqOutput(logprobs=[] if want_lp else None, top_logprobs=[] if want_top else None,
                             meta={"prompt_tokens": self.prompt_len})
        self.hidden = len(healing.prefix) if healing is not None else 0  # bytes the prompt already holds
        self.done = False
        self.completed = False  # ended because the constraint was complete
        self.trace: Any = None
        self.scoring = prompt_logprobs
        self.scored_upto = 0  # prompt positions whose logits were used (scoring the next token)
        if prompt_logprobs is not None:
            start = min(max(prompt_logprobs.start, 0), self.prompt_len)
            self.scoring = PromptLogprobs(start, prompt_logprobs.top_n)
            self.out.prompt_logprobs = [None] * (self.prompt_len - start)
            self.out.prompt_top_logprobs = [[] for _ in range(self.prompt_len - start)]
            self.scored_upto = max(start, 1) - 1

    # ------------------------------------------------------------ prompt scoring

    def cacheable_prefix(self) -> int:
        """How many leading tokens may come from the prefix cache: all but the last,
        or, while prompt logprobs are still to compute, none whose logits are needed."""
        if self.scoring is not None and self.scored_upto < self.prompt_len - 1:
            return self.scored_upto
        return len(self.tokens) - 1

    def wants_logits(self, first_pos: int, n: int) -> bool:
        """Whether feeding positions ``first_pos ..`` (``n`` of them) needs every logit row."""
        return (self.scoring is not None and first_pos + n > self.scored_upto
                and first_pos < self.prompt_len - 1)

    def score_prompt(self, first_pos: int, logits: torch.Tensor) -> None:
        """Record the prompt logprobs that ``logits`` (the rows of positions ``first_pos ..``) give."""
        a = max(first_pos, self.scored_upto)
        b = min(first_pos + logits.shape[0], self.prompt_len - 1)
        if b <= a:
            return
        logp = logits[a - first_pos:b - first_pos].float().log_softmax(-1)
        nxt = torch.tensor(self.tokens[a + 1:b + 1], device=logp.device)
        picked = logp.gather(-1, nxt[:, None])[:, 0].tolist()
        start, top_n, out = self.scoring.start, self.scoring.top_n, self.out
        if top_n:
            values, ids = torch.topk(logp, min(top_n, logp.shape[-1]))
            tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        for k, p in enumerate(range(a, b)):
            out.prompt_logprobs[p + 1 - start] = picked[k]
            if top_n:
                out.prompt_top_logprobs[p + 1 - start] = tops[k]
        self.scored_upto = b

    # ------------------------------------------------------------------ the step

    def step(self, logits: torch.Tensor, raw: torch.Tensor | None = None, penalized: bool = False,
             host: np.ndarray | None = None) -> None:
        """Choose, record and check the next token from ``logits`` (``[V]``, changed in
        place), then jump forward over forced text. Sets ``done`` when the sequence ends.

        ``penalized``: the caller already applied this sequence's penalties (batched,
        `sampler.apply_penalties_batch`); ``raw`` then holds the logits before them.
        ``host``: a numpy view of ``logits`` (CPU), if the caller has one: the mask and a
        greedy choice then go through numpy (`_apply`), the same result, cheaper.
        """
        if self.finish_if_complete():
            return
        matcher = self.matcher
        t0 = time.perf_counter()
        tok, bitmask, raw = self._choose(logits, raw, penalized, host)
        if matcher is not None:  # what the constraint costs: mask (or lazy checks) + sampling
            seconds, meta, counters = time.perf_counter() - t0, self.out.meta, self.ctx.counters
            meta["mask_time_s"] = meta.get("mask_time_s", 0.0) + seconds
            meta["masks"] = meta.get("masks", 0) + 1
            counters.mask_time_s += seconds
            counters.masks += 1
        if tok is None:
            return
        self.accept(tok, raw, bitmask)
        policy = self.policy
        if policy is not None and not self.done and policy.should_stop(self.out.token_ids):
            self.finish("stop")
        if not self.done and matcher is not None and self.ctx.jump_forward and (policy is None or policy.jump_forward):
            self.jump_forward()

    def constrain(self, logits: torch.Tensor) -> np.ndarray | None | bool:
        """Apply bans, penalties, healing and the full constraint mask to ``logits`` in
        place (no lazy check). Returns the constraint's bitmask (None without a
        constraint), or False when the constraint allows nothing (the sequence ended)."""
        _, bitmask = self._prepare(logits, lazy=False, penalized=False)
        return bitmask

    def accept(self, tok: int, raw: torch.Tensor | None = None, bitmask: Any = None) -> bool:
        """Advance the matcher and healing over ``tok``, record it and check the ends.

        ``raw`` (the logits before any masking) gives the token's logprob (None: 0,
        a forced token). Returns ``done``.
        """
        if self.matcher is not None and not self.matcher.advance(tok):
            self.out.meta["error"] = f"the constraint rejected token {tok}"
            self.finish("error")
            return True
        if self.healing is not None and not self.healing.done:
            self.healing.advance(tok)
        self._append(tok, raw, bitmask)
        return self.done

    def finish_if_complete(self) -> bool:
        """End the sequence ("stop", ``completed``) when its constraint is complete and
        nothing can follow; whether it did."""
        if self.matcher is None or not self.matcher.is_terminated():
            return False
        self.completed = True
        self.finish("stop")
        return True

    def finish(self, reason: str, text: str | None = None) -> None:
        """End the sequence (once): finish reason, final text, token count, trace."""
        if self.done:
            return
        self.done = True
        out = self.out
        out.finish_reason = reason
        out.text = self.tracker.text if text is None else text
        out.meta["completion_tokens"] = len(out.token_ids)
        if self.trace is not None:
            from sgl.telemetry import trace as tracing

            tracing.end_trace(self.trace, reason)
            self.trace = None

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.out.token_ids)

    # ---------------------------------------------------------------- choosing

    def _prepare(self, logits: torch.Tensor, lazy: bool, penalized: bool,
                 host: np.ndarray | None = None) -> tuple[int | None, Any]:
        """Bans, penalties, healing, then the constraint: a lazily chosen token (the
        logits left unmasked) or the full mask applied. ``(token, bitmask)``; bitmask
        False when nothing is allowed."""
        out, matcher, ctx = self.out, self.matcher, self.ctx
        healing = self.healing if self.healing is not None and not self.healing.done else None
        # EOS and stop tokens until min_tokens; EOS throughout with ignore_eos
        ban = self.ban if len(out.token_ids) < self.min_tokens else self.eos_ban
        if self.sampler.penalized and not penalized:
            self.sampler.apply_penalties(logits, self.tokens, self.prompt_len)
        if ban is not None:
            saved = logits[ban].clone()
            logits[ban] = float("-inf")
        if healing is not None:  # no EOS either until the backed-over text is written again
            buf = ctx.mask_buffer(logits.shape[-1])
            healing.fill_bitmask(buf, 0)
            _apply(logits, host, buf)
        if matcher is None:
            return None, None
        # A cached mask is cheaper to apply than even a few candidate checks.
        if lazy and ctx.lazy_masks and self.trace is None and not matcher.mask_is_cached():
            tok = sample_with_lazy_mask(logits, self.sampler, matcher).token
            if tok is not None:
                ctx.counters.lazy_hits += 1
                out.meta["lazy_masks"] = out.meta.get("lazy_masks", 0) + 1
                return tok, None
        bitmask = ctx.mask_buffer(logits.shape[-1])
        matcher.fill_bitmask(bitmask, 0)
        if not bitmask.any():
            out.meta["error"] = "the constraint allows no token"
            self.finish("error")
            return None, False
        _apply(logits, host, bitmask)
        if ban is not None and bool(torch.isneginf(logits).all()):
            logits[ban] = saved  # the constraint can only end here: it wins over min_tokens/ignore_eos
            _apply(logits, host, bitmask)
        return None, bitmask

    def _choose(self, logits: torch.Tensor, raw: torch.Tensor | None, penalized: bool,
                host: np.ndarray | None = None) -> tuple[int | None, Any, Any]:
        """The next token (None if the sequence ended), its mask (if built) and the raw logits."""
        out = self.out
        if raw is None:
            changes = (self.matcher is not None or self.sampler.penalized or self.healing is not None
                       or self.eos_ban is not None or len(out.token_ids) < self.min_tokens)
            keep_raw = self.trace is not None or (out.logprobs is not None and changes)
            raw = logits.clone() if keep_raw else logits
        policy = self.policy
        lazy = policy is None or policy.lazy_masks
        tok, bitmask = self._prepare(logits, lazy=lazy, penalized=penalized, host=host)
        if bitmask is False:
            return None, None, raw
        if tok is None:
            if policy is None:
                tok = self.sampler.sample(logits, host)
            else:
                tok = self.sampler.sample(policy.logits(logits, bitmask))
        return tok, bitmask, raw

    # ----------------------------------------------------------- recording

    def _append(self, tok: int, raw: torch.Tensor | None, bitmask: Any) -> None:
        """Record ``tok`` as generated and check every end condition."""
        out = self.out
        out.token_ids.append(tok)
        self.tokens.append(tok)
        self.ctx.counters.generated_tokens += 1
        if out.logprobs is not None:
            out.logprobs.append(token_logprob(raw, tok) if raw is not None else 0.0)
        if out.top_logprobs is not None:
            top = top_logprobs(raw, self.params.top_logprobs) if raw is not None else [(tok, 0.0)]
            out.top_logprobs.append(top)
        if self.trace is not None:
            self._trace_token(raw, tok, bitmask)
        if tok in self.ctx.eos_ids:
            self.finish("eos")
        elif tok in self.stop_token_ids:
            self.finish("stop")
        else:
            self._push_text(self.ctx.token_bytes[tok] or b"")

    def _push_text(self, data: bytes) -> None:
        if self.hidden:  # token healing: the prompt already holds the backed-over bytes
            cut = min(self.hidden, len(data))
            data, self.hidden = data[cut:], self.hidden - cut
        stop_at = self.tracker.push(data, check_stops=len(self.out.token_ids) > self.min_tokens)
        if stop_at is not None:
            self.finish("stop", self.tracker.text[:stop_at])
        elif not self.finish_if_complete() and len(self.out.token_ids) >= self.max_tokens:
            self.finish("length")

    def jump_forward(self) -> None:
        """Append the text the constraint forces now, tokenized canonically, unsampled."""
        from .jump_forward import jump_forward

        ctx, out = self.ctx, self.out
        room = self.max_tokens - len(out.token_ids)
        if room <= 0 or ctx.vocab is None:
            return
        jf = jump_forward(self.matcher, ctx.vocab, out.token_ids, max_retokenize=1)
        if jf is None:
            return
        old = b""
        if jf.replace:  # the pending sampled token merges with the forced text: re-split
            old = b"".join(ctx.token_bytes[t] or b"" for t in out.token_ids[-jf.replace:])
            self._drop_last(jf.replace)
        new = jf.tokens[: room + jf.replace]
        if len(new) < len(jf.tokens):  # max_tokens cuts the run: keep the matcher in step
            self.matcher.rollback(len(jf.tokens) - len(new))
        data = b"".join(ctx.token_bytes[t] or b"" for t in new)
        out.token_ids.extend(new)
        self.tokens.extend(new)
        if out.logprobs is not None:
            out.logprobs.extend([0.0] * len(new))  # forced: probability 1 under the constraint
        if out.top_logprobs is not None:
            out.top_logprobs.extend([(t, 0.0)] for t in new)
        n_forced = max(0, len(new) - jf.replace)
        ctx.counters.forced_tokens += n_forced
        ctx.counters.generated_tokens += len(new) - jf.replace
        out.meta["forced_tokens"] = out.meta.get("forced_tokens", 0) + n_forced
        if self.trace is not None:
            for t in new:
                self._trace_token(None, t, None)
        if not data.startswith(old):
            raise RuntimeError("jump-forward changed text that was already generated")
        self._push_text(data[len(old):])

    def _drop_last(self, n: int) -> None:
        out = self.out
        del out.token_ids[-n:]
        del self.tokens[-n:]
        if out.logprobs is not None:
            del out.logprobs[-n:]
        if out.top_logprobs is not None:
            del out.top_logprobs[-n:]
        if self.trace is not None:
            del self.trace.tokens[-n:]

    def _trace_token(self, raw: Any, tok: int, bitmask: Any) -> None:
        from sgl.telemetry import trace as tracing

        token_bytes = self.ctx.token_bytes
        text = (token_bytes[tok] or b"").decode("utf-8", errors="replace")
        if raw is None:
            tracing.record_token(self.trace, tok, text, tracing.JUMP_FORWARD)
            return
        forced = bitmask is not None and count_allowed(bitmask[0]) == 1
        healed = self.healing is not None and len(self.out.token_ids) == 1
        kind = tracing.HEALED if healed else tracing.FORCED if forced else tracing.SAMPLED
        tracing.record_token_from_logits(
            self.trace, raw, tok, text, kind,
            allowed=None if bitmask is None else unpack_bitmask(bitmask[0], raw.shape[-1]),
            decode=lambda i: (token_bytes[i] or b"").decode("utf-8", errors="replace"),
        )



def _apply(logits: torch.Tensor, host: np.ndarray | None, bitmask: np.ndarray) -> None:
    """Mask ``logits`` (one row) with ``bitmask`` (one row): through ``host``, the row's numpy
    view, when the caller has one. The same logits either way; the numpy path skips torch's
    dispatch, whose code a forward pass has pushed out of the CPU caches by the time the
    step runs (~100 µs for `apply_bitmask`'s first call after a forward, ~35 µs this way:
    docs/benchmarks.md, h11-stall)."""
    if host is None:
        apply_bitmask(logits, bitmask)
    else:
        mask_logits_row(host, bitmask[0])
