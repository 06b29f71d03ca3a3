"""Per-request logits policies: what a request changes in the engine's one step.

A `LogitsPolicy` may replace the distribution sampled from, switch off lazy masks and
jump-forward for its request, and end it on a condition of its own (`StopWhen`).
A `Pairing` makes two requests one (`sgl.decode.optimal.OptimalSampler`): after each
forward pass the *leader* and the *partner* (which may run in another engine, on another
model) leave their rows of logits; once both rows of a position are in, the leader steps
(bans, mask, every end) sampling from ``combine(leader row, partner row)``, and the token
is appended to the partner too. The step runs on the leader's engine thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from sgl.constrain.torch_utils import apply_bitmask

if TYPE_CHECKING:
    import numpy as np

    from .step import SeqState

# combine(leader logits [V], partner logits [V]) -> (logits to sample from [V], what to keep per token)
Combine = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Any]]


class LogitsPolicy:
    """The default policy: sample from the (masked) logits, end as the engine does."""

    lazy_masks = True  # may the step try likely tokens before building a full mask
    jump_forward = True  # may the step append constraint-forced text unsampled
    paired = False  # a `Pairing`: the engine steps the request when both rows are in

    def logits(self, logits: torch.Tensor, bitmask: np.ndarray | None) -> torch.Tensor:
        """The logits to sample from, given the request's own (bans, penalties and mask applied)."""
        return logits

    def should_stop(self, token_ids: list[int]) -> bool:
        """Whether the request ends ("stop") after its generated ``token_ids``."""
        return False


class StopWhen(LogitsPolicy):
    """Every token sampled (no lazy masks, no forced runs), ending when ``predicate(ids)``
    holds: the decoders of `sgl.decode`, whose drafts must stay the model's own choices."""

    lazy_masks = False
    jump_forward = False

    def __init__(self, predicate: Callable[[list[int]], bool] | None = None) -> None:
        self.predicate = predicate

    def should_stop(self, token_ids: list[int]) -> bool:
        return self.predicate is not None and bool(token_ids) and self.predicate(token_ids)


class Pairing(LogitsPolicy):
    """The leader samples from ``combine`` of its logits and the partner's; see the module.

    ``infos`` holds what ``combine`` returned for each sampled token, in order.
    """

    # the policy needs the full mask on both rows, and every token sampled (no forced runs)
    lazy_masks = False
    jump_forward = False
    paired = True

    def __init__(self, combine: Combine) -> None:
        self.combine = combine
        self.leader: SeqState | None = None
        self.partner: SeqState | None = None
        self.infos: list[Any] = []
        self._wake: dict[int, Callable[[], None]] = {}  # id(state) -> wake its engine
        self._rows: dict[int, tuple[int, torch.Tensor]] = {}  # id(state) -> (position, logits)
        self._lock = threading.Lock()

    def bind(self, state: SeqState, leader: bool, wake: Callable[[], None]) -> None:
        """Called by the engine that runs ``state`` (``wake`` makes it look again)."""
        if leader:
            self.leader = state
        else:
            self.partner = state
        self._wake[id(state)] = wake

    def deposit(self, state: SeqState, logits: torch.Tensor, i: int) -> None:
        """``state``'s logits for its next token: row ``i`` of this step's forward pass."""
        with self._lock:
            self._rows[id(state)] = (len(state.tokens), logits[i].clone())
        if state is self.partner and self.leader is not None:
            self._wake[id(self.leader)]()

    def _row(self, state: SeqState | None) -> torch.Tensor | None:
        entry = None if state is None else self._rows.get(id(state))
        return entry[1] if entry is not None and entry[0] == len(state.tokens) else None

    def advance(self, state: SeqState) -> bool:
        """The engine's turn for ``state`` (between steps, on its engine's thread): step
        the leader when both rows are in; end a sequence whose other half ended.
        Whether ``state`` changed."""
        leader, partner = self.leader, self.partner
        if state.done or leader is None or partner is None:
            return False
        if state is partner:
            if leader.done:
                state.finish(leader.out.finish_reason)
            return leader.done
        if partner.done:
            state.out.meta["error"] = f"the paired sequence ended ({partner.out.finish_reason})"
            state.finish("error")
            return True
        with self._lock:
            row = self._row(leader)
            ready = row is not None and self._row(partner) is not None
        if not ready:
            return False
        n = len(leader.tokens)
        leader.step(row)
        if not leader.done:
            partner.tokens.extend(leader.tokens[n:])
        self._wake[id(partner)]()
        return True

    def logits(self, lead: torch.Tensor, bitmask: np.ndarray | None) -> torch.Tensor:
        """What the leader samples from: ``combine`` of its (masked) row and the partner's."""
        other = self._row(self.partner)
        if bitmask is not None:
            apply_bitmask(other, bitmask)
        out, info = self.combine(lead, other)
        self.infos.append(info)
        return out.to(lead.device, torch.float32)
