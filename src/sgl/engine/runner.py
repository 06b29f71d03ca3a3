"""The torch side of an engine step: one forward pass over the batch, then each
sequence's step (`step.SeqState`) on its row of logits.

`scheduler.Engine` decides what runs (admission, KV blocks, preemption) and never
touches tensors; this module runs it, as nano-vllm's ModelRunner does for its scheduler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .kv_pool import KVPool
from .llama import Llama
from .paged_forward import RowInput, forward_rows
from .sampler import apply_penalties_batch
from .speculative import DraftPools, Speculation, propose_drafts
from .step import SeqState

SMALL_STEP_TOKENS = 8  # steps with fewer new tokens run torch on one thread (see pick_threads)
_PROCESS_THREADS = torch.get_num_threads()  # before any engine changes it: big steps use these


class ModelRunner:
    """Runs the forward pass of a step and the sampling of the sequences in it."""

    def __init__(self, model: Llama, pool: KVPool) -> None:
        self.model, self.pool = model, pool
        self.threads = _PROCESS_THREADS
        self.draft_pools = DraftPools(pool.capacity_tokens, pool.block_size)  # a draft model's KV, made on use

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """The context every step runs in (no autograd)."""
        with torch.inference_mode():
            yield

    def forward(self, rows: list[RowInput]) -> torch.Tensor:
        """Float32 logits ``[len(rows), vocab]`` at each row's last new token."""
        self.pick_threads(sum(len(r.tokens) for r in rows))
        return forward_rows(self.model, self.pool, rows)

    def sample(self, states: Sequence[SeqState], logits: torch.Tensor, rows: list[int] | None = None) -> None:
        """Step every sequence in ``states`` on its row of ``logits`` (the batch's rows
        ``rows``, default all of them; penalties batched)."""
        if rows is not None:
            logits = logits[rows]
        penalized = [i for i, s in enumerate(states) if s.sampler.penalized]
        raws = {}  # a penalized row's logits before its penalties, when it records logprobs
        if penalized:
            idx = torch.tensor(penalized, device=logits.device)
            rows = logits[idx]
            apply_penalties_batch(rows, [states[i].tokens for i in penalized],
                                  [states[i].prompt_len for i in penalized], [states[i].sampler for i in penalized])
            raws = {i: logits[i].clone() for i in penalized
                    if states[i].out.logprobs is not None or states[i].trace is not None}
            logits[idx] = rows
        host = _host_view(logits)
        for i, (state, row) in enumerate(zip(states, logits, strict=True)):
            state.step(row, raws.get(i), penalized=i in penalized,
                       host=None if host is None else host[i])

    def draft(self, requests: Sequence[tuple[Speculation, SeqState]]) -> int:
        """The drafts of a step's speculative rows, each draft model's for all its rows in
        one batched forward per draft position; how many draft-model forwards ran."""
        return propose_drafts(self.model, requests, self.draft_pools, self.pick_threads)

    def pick_threads(self, n_tokens: int) -> None:
        """One intra-op thread for small steps, all of them for big ones.

        Measured on a 2-core CPU: from a thread other than the main one, torch's OpenMP
        workers cost more than they give on the tiny ops of a few-token step (1 thread:
        ~1.6 s for 64 tokens of one stream, 2 threads: ~2.5 s), while a 32-row step
        still gains from them (~3.0 s vs ~4.0 s for 32 x 16 tokens).
        """
        want = 1 if n_tokens < SMALL_STEP_TOKENS else self.threads
        if want != torch.get_num_threads():
            torch.set_num_threads(want)


def _host_view(logits: torch.Tensor) -> np.ndarray | None:
    """A numpy view of the step's logits (None off the CPU or for bfloat16): the steps mask
    and pick greedy tokens through it, without torch's dispatch (see `step._apply`). Asked
    for by trying, not by checking ``device`` / ``dtype`` first: each torch attribute read
    right after a forward pass costs microseconds of cold cache (~60 µs vs ~30 µs)."""
    try:
        arr = logits.numpy()
    except (TypeError, RuntimeError):  # off the CPU, bfloat16, or requiring grad
        return None
    return arr if arr.flags.c_contiguous else None
