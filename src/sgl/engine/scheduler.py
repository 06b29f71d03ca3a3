"""The continuous-batching engine: a scheduler thread that steps every live request.

Requests are submitted from any thread and wait in a queue. At every step the
scheduler builds one batch: each running sequence feeds what it has not fed yet (one
sampled token, a jump-forward run of forced tokens, or the next chunk of its prompt),
and waiting requests join while the step's token budget and the KV pool allow. A
sequence that finishes leaves at once and its slot is reused at the next step.

Memory is one `KVPool`. Prompts first look up the `RadixCache`; their full blocks are
published to it as soon as they are computed, so later requests with the same prefix
skip that part of the prefill. When the pool runs dry, cached blocks nobody uses are
evicted, then the most recently admitted sequence is preempted: its blocks are freed
and it goes back to the front of the queue with everything it generated, to resume
later (its prefix is often still cached).

What happens to each sequence after the forward pass (masks, sampling, stops, jump-
forward) is `step.SeqState`, the one implementation every generation path uses; the
forward pass and the sampling run in `runner.ModelRunner`. This module is bookkeeping
only: it never touches a tensor.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .kv_pool import KVPool
from .llama import Llama
from .paged_forward import RowInput
from .radix_cache import Node, RadixCache
from .request import SeqOutput, SeqRequest
from .runner import ModelRunner
from .step import SeqState, StepContext, StepCounters

log = logging.getLogger(__name__)

_END = object()  # the last item of a sequence's delta queue
_LIVE_ENGINES: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_engines() -> None:
    """Stop engine threads before the interpreter tears torch down under them."""
    for engine in list(_LIVE_ENGINES):
        engine.close()


@dataclass
class EngineConfig:
    """Settings of the engine; each optimisation can be switched off for comparison.

    Args:
        kv_budget_mb: memory of the KV pool (prefix cache included).
        block_size: tokens per KV block (and the prefix cache's granularity).
        max_running: most sequences decoding at once (1 = no batching).
        max_step_tokens: most new tokens in one forward pass (prefill is chunked to fit).
        prefix_cache: reuse the KV of earlier prompts' prefixes.
        jump_forward: append constraint-forced text without sampling it.
        lazy_masks: test likely tokens one by one before building a full mask.
    """

    kv_budget_mb: float = 512.0
    block_size: int = 16
    max_running: int = 32
    max_step_tokens: int = 512
    prefix_cache: bool = True
    jump_forward: bool = True
    lazy_masks: bool = True


@dataclass
class EngineStats(StepCounters):
    """Counters since the engine started (the steps' own counters included)."""

    steps: int = 0
    forward_tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    preemptions: int = 0
    draft_steps: int = 0  # forward passes of draft models (each over every row drafting from it)

    @property
    def prefix_hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(eq=False)
class EngineSeq:
    """A request inside the engine."""

    req: SeqRequest
    order: int
    state: SeqState  # tokens (prompt + generated; KV exists for tokens[:cached]), output, end checks
    cached: int = 0
    blocks: list[int] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)  # pinned prefix-cache nodes (blocks[:len])
    published_all: bool = True  # False once a block could not go to the prefix cache
    drafts: list[int] = field(default_factory=list)  # fed after the pending token this step (speculative)
    draft_room: int = 0  # drafts reserved for this step (the KV and the token budget hold them)
    emitted: int = 0
    submitted: float = 0.0
    first_token: float | None = None
    deltas: queue.Queue = field(default_factory=queue.Queue)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def paired(self) -> bool:
        return self.req.policy is not None and self.req.policy.paired

    @property
    def unfed(self) -> int:
        return len(self.state.tokens) - self.cached


class RequestHandle:
    """A submitted request: wait for its output, stream its text, or cancel it."""

    def __init__(self, engine: Engine, seq: EngineSeq) -> None:
        self._engine, self._seq = engine, seq

    def result(self, timeout: float | None = None) -> SeqOutput:
        """Block until the request ends; its `SeqOutput` (``finish_reason`` "error" on failure)."""
        if not self._seq.finished.wait(timeout):
            raise TimeoutError("the request did not finish in time")
        return self._seq.state.out

    def stream(self) -> Iterator[str]:
        """Text deltas as they become final, until the request ends."""
        while True:
            item = self._seq.deltas.get()
            if item is _END:
                return
            yield item

    def cancel(self) -> None:
        """Stop the request at the next step (its partial output is kept)."""
        self._engine.cancel(self._seq)

    @property
    def output(self) -> SeqOutput:
        return self._seq.state.out


class Engine:
    """Runs requests on one model with continuous batching, in a background thread."""

    def __init__(self, model: Llama, token_bytes: Sequence[bytes | None], eos_ids: Sequence[int],
                 config: EngineConfig | None = None, max_context: int | None = None,
                 vocab: Any = None) -> None:
        self.model = model
        self.token_bytes = token_bytes
        self.eos_ids = frozenset(eos_ids)
        self.vocab = vocab
        self.config = config or EngineConfig()
        self.max_context = max_context or model.config.max_position_embeddings
        cfg = self.config
        self.pool = KVPool(model.config, int(cfg.kv_budget_mb * 2**20), cfg.block_size,
                           device=model.device, dtype=model.dtype)
        self.cache = RadixCache(cfg.block_size, lambda b: self.pool.release([b]))
        self.stats = EngineStats()
        self.runner = ModelRunner(model, self.pool)
        self.step_context = StepContext(token_bytes, self.eos_ids, vocab, cfg.lazy_masks, cfg.jump_forward,
                                        self.stats, model.device)
        self.waiting: deque[EngineSeq] = deque()
        self.running: list[EngineSeq] = []
        self._inbox: list[EngineSeq] = []
        self._cancels: list[EngineSeq] = []
        self._calls: list[tuple[Any, Future]] = []  # run on the engine thread between steps
        self._cv = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ public

    def submit(self, req: SeqRequest) -> RequestHandle:
        """Queue a request; the engine thread starts on first use."""
        return self._submit([req])[0]

    def generate(self, requests: Sequence[SeqRequest]) -> list[SeqOutput]:
        """Submit ``requests`` together and wait for all of them."""
        return [h.result() for h in self._submit(requests)]

    def _submit(self, requests: Sequence[SeqRequest]) -> list[RequestHandle]:
        # one lock for the whole list: the engine thread sees the requests together, so
        # none of them is stepped alone before the others arrive
        seqs = [self._sequence(r) for r in requests]
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._inbox.extend(seqs)
            self._cv.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sgl-engine", daemon=True)
                self._thread.start()
                _LIVE_ENGINES.add(self)
        return [RequestHandle(self, seq) for seq in seqs]

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the engine thread between two steps and return its result.

        The prefix cache and the KV pool belong to the engine thread; anything else
        that reads or changes them (flushing, pinning a prefix) goes through here.
        """
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            if self._thread is None:  # no engine thread yet: nothing else touches the cache
                return fn()
            self._calls.append((fn, fut))
            self._cv.notify()
        return fut.result()

    def flush_cache(self) -> int:
        """Drop every cached prefix block no running request uses; how many were dropped."""
        return self.call(lambda: self.cache.evict(self.pool.n_blocks))

    def wake(self) -> None:
        """Make the engine thread look at its sequences again (a partner's row came in)."""
        with self._cv:
            self._cv.notify()

    def cancel(self, seq: EngineSeq) -> None:
        with self._cv:
            self._cancels.append(seq)
            self._cv.notify()

    def close(self) -> None:
        """Stop the engine thread; requests still queued or running end with an error."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join()

    # -------------------------------------------------------------- the thread

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._inbox or self._cancels or self._calls or self.running or self.waiting
                           or self._closed):
                    self._cv.wait()
                calls, self._calls = self._calls, []
                if self._closed:
                    for _, fut in calls:
                        fut.set_exception(RuntimeError("the engine is closed"))
                    self._fail_all("the engine was closed")
                    return
                self.waiting.extend(self._inbox)
                self._inbox.clear()
                cancels, self._cancels = self._cancels, []
            for seq in cancels:
                self._cancel(seq)
            for fn, fut in calls:
                try:
                    fut.set_result(fn())
                except Exception as e:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(e)
            try:
                with self.runner.session():
                    busy = self.step()
            except Exception as e:  # noqa: BLE001 - a bug must not leave callers waiting forever
                log.exception("engine step failed")
                self._fail_all(f"engine error: {type(e).__name__}: {e}")
                busy = True
            if not busy:  # every running sequence waits for its partner in another engine
                with self._cv:
                    if not (self._inbox or self._cancels or self._calls or self._closed):
                        self._cv.wait(0.05)  # `wake` cuts it short

    def _fail_all(self, message: str) -> None:
        for seq in [*self.running, *self.waiting, *self._inbox]:
            self._finish(seq, "error", message)
        self.running.clear()
        self.waiting.clear()
        self._inbox.clear()

    def _cancel(self, seq: EngineSeq) -> None:
        if seq.state.done:
            return
        if seq in self.waiting:
            self.waiting.remove(seq)
        self._finish(seq, "cancelled")

    # --------------------------------------------------------------- one step

    def step(self) -> bool:
        """Schedule one batch, run one forward pass, sample for every sequence that needs
        it; whether anything happened."""
        paired = self._advance_pairs()
        batch = self._schedule()
        if not batch:
            if self.waiting and not self.running:  # nothing fits even in an empty pool
                seq = self.waiting.popleft()
                need = len(seq.state.tokens) + seq.state.max_tokens
                self._finish(seq, "error", f"the request needs {need} tokens of KV cache; the budget "
                                           f"holds {self.pool.capacity_tokens}")
                return True
            return paired
        rows = [RowInput(seq.state.tokens[seq.cached:seq.cached + n] + seq.drafts, seq.cached, seq.blocks,
                         logits_tail=self._logits_tail(seq, n)) for seq, n in batch]
        logits = self.runner.forward(rows)
        for (seq, _), row in zip(batch, rows, strict=True):
            if row.logits is not None and not seq.drafts:
                seq.state.score_prompt(row.start, row.logits)
                row.logits = None
        self.stats.steps += 1
        self.stats.forward_tokens += sum(n for _, n in batch)
        now = time.perf_counter()
        sampling, rows_idx, verified = [], [], []
        for i, ((seq, n), row) in enumerate(zip(batch, rows, strict=True)):
            seq.cached += n
            self._publish(seq)
            if seq.unfed:
                continue  # a prompt chunk: more to feed before sampling
            if seq.first_token is None:
                seq.first_token = now
            if seq.state.max_tokens == 0:  # prefill only (it warms the prefix cache)
                self._finish(seq, "length")
                continue
            if seq.paired:  # its step waits for the partner's row (`_advance_pairs`)
                seq.req.policy.deposit(seq.state, logits, i)
                continue
            if seq.req.acceptor is not None:
                self._verify(seq, logits, i, row.logits)
                verified.append(seq)
                continue
            sampling.append(seq)
            rows_idx.append(i)
        if sampling:
            self.runner.sample([seq.state for seq in sampling], logits,
                               rows_idx if len(rows_idx) < len(batch) else None)
        for seq in [*verified, *sampling]:
            self._after_step(seq)
        return True

    @staticmethod
    def _logits_tail(seq: EngineSeq, n: int) -> int:
        """How many rows of logits a row of ``n`` new tokens (and its drafts) needs beyond the last."""
        if seq.drafts:  # the pending token's and each draft's
            return 1 + len(seq.drafts)
        return n if seq.state.wants_logits(seq.cached, n) else 0

    def _verify(self, seq: EngineSeq, logits: Any, i: int, row_logits: Any) -> None:
        """A speculative sequence's step: keep the accepted drafts' KV, not the rejected ones'."""
        fed = seq.cached  # the pending token is fed; the drafts' KV follows it
        accepted = seq.req.acceptor.verify(seq.state, logits, i, row_logits)
        seq.drafts = []
        seq.cached = min(fed + accepted, len(seq.state.tokens) - 1)  # the newest token is the next pending one
        self._publish(seq)

    def _advance_pairs(self) -> bool:
        """Step the paired leaders whose partner's row is in; end a half whose other half
        ended (`policy.Pairing.advance`). Whether any changed."""
        advanced = [s for s in self.running if s.paired and s.req.policy.advance(s.state)]
        for seq in advanced:
            self._after_step(seq)
        return bool(advanced)

    def _after_step(self, seq: EngineSeq) -> None:
        if seq.state.done:
            self._finish(seq, seq.state.out.finish_reason)
        else:
            self._emit(seq)

    def _schedule(self) -> list[tuple[EngineSeq, int]]:
        """Pick the rows of the next forward pass and make sure their KV blocks exist."""
        budget = self.config.max_step_tokens
        batch: list[tuple[EngineSeq, int]] = []
        for seq in sorted(self.running, key=lambda s: s.order):  # oldest first: preemption takes the newest
            if seq not in self.running:
                continue  # preempted for an older sequence's blocks
            n = min(seq.unfed, max(budget, 1 if seq.unfed == 1 else 0))
            if n == 0:
                continue
            room = self._draft_room(seq, n)
            if not self._reserve(seq, seq.cached + n + room):
                continue
            batch.append((seq, n))
            budget -= n + room
        batch = [(s, n) for s, n in batch if s in self.running]
        while self.waiting and budget > 0 and (len(self.running) < self.config.max_running
                                               or self._other_half_running(self.waiting[0])):
            seq = self.waiting[0]
            if len(seq.state.tokens) > self.pool.capacity_tokens:
                self.waiting.popleft()
                self._finish(seq, "error", f"the prompt has {len(seq.state.tokens)} tokens; the KV budget "
                                           f"holds {self.pool.capacity_tokens}")
                continue
            self._match_prefix(seq)
            n = min(seq.unfed, budget)
            room = self._draft_room(seq, n)
            if not self._reserve(seq, seq.cached + n + room, preempt=False):
                seq.draft_room = 0
                self._release(seq)
                seq.cached = 0
                break
            self.waiting.popleft()
            self.running.append(seq)
            batch.append((seq, n))
            budget -= n + room
        return self._propose_drafts(batch)

    def _draft_room(self, seq: EngineSeq, n: int) -> int:
        """How many drafts ``seq`` may feed after its pending token this step (speculative
        requests whose row reaches the pending token), remembered in ``seq.draft_room``."""
        acceptor = seq.req.acceptor
        drafting = acceptor is not None and n == seq.unfed and not seq.state.wants_logits(seq.cached, n)
        seq.draft_room = acceptor.room(seq.state) if drafting else 0
        return seq.draft_room

    def _propose_drafts(self, batch: list[tuple[EngineSeq, int]]) -> list[tuple[EngineSeq, int]]:
        """Draft for every speculative row of the batch at once (the runner batches each
        draft model's forwards over its rows); a row whose drafting failed leaves it."""
        drafting = [seq for seq, _ in batch if seq.draft_room]
        if not drafting:
            return batch
        self.stats.draft_steps += self.runner.draft([(seq.req.acceptor, seq.state) for seq in drafting])
        for seq in drafting:
            seq.draft_room = 0
            seq.drafts = seq.req.acceptor.draft.tokens
            if seq.state.done:  # drafting failed
                self._finish(seq, "error")
        return [(seq, n) for seq, n in batch if not seq.state.done]

    def _match_prefix(self, seq: EngineSeq) -> None:
        """Start ``seq`` from the longest cached prefix of its tokens (one token stays to feed)."""
        first_time = seq.state.out.meta.get("cached_tokens") is None
        if self.config.prefix_cache:
            nodes = self.cache.match(seq.state.tokens[:seq.state.cacheable_prefix()])
            RadixCache.pin(nodes)
            seq.nodes = nodes
            seq.blocks = [node.block for node in nodes]
            seq.cached = len(nodes) * self.pool.block_size
        seq.published_all = True
        if first_time:
            n_prompt = len(seq.req.prompt_ids)
            seq.state.out.meta["cached_tokens"] = min(seq.cached, n_prompt)
            self.stats.prompt_tokens += n_prompt
            self.stats.cached_prompt_tokens += min(seq.cached, n_prompt)
            from sgl.telemetry.metrics import get_metrics

            get_metrics().set_prefix_cache_hit_rate(self.stats.prefix_hit_rate)

    def _reserve(self, seq: EngineSeq, n_tokens: int, preempt: bool = True) -> bool:
        """Make ``seq.blocks`` cover ``n_tokens``: evict cached blocks, then preempt newer sequences."""
        need = self.pool.blocks_for(n_tokens) - len(seq.blocks)
        while need > 0:
            got = self.pool.alloc(need)
            if got is not None:
                seq.blocks.extend(got)
                return True
            short = need - self.pool.n_free
            if self.cache.evict(short) >= short:
                continue
            later = [s for s in self.running if s is not seq and s.order > seq.order] if preempt else []
            victim = max(later, key=lambda s: s.order) if later else None  # the newest
            if victim is None:
                if preempt and len(self.running) == 1:
                    self._finish(seq, "error", f"the request needs {n_tokens} tokens of KV cache; "
                                               f"the budget holds {self.pool.capacity_tokens}")
                return False
            self._preempt(victim)
        return True

    def _preempt(self, seq: EngineSeq) -> None:
        """Free ``seq``'s KV and queue it again, first, with what it generated."""
        self.running.remove(seq)
        self._release(seq)
        seq.cached = 0
        self.waiting.appendleft(seq)
        self.stats.preemptions += 1
        seq.state.out.meta["preemptions"] = seq.state.out.meta.get("preemptions", 0) + 1

    def _publish(self, seq: EngineSeq) -> None:
        """Hand ``seq``'s newly completed full blocks to the prefix cache."""
        if not (self.config.prefix_cache and seq.published_all):
            return
        bs = self.pool.block_size
        for i in range(len(seq.nodes), seq.cached // bs):
            parent = seq.nodes[-1] if seq.nodes else None
            node = self.cache.extend(parent, seq.state.tokens[i * bs:(i + 1) * bs], seq.blocks[i])
            if node is None:  # the same tokens were cached by another sequence meanwhile
                seq.published_all = False
                return
            RadixCache.pin([node])
            seq.nodes.append(node)

    def _release(self, seq: EngineSeq) -> None:
        """Unpin ``seq``'s cached prefix and free the blocks it owns (its draft model's too)."""
        if seq.req.acceptor is not None:
            seq.req.acceptor.release()
        self.cache.unpin(seq.nodes)
        self.pool.release(seq.blocks[len(seq.nodes):])
        seq.nodes, seq.blocks = [], []

    def _other_half_running(self, seq: EngineSeq) -> bool:
        """Is ``seq`` one half of a pair whose other half runs here? It is then admitted
        past ``max_running``: a leader holding the last slot would otherwise wait forever
        for a partner that never gets one (``max_running=1`` could run no pair at all)."""
        if not seq.paired:
            return False
        policy = seq.req.policy
        other = policy.leader if seq.req.follows else policy.partner
        return other is not None and any(s.state is other for s in self.running)

    # --------------------------------------------------------- per sequence

    def _sequence(self, req: SeqRequest) -> EngineSeq:
        n_prompt = len(req.prompt_ids)
        if n_prompt == 0:
            raise ValueError("the prompt has no tokens")
        if n_prompt >= self.max_context:
            raise ValueError(f"the prompt has {n_prompt} tokens; the context holds {self.max_context}")
        max_tokens = max(0, min(req.params.max_tokens, self.max_context - n_prompt))
        state = SeqState(self.step_context, req.prompt_ids, req.params, max_tokens, req.matcher, req.healing,
                         sampler=req.sampler, prompt_logprobs=req.prompt_logprobs,
                         policy=None if req.follows else req.policy)
        if req.policy is not None and req.policy.paired:
            req.policy.bind(state, leader=not req.follows, wake=self.wake)
        from sgl.telemetry import trace as tracing

        if tracing.trace_enabled():
            state.trace = tracing.begin_trace(constraint={"constrained": req.matcher is not None})
        return EngineSeq(req=req, order=next(self._order), state=state, submitted=time.perf_counter())

    def _emit(self, seq: EngineSeq) -> None:
        """Queue the text of ``seq`` that is final and not yet streamed."""
        end = len(seq.state.out.text) if seq.state.done else seq.state.tracker.stable_len()
        text = seq.state.out.text if seq.state.done else seq.state.tracker.text
        if end > seq.emitted:
            seq.deltas.put(text[seq.emitted:end])
            seq.emitted = end

    def _finish(self, seq: EngineSeq, reason: str, error: str | None = None) -> None:
        """End ``seq`` (if its step did not already; ``error`` goes to its meta), take it
        out of the batch, free what it holds and hand its output to the waiter."""
        if seq in self.running:
            self.running.remove(seq)
        self._release(seq)
        if seq.finished.is_set():
            return
        if error is not None:
            seq.state.out.meta["error"] = error
        seq.state.finish(reason)
        out = seq.state.out
        out.meta["latency_s"] = time.perf_counter() - seq.submitted
        if seq.first_token is not None:
            out.meta["ttft_s"] = seq.first_token - seq.submitted
        self._emit(seq)
        seq.deltas.put(_END)
        seq.finished.set()
